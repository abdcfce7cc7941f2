"""Registering files: load a NIfTI pair, run a model (with instance optimisation), write results.

A pair goes through the preprocessing the model was trained with
(:class:`regzoo.data.preprocess.Preprocessing`, the same code as training and ``evaluate
--data``): the model works on the *model grid* (the fixed image's grid at the trained spacing,
padded). Outputs are written back in the fixed image's original geometry, with its header:

- ``ddf.nii.gz``: the displacement field, taken from the model grid to the fixed file's grid in
  millimetres, as ITK reads it (:func:`regzoo.data.io.save_ddf`);
- ``warped.nii.gz``: the original moving image (original intensities and grid) sampled at
  ``x + ddf(x)`` for every fixed voxel ``x``, which is what SimpleITK computes from ``ddf.nii.gz``;
- ``warped_seg.nii.gz``: the moving labels warped alike with nearest-neighbour sampling;
- ``uncertainty.nii.gz``: per-voxel uncertainty for models that sample (``--samples``);
- ``synthesized.nii.gz``, ``moving_seg_pred.nii.gz``, ``fixed_seg_pred.nii.gz``: for models that
  synthesise an image or segment the pair (JSSR), on the fixed grid, segmentations as label maps.

A pair's outputs are written into a temporary sibling folder and renamed into place once all are
written (:func:`regzoo.atomic.atomic_dir`), so an output folder is complete or absent. With
``--pairs`` each pair gets its own folder, named by :func:`output_names` from the moving and fixed
paths.

With ``learn2reg=True`` the field is written as the Learn2Reg challenge takes submissions:
``disp_<fixed id>_<moving id>.nii.gz`` (:func:`learn2reg_name`), an ``(X, Y, Z, 3)`` array of
displacements in voxels along the file's own array axes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..atomic import atomic_dir, atomic_path
from ..data.files import ListedPairs, Scan
from ..data.grid import resample, resample_field
from ..data.io import ImageInfo, load_image, save_ddf, save_image, save_series, to_file_axes
from ..data.preprocess import Preprocessing
from ..errors import DataError, UserError
from ..labels import LabelTable
from ..models import RegistrationModel, RegistrationOutput
from ..spatial import affine_inverse, affine_to_ddf, compose_affine, warp
from .affine import affine_align
from .instance import instance_optimise

__all__ = [
    "PairFiles",
    "OUTPUT_NAMES",
    "TRAJECTORY_SERIES",
    "trajectory_field_name",
    "is_output_name",
    "load_pair",
    "register_pair",
    "trajectory_of",
    "check_result",
    "write_outputs",
    "predicted_labels",
    "output_names",
    "learn2reg_name",
]

_OUTPUTS = (
    "warped",
    "ddf",
    "warped_seg",
    "uncertainty",
    "synthesized",
    "moving_seg_pred",
    "fixed_seg_pred",
)
#: Every file :func:`write_outputs` may write into a pair's folder, besides the trajectory's.
OUTPUT_NAMES = tuple(f"{name}.nii.gz" for name in _OUTPUTS)
#: The trajectory's files (``--trajectory N``): one field per state and the warped series.
TRAJECTORY_SERIES = "warped_trajectory.nii.gz"
_TRAJECTORY_FIELD = re.compile(r"ddf_step\d+\.nii\.gz")


def trajectory_field_name(step: int, count: int) -> str:
    """The file of state ``step`` (1-based) of ``count``: ``ddf_step<step>.nii.gz``, the number
    zero-padded to the width of ``count`` (at least 2), so that the files sort in order."""
    return f"ddf_step{step:0{max(2, len(str(count)))}d}.nii.gz"


def is_output_name(name: str) -> bool:
    """Whether ``name`` is a file :func:`write_outputs` writes into a pair's folder."""
    return (
        name in OUTPUT_NAMES or name == TRAJECTORY_SERIES or bool(_TRAJECTORY_FIELD.fullmatch(name))
    )


@dataclass
class PairFiles:
    """The files of one pair (label maps optional)."""

    moving: Path
    fixed: Path
    moving_seg: Path | None = None
    fixed_seg: Path | None = None


@dataclass
class LoadedPair:
    """A preprocessed pair and what writing results on the fixed file needs.

    Attributes:
        batch: the model's batch ``(1, ...)`` on the model grid (as training builds it).
        grid_affine: the model grid's 4x4 voxel-to-RAS affine.
        moving: the original moving image ``(1, *S_moving)``, canonical axes, file intensities.
        moving_info: its geometry.
        moving_label: the original moving label map ``(1, *S_moving)`` int64, if given.
        fixed_info: the fixed image's geometry (outputs take it).
    """

    batch: dict[str, torch.Tensor]
    grid_affine: np.ndarray
    moving: torch.Tensor
    moving_info: ImageInfo
    moving_label: torch.Tensor | None
    fixed_info: ImageInfo

    def field_on_fixed(self, ddf: torch.Tensor) -> torch.Tensor:
        """A model-grid field ``(ndim, *S)`` as ``(ndim, *S_fixed)`` voxels of the fixed file's grid."""
        info = self.fixed_info
        return resample_field(ddf, self.grid_affine, info.shape, info.grid_affine)

    def warp_moving(self, field: torch.Tensor, label: bool = False) -> torch.Tensor:
        """The original moving image (or label map) at ``x + field(x)`` on the fixed file's grid."""
        source = self.moving_label if label else self.moving
        if source is None:
            raise UserError("no moving label map was given")
        info = self.fixed_info
        # labels are sampled as indices of their own table: float values lose integers past 2^24
        table = LabelTable.from_maps(source) if label else None
        warped = resample(
            source if table is None else table.encode(source),
            self.moving_info.grid_affine,
            info.shape,
            info.grid_affine,
            "nearest" if label else "bilinear",
            ddf=field,
        )
        return warped if table is None else table.decode(warped.round().long())


def load_pair(
    files: PairFiles,
    preprocessing: Preprocessing | None = None,
    label_table: LabelTable | None = None,
) -> LoadedPair:
    """Read a pair and preprocess it as training did (default: :class:`Preprocessing`'s defaults).

    The batch's label maps hold indices of ``label_table`` (a trained model's; a value outside it
    is a one-line error naming the file), by default of the values in the pair's own files.
    """
    prep = preprocessing or Preprocessing()
    moving = Scan(str(files.moving), None if files.moving_seg is None else str(files.moving_seg))
    fixed = Scan(str(files.fixed), None if files.fixed_seg is None else str(files.fixed_seg))
    dataset = ListedPairs([(moving, fixed)], prep, label_table)
    item = dataset[0]
    given = {"moving_label": files.moving_seg, "fixed_label": files.fixed_seg}
    batch = {
        k: v[None]
        for k, v in item.items()
        if isinstance(v, torch.Tensor) and given.get(k, True) is not None
    }
    raw, minfo = load_image(files.moving)
    labels = None if files.moving_seg is None else load_image(files.moving_seg, label=True)[0]
    _, finfo = load_image(files.fixed)
    return LoadedPair(
        batch,
        item["fixed_affine"].numpy(),
        torch.from_numpy(raw)[None],
        minfo,
        None if labels is None else torch.from_numpy(labels)[None],
        finfo,
    )


def register_pair(
    model: RegistrationModel,
    pair: LoadedPair,
    iterations: int = 0,
    samples: int = 0,
    device: torch.device | str = "cpu",
    lr: float | None = None,
    affine: str | None = None,
) -> tuple[RegistrationOutput, list[float]]:
    """Run ``model`` on a loaded pair, with ``iterations`` steps of instance optimisation.

    ``lr`` is the instance optimisation's learning rate (``model.io_lr`` when None).

    ``affine`` (``"ncc"`` or ``"mi"``, :func:`~regzoo.engine.affine.affine_align`) first aligns
    the moving image affinely with that similarity; the model registers the pre-aligned image
    (and its label map or mask, nearest), and the output's ``ddf`` and ``warped`` are the model's
    field followed by the affine (:func:`~regzoo.spatial.compose_affine`), one field from the
    fixed grid to the original moving image. The model's segmentation of the moving image is
    taken back to the moving image's pose.

    ``samples`` > 0 asks the model's :meth:`~regzoo.models.RegistrationModel.sample` hook
    (e.g. TransMorph-Bayes) for the mean field and a per-voxel uncertainty instead of one forward
    pass; a model that does not sample refuses with a :class:`UserError`.

    The model sees the pair's label maps only when it :attr:`~regzoo.models.RegistrationModel.reads_labels`
    (as indices of its label table, :func:`load_pair`); :func:`write_outputs` warps the original
    maps through :func:`regzoo.labels.warp_labels`.
    """
    batch = {k: v.to(device) for k, v in model.test_inputs(pair.batch).items()}
    theta = None
    if affine is not None:
        theta = affine_align(batch["moving"], batch["fixed"], affine)
        batch = _pre_aligned(batch, theta)
    if samples:
        with torch.no_grad():
            out, history = model.sample(batch, int(samples)), []
    else:
        out, history = instance_optimise(model, batch, iterations, lr)
    if theta is None:
        return out, history
    ddf = compose_affine(out.ddf.detach(), theta)
    back = affine_to_ddf(affine_inverse(theta), ddf.shape[2:])
    moving_seg = None if out.moving_seg is None else warp(out.moving_seg.detach(), back)
    warped = warp(pair.batch["moving"].to(device), ddf)
    aligned = replace(out, ddf=ddf, warped=warped, moving_seg=moving_seg, inverse_ddf=None)
    return aligned, history


def _pre_aligned(batch: dict[str, torch.Tensor], theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch with its moving image (linear), label map and mask (nearest) warped by
    ``theta``."""
    field = affine_to_ddf(theta, batch["fixed"].shape[2:])
    aligned = dict(batch, moving=warp(batch["moving"], field))
    for key in ("moving_label", "moving_mask"):
        if key in batch:
            maps = warp(batch[key].float(), field, mode="nearest")
            aligned[key] = maps.to(batch[key].dtype)
    return aligned


def trajectory_of(
    model: RegistrationModel,
    files: PairFiles,
    pair: LoadedPair,
    steps: int,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """``steps`` states of the model's registration of a loaded pair, without gradients: its
    :meth:`~regzoo.models.RegistrationModel.trajectory` hook (fields ``(1, ndim, *S)``, the last
    the final ``ddf``; a model without intermediate states gives fewer).

    Raises:
        DataError: a state holds NaN or infinite values (nothing is written).
    """
    batch = {k: v.to(device) for k, v in model.test_inputs(pair.batch).items()}
    with torch.no_grad():
        fields = model.trajectory(batch, int(steps))
    for i, u in enumerate(fields, 1):
        if not torch.isfinite(u).all():
            raise DataError(
                f"{files.moving} -> {files.fixed}: trajectory state {i} holds NaN or "
                "infinite values, nothing written"
            )
    return fields


def check_result(
    files: PairFiles,
    out: RegistrationOutput,
    model: torch.nn.Module,
    iterations: int,
    lr: float | None = None,
) -> None:
    """Refuse a result with NaN or infinite values before anything is written.

    The field and the model's other outputs are checked; the warped image follows from the field
    and the moving image, whose values :func:`~regzoo.data.io.load_image` checked.

    Raises:
        DataError: naming the pair, the output and the likely cause (the weights, the instance
            optimisation's learning rate, or the inputs).
    """
    written = {"ddf": out.ddf, "uncertainty": out.uncertainty, "synthesized": out.synthesized}
    written.update(moving_seg=out.moving_seg, fixed_seg=out.fixed_seg)
    bad = [k for k, v in written.items() if v is not None and not torch.isfinite(v).all()]
    if not bad:
        return
    if iterations > 0:
        rate = lr if lr is not None else model.io_lr
        cause = f"instance optimisation diverged: lower --lr (was {rate:g})"
    else:
        cause = "the weights, or the images' headers (spacing, affine) and intensities"
    raise DataError(
        f"{files.moving} -> {files.fixed}: the result ({', '.join(bad)}) holds NaN or infinite "
        f"values, nothing written; likely cause: {cause}"
    )


def _without_extension(path: Path) -> Path:
    path = path.with_suffix("") if path.suffix == ".gz" else path
    return path.with_suffix("")


def _relative_stems(paths: Sequence[Path]) -> list[str]:
    """Each path below the paths' deepest common folder, extension dropped, ``/`` as ``_``."""
    full = [Path(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath([str(p.parent) for p in full])
    return ["_".join(_without_extension(p.relative_to(root)).parts) for p in full]


def output_names(pairs: Sequence[PairFiles]) -> list[str]:
    """Unique folder names for a list of pairs: ``<moving>__to__<fixed>``.

    Each side is the image's path below the deepest folder common to that column (all moving
    images, all fixed images), without extension and with ``/`` written ``_``:
    ``data/sub-01/T1w.nii.gz`` and ``data/sub-03/T1w.nii.gz`` against ``atlas.nii.gz`` give
    ``sub-01_T1w__to__atlas`` and ``sub-03_T1w__to__atlas``. Pairs that still share a name (a pair
    listed twice) get ``__row<N>`` appended, N being the pair's row (1 = first pair).
    """
    names = [
        f"{m}__to__{f}"
        for m, f in zip(
            _relative_stems([p.moving for p in pairs]),
            _relative_stems([p.fixed for p in pairs]),
            strict=True,
        )
    ]
    return [f"{n}__row{i}" if names.count(n) > 1 else n for i, n in enumerate(names, 1)]


def learn2reg_name(fixed: Path, moving: Path) -> str:
    """``disp_<fixed id>_<moving id>.nii.gz`` with the Learn2Reg dataset's case ids.

    Learn2Reg names images ``<TASK>_<id>_<modality>.nii.gz`` (``OASIS_0395_0000``); the id is the
    number before the modality. A name without that form must hold exactly one number.
    """

    def ident(path: Path) -> str:
        stem = _without_extension(Path(path.name)).name
        found = re.fullmatch(r".*?_(\d+)_\d+", stem)
        numbers = [found.group(1)] if found else re.findall(r"\d+", stem)
        if len(numbers) != 1:
            raise DataError(
                f"{path}: --learn2reg needs Learn2Reg's file names (TASK_0001_0000.nii.gz) "
                "to tell the case id"
            )
        return numbers[0].zfill(4)

    return f"disp_{ident(fixed)}_{ident(moving)}.nii.gz"


def _to_file_voxels(ddf: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Canonical ``(ndim, *S)`` voxel displacements to ``(*file_shape, 3)`` along the file's axes."""
    ndim = ddf.shape[0]
    full = np.zeros((3, *ddf.shape[1:]), dtype=np.float32)
    full[:ndim] = ddf
    if info.squeezed is not None:  # 2D: the removed canonical axis comes back with zero motion
        order = [a for a in range(3) if a != info.squeezed] + [info.squeezed]
        full = full[np.argsort(order)]
    # info.ornt[i] = (canonical axis, flip) of file axis i: file component i = flip * canonical one.
    comps = np.stack([full[int(ax)] * flip for ax, flip in info.ornt])
    data = to_file_axes(np.moveaxis(comps, 0, -1), info)
    return data if len(info.file_shape) >= 3 else data[..., None, :]


def predicted_labels(
    logits: torch.Tensor | None, label_table: LabelTable | None
) -> torch.Tensor | None:
    """A segmentation's label map ``(B, 1, *S)`` int64 from its logits ``(B, K, *S)``: the
    arg-max, as original label values of ``label_table`` (the model's) when there is one."""
    if logits is None:
        return None
    if label_table is None:
        return logits.detach().argmax(1, True).cpu()
    # a head wider than the table: its extra classes never had a label to learn
    index = logits.detach()[:, : label_table.num_classes].argmax(1, True).cpu()
    return label_table.decode(index)


def write_outputs(
    out_dir: str | Path,
    pair: LoadedPair,
    out: RegistrationOutput,
    learn2reg: str | None = None,
    label_table: LabelTable | None = None,
    replace: bool = False,
    trajectory: Sequence[torch.Tensor] | None = None,
) -> list[Path]:
    """Write a pair's results as the folder ``out_dir`` (complete or absent); returns the files.

    ``trajectory`` (the model's :meth:`~regzoo.models.RegistrationModel.trajectory`, ``T`` fields
    ``(1, ndim, *S)``) adds one ITK-readable field per state, ``ddf_step01.nii.gz`` ... (as
    ``ddf.nii.gz``), and the moving image warped by each, as one 4D series
    ``warped_trajectory.nii.gz`` (fourth axis: the states, in order).

    ``label_table`` (the model's) turns segmentation predictions into original label values;
    ``warped_seg`` keeps the moving label map's own values, whatever they are. ``replace`` lets
    the new folder replace an existing one as a whole; without it an existing non-empty
    ``out_dir`` raises :class:`FileExistsError` and is left as it was. With ``learn2reg`` (a file
    name) only that file is written (atomically) into ``out_dir``.
    """
    out_dir = Path(out_dir)
    info = pair.fixed_info
    field = pair.field_on_fixed(out.ddf.detach().float().cpu()[0])
    if learn2reg:
        path = out_dir / learn2reg
        img = nib.Nifti1Image(_to_file_voxels(field.numpy(), info), info.affine)
        with atomic_path(path, suffix=".nii.gz") as tmp:
            nib.save(img, str(tmp))
        return [path]

    def first(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().cpu()[0]

    arrays = {
        "warped": pair.warp_moving(field),
        "ddf": field,
        "warped_seg": None if pair.moving_label is None else pair.warp_moving(field, label=True),
        "uncertainty": first(out.uncertainty),
        "synthesized": first(out.synthesized),
        "moving_seg_pred": first(predicted_labels(out.moving_seg, label_table)),
        "fixed_seg_pred": first(predicted_labels(out.fixed_seg, label_table)),
    }
    written = []
    with atomic_dir(out_dir, replace=replace) as tmp:
        for name in _OUTPUTS:
            if arrays[name] is None:
                continue
            path = tmp / f"{name}.nii.gz"
            if name == "ddf":
                save_ddf(arrays[name], info, path)
            elif name in ("warped", "warped_seg"):  # sampled onto the fixed file's own grid
                save_image(arrays[name], info, path)
            else:  # the model's own outputs stay on the model grid
                save_image(arrays[name], info, path, affine=pair.grid_affine)
            written.append(out_dir / f"{name}.nii.gz")
        if trajectory:
            fields = [pair.field_on_fixed(u.detach().float().cpu()[0]) for u in trajectory]
            for step, u in enumerate(fields, 1):
                name = trajectory_field_name(step, len(fields))
                save_ddf(u, info, tmp / name)
                written.append(out_dir / name)
            save_series([pair.warp_moving(u) for u in fields], info, tmp / TRAJECTORY_SERIES)
            written.append(out_dir / TRAJECTORY_SERIES)
    return written
