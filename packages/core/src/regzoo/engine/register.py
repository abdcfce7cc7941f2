"""Registering files: load a NIfTI pair, run a model (with instance optimisation), write results.

The model works on the fixed image's grid: the moving image (and its labels) are resampled onto it
in physical space first. Outputs carry the fixed image's original header:

- ``warped.nii.gz``: the moving image (original intensities) warped onto the fixed image;
- ``ddf.nii.gz``: the displacement field as ITK reads it (:func:`regzoo.data.io.save_ddf`);
- ``warped_seg.nii.gz``: the moving labels warped with nearest-neighbour sampling;
- ``uncertainty.nii.gz``: per-voxel uncertainty for models that sample (``--samples``);
- ``synthesized.nii.gz``, ``moving_seg_pred.nii.gz``, ``fixed_seg_pred.nii.gz``: for models that
  synthesise an image or segment the pair (JSSR), on the fixed grid, segmentations as label maps.

With ``learn2reg=True`` the field is written as the Learn2Reg challenge takes submissions:
``disp_<fixed id>_<moving id>.nii.gz``, an ``(X, Y, Z, 3)`` array of displacements in voxels
along the file's own array axes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..data.grid import normalize_intensity, resample
from ..data.io import ImageInfo, load_image, save_ddf, save_image
from ..errors import DataError, UserError
from ..labels import LabelTable, warp_labels
from ..models import BATCH_LABEL_KEYS, RegistrationModel, RegistrationOutput
from ..spatial import warp
from .instance import instance_optimise

__all__ = ["PairFiles", "load_pair", "register_pair", "write_outputs", "learn2reg_name"]


@dataclass
class PairFiles:
    """The files of one pair (label maps optional)."""

    moving: Path
    fixed: Path
    moving_seg: Path | None = None
    fixed_seg: Path | None = None


@dataclass
class LoadedPair:
    """A pair on the fixed grid: the model's batch, the raw moving image and the fixed geometry."""

    batch: dict[str, torch.Tensor]
    moving_raw: torch.Tensor
    fixed_info: ImageInfo


def _onto_fixed(array: np.ndarray, info: ImageInfo, fixed: ImageInfo, label: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))[None]
    if info.shape == fixed.shape and np.allclose(info.grid_affine, fixed.grid_affine, atol=1e-4):
        return t
    return resample(
        t, info.grid_affine, fixed.shape, fixed.grid_affine, "nearest" if label else "bilinear"
    )


def load_pair(files: PairFiles, normalize: str = "percentile") -> LoadedPair:
    """Read a pair, put the moving image and labels on the fixed grid, normalise intensities."""
    fixed, finfo = load_image(files.fixed)
    moving, minfo = load_image(files.moving)
    if minfo.ndim != finfo.ndim:
        raise DataError(
            f"{files.moving}: a {minfo.ndim}D image cannot be registered to the {finfo.ndim}D {files.fixed}"
        )
    moving_raw = _onto_fixed(moving, minfo, finfo, label=False)
    batch = {
        "moving": torch.from_numpy(normalize_intensity(moving_raw[0].numpy(), normalize))[
            None, None
        ],
        "fixed": torch.from_numpy(normalize_intensity(fixed, normalize))[None, None],
        "spacing": torch.as_tensor(finfo.spacing, dtype=torch.float32)[None],
    }
    for key, path, info in (
        ("moving_label", files.moving_seg, minfo),
        ("fixed_label", files.fixed_seg, finfo),
    ):
        if path is None:
            continue
        labels, linfo = load_image(path, label=True)
        if linfo.shape != info.shape:
            raise DataError(
                f"{path}: label map of shape {linfo.shape} does not match its image {info.shape}"
            )
        batch[key] = _onto_fixed(labels, linfo, finfo, label=True)[None]
    return LoadedPair(batch, moving_raw[None], finfo)


def register_pair(
    model: RegistrationModel,
    pair: LoadedPair,
    iterations: int = 0,
    samples: int = 0,
    device: torch.device | str = "cpu",
    lr: float | None = None,
) -> tuple[RegistrationOutput, list[float]]:
    """Run ``model`` on a loaded pair, with ``iterations`` steps of instance optimisation.

    ``lr`` is the instance optimisation's learning rate (``model.io_lr`` when None).

    ``samples`` > 0 asks a sampling model (``model.sample(batch, k)``, e.g. TransMorph-Bayes) for
    the mean field and a per-voxel uncertainty instead of one forward pass.

    The model never sees the pair's label maps (original values of any size, not indices of its
    label table): :func:`write_outputs` warps them through :func:`regzoo.labels.warp_labels`.
    """
    batch = {k: v.to(device) for k, v in pair.batch.items() if k not in BATCH_LABEL_KEYS}
    if samples:
        if not hasattr(model, "sample"):
            raise UserError(
                f"--samples: model {type(model).__name__} does not sample (no Monte-Carlo variant)"
            )
        with torch.no_grad():
            return model.sample(batch, int(samples)), []
    return instance_optimise(model, batch, iterations, lr)


def learn2reg_name(fixed: Path, moving: Path) -> str:
    """``disp_<fixed id>_<moving id>.nii.gz``, ids being the first number in each file name."""

    def ident(path: Path) -> str:
        found = re.search(r"\d+", path.name)
        if not found:
            raise DataError(
                f"{path}: --learn2reg needs a case number in the file name (e.g. OASIS_0395_0000)"
            )
        return found.group(0).zfill(4)

    return f"disp_{ident(fixed)}_{ident(moving)}.nii.gz"


def _to_file_voxels(ddf: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Canonical ``(ndim, *S)`` voxel displacements to ``(*file_shape, 3)`` along the file's axes."""
    ndim = ddf.shape[0]
    full = np.zeros((3, *ddf.shape[1:]), dtype=np.float32)
    full[:ndim] = ddf
    if info.squeezed is not None:  # 2D: the removed canonical axis comes back with zero motion
        order = [a for a in range(3) if a != info.squeezed] + [info.squeezed]
        full = np.expand_dims(full, 1 + info.squeezed)[np.argsort(order)]
    # info.ornt[i] = (canonical axis, flip) of file axis i: file component i = flip * canonical one.
    comps = np.stack([full[int(ax)] * flip for ax, flip in info.ornt])
    back = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), info.ornt
    )
    data = nib.orientations.apply_orientation(np.moveaxis(comps, 0, -1), back)
    return data.reshape(*info.file_shape[:3], 3) if len(info.file_shape) >= 3 else data


def write_outputs(
    out_dir: str | Path,
    pair: LoadedPair,
    out: RegistrationOutput,
    learn2reg: str | None = None,
    label_table: LabelTable | None = None,
) -> list[Path]:
    """Write a pair's results into ``out_dir``; returns the files written.

    ``label_table`` (the model's) turns segmentation predictions into original label values;
    ``warped_seg`` keeps the moving label map's own values, whatever they are.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ddf = out.ddf.detach().float().cpu()
    info = pair.fixed_info
    if learn2reg:
        path = out_dir / learn2reg
        img = nib.Nifti1Image(_to_file_voxels(ddf[0].numpy(), info), info.affine)
        nib.save(img, str(path))
        return [path]
    written = [out_dir / "warped.nii.gz", out_dir / "ddf.nii.gz"]
    save_image(warp(pair.moving_raw, ddf)[0], info, written[0])
    save_ddf(ddf[0], info, written[1])
    if "moving_label" in pair.batch:
        written.append(out_dir / "warped_seg.nii.gz")
        save_image(warp_labels(pair.batch["moving_label"], ddf)[0], info, written[-1])

    def predicted(logits: torch.Tensor | None) -> torch.Tensor | None:
        if logits is None:
            return None
        if label_table is None:
            return logits.detach().argmax(1, True).cpu()
        # a head wider than the table: its extra classes never had a label to learn
        index = logits.detach()[:, : label_table.num_classes].argmax(1, True).cpu()
        return label_table.decode(index)

    extras = {
        "uncertainty": out.uncertainty,
        "synthesized": out.synthesized,
        "moving_seg_pred": predicted(out.moving_seg),
        "fixed_seg_pred": predicted(out.fixed_seg),
    }
    for name, value in extras.items():
        if value is not None:
            written.append(out_dir / f"{name}.nii.gz")
            save_image(value.detach().cpu()[0], info, written[-1])
    return written
