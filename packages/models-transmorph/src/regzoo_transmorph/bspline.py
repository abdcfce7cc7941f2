"""Cubic B-spline free-form deformation as TransMorph-bspl evaluates it.

TransMorph-bspl (Chen et al., Medical Image Analysis 82:102615, 2022) takes its transformation
model from MIDIR (Qiu et al., "Learning diffeomorphic and modality-invariant registration using
B-splines", MIDL 2021): control points every ``s`` voxels, the dense field a separable transposed
convolution with the *sampled continuous* cubic B-spline ``B(k / s)``, ``|k| < 2s`` (Rueckert et
al. 1999). Control point ``j`` sits at voxel ``(j - 1) * s``, one lies outside the image on each
side, and ``ceil((n - 1) / s) + 3`` of them cover ``n`` voxels (as
:func:`regzoo.spatial.control_grid_shape`). The kernel is this family's own so that released
weights give the released fields; :func:`regzoo.spatial.bspline_to_ddf` uses another discrete
kernel (a box filtered four times).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from regzoo.spatial import control_grid_shape

__all__ = ["cubic_bspline", "bspline_kernel_1d", "bspline_to_dense"]


def cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """The centred cubic B-spline, ``2/3 - t^2 + |t|^3 / 2`` on ``|t| < 1``, ``(2 - |t|)^3 / 6`` on
    ``1 <= |t| < 2``, zero beyond."""
    a = t.abs()
    inner = 2.0 / 3.0 - a**2 + 0.5 * a**3
    outer = (2.0 - a).clamp(min=0) ** 3 / 6.0
    return torch.where(a < 1, inner, outer)


@lru_cache(maxsize=16)
def _kernel(spacing: int) -> torch.Tensor:
    k = torch.arange(-(2 * spacing - 1), 2 * spacing, dtype=torch.float64)
    return cubic_bspline(k / spacing).float()


def bspline_kernel_1d(spacing: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``B(k / s)`` for ``k = -(2s - 1) .. 2s - 1``: ``4s - 1`` taps, a partition of unity."""
    return _kernel(int(spacing)).to(device=device, dtype=dtype)


def bspline_to_dense(
    control: torch.Tensor, shape: Sequence[int], spacing: Sequence[int]
) -> torch.Tensor:
    """Dense field ``(B, C, *shape)`` from control-point values ``(B, C, *control_grid_shape)``.

    Args:
        control: control-point displacements (or velocities), voxel units.
        shape: spatial size of the image.
        spacing: control-point spacing per axis, in voxels.
    """
    spacing = [int(s) for s in spacing]
    expected = control_grid_shape(shape, spacing)
    if tuple(control.shape[2:]) != tuple(expected):
        raise ValueError(
            f"control grid must be {tuple(expected)} for image {tuple(shape)}, "
            f"got {tuple(control.shape[2:])}"
        )
    out = control
    for axis, (s, n) in enumerate(zip(spacing, shape)):
        dim = axis + 2
        moved = out.movedim(dim, -1)
        lead = moved.shape[:-1]
        kernel = bspline_kernel_1d(s, out.device, out.dtype).view(1, 1, -1)
        dense = F.conv_transpose1d(
            moved.reshape(-1, 1, moved.shape[-1]), kernel, stride=s, padding=2 * s - 1
        )
        out = dense[..., s : s + n].reshape(*lead, n).movedim(-1, dim)
    return out
