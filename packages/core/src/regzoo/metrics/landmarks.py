"""Landmark errors: Learn2Reg's target registration error, and the success-rate AUC of fundus
image registration (FIRE)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import Paper, register_metric
from .base import LEARN2REG_2023, Metric, spacing_of

__all__ = [
    "sample_field",
    "landmark_errors",
    "tre",
    "TRE",
    "success_auc",
    "SuccessAUC",
    "FIRE_2017",
]

FIRE_2017 = Paper(
    "C. Hernandez-Matas, X. Zabulis, A. Triantafyllou, P. Anyfanti, S. Douma, A. A. Argyros",
    "FIRE: Fundus Image Registration Dataset",
    "Journal for Modeling in Ophthalmology 1(4):16-28",
    2017,
    "https://doi.org/10.35119/maio.v1i4.42",
)


def sample_field(ddf: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The field at (fractional) voxel positions by linear interpolation: ``(B, N, ndim)``.

    Args:
        ddf: ``(B, ndim, *spatial)``.
        points: ``(B, N, ndim)`` voxel coordinates in the field's axis order; points outside
            the image take the value of the nearest border voxel.
    """
    ndim = ddf.shape[1]
    if points.dim() != 3 or points.shape[-1] != ndim or points.shape[0] != ddf.shape[0]:
        raise ValueError(
            f"points must be (B, N, {ndim}) for a field {tuple(ddf.shape)}, got {tuple(points.shape)}"
        )
    size = torch.tensor(ddf.shape[2:], device=ddf.device, dtype=ddf.dtype)
    grid = (2.0 * points.to(ddf.dtype) / (size - 1).clamp(min=1) - 1.0).flip(-1)
    grid = grid.view(points.shape[0], points.shape[1], *([1] * (ndim - 1)), ndim)
    values = F.grid_sample(ddf, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return values.view(ddf.shape[0], ndim, points.shape[1]).transpose(1, 2)


def landmark_errors(
    ddf: torch.Tensor,
    fixed_landmarks: torch.Tensor,
    moving_landmarks: torch.Tensor,
    spacing: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance in mm between ``p + u(p)`` and the moving landmark, per landmark: ``(B, N)``.

    ``p`` are the fixed landmarks (voxel coordinates), ``u(p)`` the field sampled there with
    linear interpolation: ``warped[x] = moving[x + u(x)]`` maps fixed point p onto moving point
    ``p + u(p)``. Differences are scaled by ``spacing`` (mm per voxel, ``(B, ndim)``; ``None`` for
    1). A landmark with a NaN coordinate (padding for cases with fewer landmarks) gives NaN.
    """
    ddf = ddf.detach().double()
    p = fixed_landmarks.to(ddf.device, torch.float64)
    q = moving_landmarks.to(ddf.device, torch.float64)
    if p.shape != q.shape:
        raise ValueError(f"fixed {tuple(p.shape)} and moving {tuple(q.shape)} landmarks differ")
    u = sample_field(ddf, torch.nan_to_num(p))
    scale = spacing_of(spacing, ddf.shape[0], ddf.shape[1]).to(ddf.device).unsqueeze(1)
    return ((p + u - q) * scale).norm(dim=-1)


def tre(
    ddf: torch.Tensor,
    fixed_landmarks: torch.Tensor,
    moving_landmarks: torch.Tensor,
    spacing: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean :func:`landmark_errors` per case over its valid landmarks, ``(B,)`` float64 (mm)."""
    errors = landmark_errors(ddf, fixed_landmarks, moving_landmarks, spacing)
    return errors.nanmean(1)


@register_metric(
    "tre",
    summary="Target registration error: mean distance in mm of mapped fixed to moving landmarks.",
    paper=LEARN2REG_2023,
    tags=("2d", "3d", "landmarks"),
)
class TRE(Metric):
    """:func:`tre` of the field on the batch's landmark pairs."""

    requires = ("ddf", "fixed_landmarks", "moving_landmarks")
    unit = "mm"
    higher_is_better = False

    def compute(
        self,
        *,
        ddf: torch.Tensor,
        fixed_landmarks: torch.Tensor,
        moving_landmarks: torch.Tensor,
        spacing: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        return tre(ddf, fixed_landmarks, moving_landmarks, spacing)


def success_auc(errors: Iterable[float], max_error: float = 25.0, step: float = 1.0) -> float:
    """Area under the success-rate curve of a set of pairs, normalised to [0, 1].

    A pair succeeds at threshold ``t`` when its error (mean landmark error) is below
    ``t``; the success rate is the fraction of pairs that succeed; the curve is sampled at
    ``t = 0, step, ..., max_error`` and integrated with the trapezoidal rule, divided by
    ``max_error``. Pairs with a NaN error are left out; with none left the result is NaN.
    """
    e = torch.as_tensor(list(errors), dtype=torch.float64).flatten()
    e = e[~torch.isnan(e)]
    if e.numel() == 0:
        return float("nan")
    thresholds = torch.arange(0.0, max_error + step / 2, step, dtype=torch.float64)
    rate = (e[None, :] < thresholds[:, None]).double().mean(1)
    return float(torch.trapezoid(rate, thresholds) / max_error)


@register_metric(
    "success-auc",
    summary="Area under the success rate of pairs vs landmark-error threshold (0-25), in [0, 1].",
    paper=FIRE_2017,
    tags=("2d", "3d", "landmarks"),
)
class SuccessAUC(TRE):
    """Per pair its mean landmark error in mm (:class:`TRE`'s); summarised over all pairs by
    :func:`success_auc` (thresholds ``0 .. max_error`` in steps of ``step`` mm). Photographs are
    read with 1 mm pixels, so on them the thresholds are pixels of the original photograph
    (FIRE's 0-25 px), whatever grid the model runs on.

    Args:
        max_error: the largest threshold (mm); FIRE's 25 px.
        step: the threshold step (mm).
    """

    higher_is_better = True

    def __init__(self, max_error: float = 25.0, step: float = 1.0) -> None:
        if max_error <= 0 or step <= 0:
            raise ConfigError(
                f"success-auc: max_error and step must be positive, got {max_error}, {step}"
            )
        self.max_error, self.step = float(max_error), float(step)

    def aggregate(self, values: Iterable[float]) -> float:
        return success_auc(values, self.max_error, self.step)
