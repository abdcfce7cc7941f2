"""Spatial transformers: what turns a network's output into a displacement field.

A transformer is a module ``params -> {"ddf": ..., ...}``; :meth:`SpatialTransformer.param_shape`
says what a network head must produce for an image of a given size. Registered as ``dense``,
``svf`` (stationary velocity, scaling and squaring), ``affine`` and ``bspline``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..registry import Paper, register_transformer
from .affine import affine_to_ddf
from .bspline import bspline_to_ddf, control_grid_shape
from .fields import integrate_velocity, resize_field

__all__ = ["SpatialTransformer", "Dense", "StationaryVelocity", "Affine", "BSpline"]

ARSIGNY_2006 = Paper(
    "Arsigny, Commowick, Pennec, Ayache",
    "A Log-Euclidean framework for statistics on diffeomorphisms",
    "MICCAI",
    2006,
    "https://doi.org/10.1007/11866565_113",
)
RUECKERT_1999 = Paper(
    "Rueckert, Sonoda, Hayes, Hill, Leach, Hawkes",
    "Nonrigid registration using free-form deformations: application to breast MR images",
    "IEEE TMI 18(8)",
    1999,
    "https://doi.org/10.1109/42.796284",
)


class SpatialTransformer(nn.Module):
    """Base class: maps parameters ``(B, *param_shape)`` to a field ``(B, ndim, *shape)``."""

    def param_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of the parameters (batch excluded) for an image of spatial ``shape``."""
        raise NotImplementedError

    def forward(self, params: torch.Tensor, shape: Sequence[int]) -> dict[str, torch.Tensor]:
        """Returns at least ``ddf``; transformers with more state add ``velocity`` or ``affine``."""
        raise NotImplementedError


@register_transformer(
    "dense", summary="Dense displacement field: the network's output is u.", tags=("2d", "3d")
)
class Dense(SpatialTransformer):
    """The identity transformer: the parameters are the displacement field itself."""

    def param_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (len(shape), *shape)

    def forward(self, params: torch.Tensor, shape: Sequence[int]) -> dict[str, torch.Tensor]:
        return {"ddf": resize_field(params, shape)}


@register_transformer(
    "svf",
    summary="Stationary velocity field integrated by scaling and squaring (diffeomorphic).",
    paper=ARSIGNY_2006,
    tags=("2d", "3d", "diffeomorphic"),
)
class StationaryVelocity(SpatialTransformer):
    """exp(v) by ``steps`` squarings, integrated at ``1/downsize`` resolution (VoxelMorph's defaults).

    As VoxelMorph's ``VxmDense`` (``ResizeTransform``, ``VecInt``): a full-resolution network
    output is resized to ``floor(n / downsize)`` voxels with its values times exactly
    ``1 / downsize``, integrated there, and the displacement is resized back to the image size
    with its values times exactly ``downsize`` (:func:`~regzoo.spatial.resize_field` with
    ``factor``). Where ``downsize`` divides the size this is the official operation; elsewhere the
    coarse grid's spacing is ``(n - 1) / (floor(n / downsize) - 1)`` voxels, not ``downsize``, and
    the values keep the official factors. An output already at a reduced resolution (a
    half-resolution U-Net) is the velocity itself, resized to the integration grid by the grids'
    ratio when the sizes differ.

    Args:
        steps: scaling-and-squaring steps (7).
        downsize: integrate at this fraction of the image size, then upsample (2).
    """

    def __init__(self, steps: int = 7, downsize: int = 2) -> None:
        super().__init__()
        self.steps = steps
        self.downsize = downsize

    def param_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (len(shape), *shape)

    def forward(self, params: torch.Tensor, shape: Sequence[int]) -> dict[str, torch.Tensor]:
        shape = tuple(int(s) for s in shape)
        small = [max(1, s // self.downsize) for s in shape]
        if tuple(params.shape[2:]) == shape:
            velocity = resize_field(params, small, factor=1 / self.downsize)
        else:
            velocity = resize_field(params, small)
        ddf = resize_field(integrate_velocity(velocity, self.steps), shape, factor=self.downsize)
        return {"ddf": ddf, "velocity": velocity}


@register_transformer(
    "affine",
    summary="Affine matrix on centred voxel coordinates to a dense field.",
    tags=("2d", "3d", "affine"),
)
class Affine(SpatialTransformer):
    """``(B, ndim, ndim + 1)`` matrices (``[A | b]``) to ``(A - I) x + b``."""

    def param_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (len(shape), len(shape) + 1)

    def forward(self, params: torch.Tensor, shape: Sequence[int]) -> dict[str, torch.Tensor]:
        return {"ddf": affine_to_ddf(params, shape), "affine": params}


@register_transformer(
    "bspline",
    summary="Cubic B-spline free-form deformation from control-point displacements.",
    paper=RUECKERT_1999,
    tags=("2d", "3d"),
)
class BSpline(SpatialTransformer):
    """Control points every ``spacing`` voxels (one extra on each side) to a dense field.

    Args:
        spacing: control-point spacing in voxels, one value for all axes or one per axis (10, ISTN).
    """

    def __init__(self, spacing: int | Sequence[int] = 10) -> None:
        super().__init__()
        self.spacing = spacing

    def _spacing(self, ndim: int) -> list[int]:
        s = self.spacing
        return [int(s)] * ndim if isinstance(s, (int, float)) else [int(v) for v in s]

    def param_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (len(shape), *control_grid_shape(shape, self._spacing(len(shape))))

    def forward(self, params: torch.Tensor, shape: Sequence[int]) -> dict[str, torch.Tensor]:
        return {"ddf": bspline_to_ddf(params, shape, self._spacing(len(shape)))}
