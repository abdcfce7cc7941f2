"""Field regularity from the Jacobian determinant: ``sdlogj``, ``sdlogj-plain`` and ``folding``.

J = det(I + grad u) by central differences with zero padding outside the image
(:func:`regzoo.spatial.jacobian_determinant`, the Learn2Reg scorer's form), computed in float64 and
cropped by 2 voxels on every side, as the scorer crops it (the zero padding makes the outermost
derivatives meaningless).
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import register_metric
from ..spatial import jacobian_determinant
from .base import LEARN2REG_2023, Metric

__all__ = [
    "interior_jacobian",
    "sdlogj",
    "sdlogj_plain",
    "folding",
    "SDLogJ",
    "SDLogJPlain",
    "Folding",
]


def interior_jacobian(ddf: torch.Tensor, crop: int = 2) -> torch.Tensor:
    """det(I + grad u) in float64 without ``crop`` voxels at each border: ``(B, *(S - 2 crop))``."""
    if min(ddf.shape[2:]) <= 2 * crop:
        raise ValueError(
            f"field {tuple(ddf.shape[2:])} is too small to crop {crop} voxels per side"
        )
    jac = jacobian_determinant(ddf.detach().double())
    return jac[(slice(None),) + tuple(slice(crop, n - crop) for n in jac.shape[1:])]


def sdlogj(ddf: torch.Tensor, crop: int = 2) -> torch.Tensor:
    """Learn2Reg's SDlogJ: ``std(log(clip(J + 3, 1e-9, 1e9)))`` per case, ``(B,)`` float64.

    Population standard deviation over the interior voxels, exactly the scorer's expression
    (the ``+ 3`` keeps the logarithm finite where J <= 0).
    """
    jac = interior_jacobian(ddf, crop).flatten(1)
    return torch.log((jac + 3.0).clamp(1e-9, 1e9)).std(1, correction=0)


def sdlogj_plain(ddf: torch.Tensor, crop: int = 2) -> torch.Tensor:
    """``std(log(clip(J, 1e-9, 1e9)))`` per case: the log of J itself, folds clipped to 1e-9."""
    jac = interior_jacobian(ddf, crop).flatten(1)
    return torch.log(jac.clamp(1e-9, 1e9)).std(1, correction=0)


def folding(ddf: torch.Tensor, crop: int = 2) -> torch.Tensor:
    """Fraction of interior voxels with J <= 0 per case, ``(B,)`` float64."""
    jac = interior_jacobian(ddf, crop).flatten(1)
    return (jac <= 0).double().mean(1)


class _JacobianMetric(Metric):
    requires = ("ddf",)
    higher_is_better = False

    def __init__(self, crop: int = 2) -> None:
        self.crop = crop


@register_metric(
    "sdlogj",
    summary="Std of log(clip(J + 3)) over the interior (Learn2Reg scorer's form).",
    paper=LEARN2REG_2023,
    tags=("2d", "3d", "field"),
)
class SDLogJ(_JacobianMetric):
    """:func:`sdlogj` of the field. ``crop``: voxels left out at each border (2)."""

    def compute(self, *, ddf: torch.Tensor, **_: Any) -> torch.Tensor:
        return sdlogj(ddf, self.crop)


@register_metric(
    "sdlogj-plain",
    summary="Std of log(J) with J clipped to [1e-9, 1e9], over the interior.",
    paper=LEARN2REG_2023,
    tags=("2d", "3d", "field"),
)
class SDLogJPlain(_JacobianMetric):
    """:func:`sdlogj_plain` of the field. ``crop``: voxels left out at each border (2)."""

    def compute(self, *, ddf: torch.Tensor, **_: Any) -> torch.Tensor:
        return sdlogj_plain(ddf, self.crop)


@register_metric(
    "folding",
    summary="Fraction of interior voxels with a non-positive Jacobian determinant.",
    paper=LEARN2REG_2023,
    tags=("2d", "3d", "field"),
)
class Folding(_JacobianMetric):
    """:func:`folding` of the field. ``crop``: voxels left out at each border (2)."""

    def compute(self, *, ddf: torch.Tensor, **_: Any) -> torch.Tensor:
        return folding(ddf, self.crop)
