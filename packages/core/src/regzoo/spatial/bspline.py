"""Cubic B-spline free-form deformations from control points (Rueckert et al. 1999).

The cubic kernel is a box of width ``spacing`` convolved with itself three times; the dense field is
the transposed convolution of the control-point displacements with it (stride ``spacing``, one group
per displacement channel), cropped to the image. Control point ``j`` sits at voxel
``(j - 1) * spacing``: one extra control point lies outside the image on each side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["bspline_kernel", "control_grid_shape", "bspline_to_ddf"]


@lru_cache(maxsize=16)
def _kernel_1d(spacing: int) -> torch.Tensor:
    box = torch.ones(1, 1, spacing, dtype=torch.float64)
    k = box
    for _ in range(3):
        k = F.conv1d(F.pad(k, (spacing - 1, spacing - 1)), box)
    # The taps of a point sum to spacing**3 over the control points that reach it.
    return (k.flatten() / spacing**3).float()


def bspline_kernel(spacing: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """The separable cubic B-spline kernel, ``(4 s_1 - 3, ..., 4 s_n - 3)``, a partition of unity."""
    kernel = None
    for s in spacing:
        k = _kernel_1d(int(s))
        kernel = k if kernel is None else kernel[..., None] * k
    return kernel.to(device=device, dtype=dtype)


def control_grid_shape(shape: Sequence[int], spacing: Sequence[int]) -> tuple[int, ...]:
    """Control points per axis that cover an image of ``shape``: ``ceil((n - 1) / s) + 3``."""
    return tuple(math.ceil((n - 1) / s) + 3 for n, s in zip(shape, spacing))


def bspline_to_ddf(
    control: torch.Tensor, shape: Sequence[int], spacing: Sequence[int]
) -> torch.Tensor:
    """Dense displacement ``(B, ndim, *shape)`` from control-point displacements.

    Args:
        control: ``(B, ndim, *control_grid_shape(shape, spacing))``, voxel units.
        shape: spatial size of the image.
        spacing: control-point spacing in voxels per axis.
    """
    ndim = control.shape[1]
    spacing = [int(s) for s in spacing]
    expected = control_grid_shape(shape, spacing)
    if tuple(control.shape[2:]) != expected:
        raise ValueError(
            f"control grid must be {expected} for image {tuple(shape)}, got {tuple(control.shape[2:])}"
        )
    kernel = bspline_kernel(spacing, control.device, control.dtype)
    weight = kernel.expand(ndim, 1, *kernel.shape)
    conv = F.conv_transpose2d if ndim == 2 else F.conv_transpose3d
    dense = conv(control, weight, stride=spacing, groups=ndim)
    index = tuple(slice(3 * s - 2, 3 * s - 2 + n) for s, n in zip(spacing, shape))
    return dense[(slice(None), slice(None)) + index]
