"""Target registration error of corresponding landmarks (Learn2Reg's TRE)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import register_metric
from .base import LEARN2REG_2023, Metric, spacing_of

__all__ = ["sample_field", "landmark_errors", "tre", "TRE"]


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
