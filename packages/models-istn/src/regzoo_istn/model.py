"""ISTN: Image-and-Spatial Transformer Networks, and their STN baselines, as one model.

Lee, Oktay, Schuh, Schaap, Glocker, "Image-and-Spatial Transformer Networks for Structure-Guided
Image Registration", MICCAI 2019 (arXiv:1907.09200); official code ``biomedia-mira/istn``
(``istn-reg.py``).

An ITN maps each image to a representation M' = ITN(M), F' = ITN(F); an STN regresses a transform
θ (affine or cubic B-spline) from concat(M', F'). The paper's four models are the same networks
trained with different losses (MSE throughout, S_M and S_F the structure-of-interest maps):

- ``e`` (ISTN-e, explicit): ‖M' − S_M‖² + ‖F' − S_F‖² + ‖S_M∘θ − S_F‖²;
- ``i`` (ISTN-i, implicit): ‖M'∘θ − S_F‖² + ‖S_M∘θ − F'‖² + ‖S_M∘θ − S_F‖²;
- ``s`` (STN-s, supervised baseline): ‖S_M∘θ − S_F‖², no ITN (the STN sees the images);
- ``u`` (STN-u, unsupervised baseline): ‖M∘θ − F‖², no ITN.

Test-time refinement (instance optimisation) updates the STN only, with the ITN frozen, on
‖M'∘θ − F'‖², which needs no labels: :meth:`ISTN.objective`, :meth:`ISTN.io_parameters`.

The networks run at a fixed ``size`` (the STN's fully connected layer depends on it, as in the
official code, which resamples every image to its configured size). Images of another size are
resampled (linearly) to ``size`` for the networks and the losses; the transform is then applied at
the images' own size: an affine through normalised coordinates, a B-spline field by resizing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.engine.checkpoint import load_checkpoint
from regzoo.errors import ConfigError, DataError, UserError
from regzoo.models import RegistrationModel, RegistrationOutput
from regzoo.spatial import affine_from_normalised, affine_to_ddf, resize_field, warp

from . import ISTNConfig
from .networks import ITN, AffineSTN, BSplineSTN
from .structures import label_structure, landmark_heatmap

__all__ = ["ISTN", "VARIANTS", "TRANSFORMERS", "PAPER_SIZE", "import_official"]

VARIANTS = ("e", "i", "u", "s")
TRANSFORMERS = ("affine", "bspline")
# The registered entries' config is the one source of the defaults (istn-e-affine's).
_DEFAULTS = ISTNConfig()
# Image size of the paper's experiments: 2D synthetic 128², 3D brain 64³ at 3 mm.
PAPER_SIZE = {2: 128, 3: 64}


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target.expand_as(pred))


class ISTN(RegistrationModel):
    """ITN + STN with the loss of ``variant`` (see the module docstring).

    Args:
        ndim: 2 or 3.
        in_channels: image channels (1).
        variant: ``"e"`` (ISTN-e), ``"i"`` (ISTN-i), ``"u"`` (STN-u) or ``"s"`` (STN-s); ``u`` and
            ``s`` have no ITN.
        transformer: ``"affine"`` or ``"bspline"``.
        size: spatial size the networks run at, an int or one per axis; ``None``: the paper's
            (128 in 2D, 64 in 3D). Each axis at least 36 voxels, and divisible by 4 with an ITN.
        spacing: B-spline control-point spacing in voxels at ``size`` (10).
        max_displacement: bound of each B-spline control-point displacement in normalised units
            (0.2, i.e. 10% of the image extent).
        max_translation: bound of the affine STN's translation in normalised units, ``[-1, 1]``
            across the image: the official 0.1 is 5% of the image extent (3.15 voxels at 64).
            Data translated further (e.g. the ``synth`` dataset's ``max_translation``, a fraction
            of the size) needs a larger bound: 0.2 covers translations up to about 10% of the size.
        structure: where the structure maps come from: ``"labels"`` (``moving_label``/
            ``fixed_label``), ``"landmarks"`` (``moving_landmarks``/``fixed_landmarks`` as Gaussian
            heatmaps) or ``"auto"`` (labels when the batch has them, else landmarks).
        structure_labels: label values (original ones, looked up in the data's label table) that
            form the structure of interest; empty: every non-zero label (``threshold_zero``).
        heatmap_sigma: standard deviation of the landmark heatmaps, voxels of the input images.
        num_labels: classes of ``warped_label`` (one-hot moving labels warped linearly); 0: the
            data's label table (:meth:`~regzoo.models.RegistrationModel.warp_moving_labels`).
        itn_activation: ``"leaky_relu"`` (slope 0.01, default) or ``"relu"`` (official). The
            official ReLU ITN often dies in training (see :class:`~regzoo_istn.networks.ITN`);
            the weights are the same either way, and :func:`import_official` uses ``"relu"``.
    """

    io_iterations = 50

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        variant: str = _DEFAULTS.variant,
        transformer: str = _DEFAULTS.transformer,
        size: int | Sequence[int] | None = _DEFAULTS.size,
        spacing: int = _DEFAULTS.spacing,
        max_displacement: float = _DEFAULTS.max_displacement,
        max_translation: float = _DEFAULTS.max_translation,
        structure: str = _DEFAULTS.structure,
        structure_labels: Sequence[int] = _DEFAULTS.structure_labels,
        heatmap_sigma: float = _DEFAULTS.heatmap_sigma,
        num_labels: int = _DEFAULTS.num_labels,
        itn_activation: str = _DEFAULTS.itn_activation,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ConfigError(f"ISTN: ndim must be 2 or 3, got {ndim}")
        if variant not in VARIANTS:
            raise ConfigError(
                f"ISTN: variant must be one of {', '.join(VARIANTS)}, got {variant!r}"
            )
        if transformer not in TRANSFORMERS:
            raise ConfigError(f"ISTN: transformer must be affine or bspline, got {transformer!r}")
        if itn_activation not in ("relu", "leaky_relu"):
            raise ConfigError(
                f"ISTN: itn_activation must be relu or leaky_relu, got {itn_activation!r}"
            )
        if structure not in ("auto", "labels", "landmarks"):
            raise ConfigError(
                f"ISTN: structure must be auto, labels or landmarks, got {structure!r}"
            )
        if size is None:
            size = PAPER_SIZE[ndim]
        size = (
            (int(size),) * ndim if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        )
        if len(size) != ndim or min(size) < 36:
            raise ConfigError(f"ISTN: size must be {ndim} values of at least 36, got {size}")
        uses_itn = variant in ("e", "i")
        if uses_itn and any(s % 4 for s in size):
            raise ConfigError(f"ISTN: the ITN needs a size divisible by 4, got {size}")
        self.config = {
            "ndim": ndim,
            "in_channels": in_channels,
            "variant": variant,
            "transformer": transformer,
            "size": list(size),
            "spacing": spacing,
            "max_displacement": max_displacement,
            "max_translation": max_translation,
            "structure": structure,
            "structure_labels": list(structure_labels),
            "heatmap_sigma": heatmap_sigma,
            "num_labels": num_labels,
            "itn_activation": itn_activation,
        }
        self.ndim, self.variant, self.transformer, self.size = ndim, variant, transformer, size
        self.structure, self.structure_labels = structure, tuple(structure_labels)
        self.heatmap_sigma, self.num_labels = heatmap_sigma, num_labels
        # The official refinement reuses the training learning rate of its configuration.
        self.io_lr = 5e-4 if (ndim == 3 and transformer == "bspline") else 1e-3
        self.itn: ITN | None = ITN(ndim, in_channels, itn_activation) if uses_itn else None
        stn_in = 2 * in_channels
        self.stn: nn.Module = (
            AffineSTN(ndim, stn_in, size, max_translation=max_translation)
            if transformer == "affine"
            else BSplineSTN(ndim, stn_in, size, spacing, max_displacement)
        )

    # ---------------------------------------------------------------- forward
    def _to_size(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) == self.size:
            return x
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        return F.interpolate(x.float(), size=self.size, mode=mode, align_corners=True)

    def forward(self, batch: Mapping[str, Any]) -> RegistrationOutput:
        """Register ``batch["moving"]`` to ``batch["fixed"]`` (``(B, C, *S)`` each).

        Returns ``warped``, ``ddf`` (and ``affine`` for the affine STN) at the images' size;
        ``warped_label`` when the batch has ``moving_label``; ``extras``: ``stn_ddf`` (the field at
        ``size``), ``stn_moving``/``stn_fixed`` (the STN's inputs at ``size``) and, with an ITN,
        ``itn_moving``/``itn_fixed`` (M', F').
        """
        moving, fixed = batch["moving"], batch["fixed"]
        if moving.dim() != self.ndim + 2 or fixed.shape != moving.shape:
            raise UserError(
                f"ISTN ({self.ndim}D) needs moving and fixed images of one shape (B, C, *S) with "
                f"{self.ndim} spatial axes, got {tuple(moving.shape)} and {tuple(fixed.shape)}"
            )
        shape = tuple(moving.shape[2:])
        m, f = self._to_size(moving), self._to_size(fixed)
        if self.itn is not None:
            m, f = self.itn(m), self.itn(f)
        params = self.stn(torch.cat([m, f], dim=1))
        affine = None
        if self.transformer == "affine":
            affine = affine_from_normalised(params, shape)
            ddf = affine_to_ddf(affine, shape)
            stn_ddf = (
                ddf
                if shape == self.size
                else affine_to_ddf(affine_from_normalised(params, self.size), self.size)
            )
        else:
            stn_ddf = params
            ddf = resize_field(stn_ddf, shape)
        extras = {"stn_ddf": stn_ddf, "stn_moving": m, "stn_fixed": f}
        if self.itn is not None:
            extras.update(itn_moving=m, itn_fixed=f)
        return RegistrationOutput(
            warped=warp(moving, ddf),
            ddf=ddf,
            affine=affine,
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels or None),
            extras=extras,
        )

    # ---------------------------------------------------------------- structures
    def structure_maps(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """S_M and S_F, ``(B, 1, *size)`` each, from the batch's labels or landmarks."""
        has_labels = "moving_label" in batch and "fixed_label" in batch
        has_landmarks = "moving_landmarks" in batch and "fixed_landmarks" in batch
        source = self.structure
        if source == "auto":
            source = "labels" if has_labels else "landmarks"
        if source == "labels" and has_labels:
            wanted = self.structure_labels
            if wanted and self.label_table is not None:  # batch maps hold table indices
                wanted = self.label_table.encode(torch.tensor(wanted), "model.structure_labels")
                wanted = tuple(wanted.tolist())
            s_m = label_structure(batch["moving_label"], wanted)
            s_f = label_structure(batch["fixed_label"], wanted)
        elif source == "landmarks" and has_landmarks:
            shape = batch["moving"].shape[2:]
            s_m = landmark_heatmap(batch["moving_landmarks"].float(), shape, self.heatmap_sigma)
            s_f = landmark_heatmap(batch["fixed_landmarks"].float(), shape, self.heatmap_sigma)
        else:
            keys = (
                "moving_label/fixed_label"
                if source == "labels"
                else "moving_landmarks/fixed_landmarks"
            )
            raise UserError(
                f"ISTN variant {self.variant!r} trains on structures of interest: the batch has no "
                f"{keys} (use variant 'u' to train on images alone)"
            )
        return self._to_size(s_m), self._to_size(s_f)

    # ---------------------------------------------------------------- losses
    def loss(self, batch: Mapping[str, Any], out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """The variant's training loss (official ``istn-reg.py`` terms, all MSE at ``size``).

        Terms: ``stn_u`` (u); ``stn_s`` = ‖S_M∘θ − S_F‖² (e, i, s); ``itn`` = ‖M' − S_M‖² +
        ‖F' − S_F‖² (e); ``stn_i`` = ‖M'∘θ − S_F‖² + ‖S_M∘θ − F'‖² (i); ``loss`` their sum.
        """
        ddf = out.extras["stn_ddf"]
        m, f = out.extras["stn_moving"], out.extras["stn_fixed"]
        terms: dict[str, torch.Tensor] = {}
        if self.variant == "u":
            terms["stn_u"] = _mse(warp(m, ddf), f)
        else:
            s_m, s_f = self.structure_maps(batch)
            s_m_warped = warp(s_m, ddf)
            terms["stn_s"] = _mse(s_m_warped, s_f)
            if self.variant == "e":
                terms["itn"] = _mse(m, s_m) + _mse(f, s_f)
            elif self.variant == "i":
                terms["stn_i"] = _mse(warp(m, ddf), s_f) + _mse(s_m_warped, f)
        terms["loss"] = sum(terms.values())
        return terms

    def objective(self, batch: Mapping[str, Any], out: RegistrationOutput) -> torch.Tensor:
        """Refinement objective ‖M'∘θ − F'‖² (raw images for STN-u/-s); reads no labels."""
        m, f = out.extras["stn_moving"], out.extras["stn_fixed"]
        return _mse(warp(m, out.extras["stn_ddf"]), f)

    def io_parameters(self) -> Iterable[nn.Parameter]:
        """The STN's parameters: refinement keeps the ITN frozen."""
        return self.stn.parameters()

    # ---------------------------------------------------------------- official weights
    def load_official(
        self, itn_state: Mapping[str, torch.Tensor] | None, stn_state: Mapping[str, torch.Tensor]
    ) -> None:
        """Load the official code's state dicts (``itn.pt``, ``stn.pt``); names are unchanged."""
        if self.itn is not None:
            if itn_state is None:
                raise UserError(
                    f"ISTN variant {self.variant!r} needs the official itn_*.pt weights"
                )
            self.itn.load_state_dict(itn_state, strict=True)
        self.stn.load_state_dict(stn_state, strict=True)


def import_official(
    itn_path: str | Path | None,
    stn_path: str | Path,
    variant: str = "e",
    size: int | Sequence[int] | None = None,
    **config: Any,
) -> ISTN:
    """Build an :class:`ISTN` from the official code's separate ``itn_*.pt`` / ``stn_*.pt`` files.

    The dimensionality and the transformer are read from the STN weights; ``variant`` (the loss the
    weights were trained with) and ``size`` (the official config's ``size``; default the paper's)
    cannot be, so they are arguments. ``itn_path`` may be ``None`` for STN-u/-s. The ITN gets the
    official ReLU activations. Further keyword arguments go to :class:`ISTN`.
    """
    config.setdefault("itn_activation", "relu")
    stn_state = load_checkpoint(stn_path)
    itn_state = load_checkpoint(itn_path) if itn_path is not None else None
    if "conv1.weight" not in stn_state:
        raise DataError(f"{stn_path}: not an official ISTN STN state dict (no conv1.weight)")
    ndim = stn_state["conv1.weight"].dim() - 2
    transformer = "affine" if "translation.weight" in stn_state else "bspline"
    in_channels = stn_state["conv1.weight"].shape[1] // 2
    model = ISTN(
        ndim=ndim,
        in_channels=in_channels,
        variant=variant,
        transformer=transformer,
        size=size,
        **config,
    )
    try:
        model.load_official(itn_state, stn_state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(
            f"{stn_path}: weights do not fit an ISTN of size {model.size} ({first})"
        ) from None
    return model
