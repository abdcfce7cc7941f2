"""Affine transforms as ``(B, ndim, ndim + 1)`` matrices on centred voxel coordinates.

A point ``p`` (voxel indices) is centred as ``x = p - c`` with ``c = (size - 1) / 2``; the affine
maps it to ``A x + b``. The dense displacement is ``(A - I) x + b`` (RCN's convention). Converters
go to and from ``grid_sample``'s normalised coordinates and to physical (mm) units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .grid import identity_grid

__all__ = [
    "affine_to_ddf",
    "compose_affine",
    "affine_inverse",
    "affine_to_normalised",
    "affine_from_normalised",
    "affine_to_physical",
]


def _centred_grid(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    grid = identity_grid(shape, device, dtype)
    centre = torch.tensor([(s - 1) / 2 for s in shape], device=device, dtype=dtype)
    return grid - centre.view(1, -1, *([1] * len(shape)))


def affine_to_ddf(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense displacement ``(B, ndim, *shape)`` of affine matrices ``theta`` ``(B, ndim, ndim+1)``."""
    ndim = theta.shape[1]
    if theta.shape[1:] != (ndim, ndim + 1) or ndim != len(shape):
        raise ValueError(
            f"theta must be (B, {len(shape)}, {len(shape) + 1}), got {tuple(theta.shape)}"
        )
    x = _centred_grid(shape, theta.device, theta.dtype).flatten(2)  # (1, ndim, N)
    a = theta[:, :, :ndim] - torch.eye(ndim, device=theta.device, dtype=theta.dtype)
    ddf = a @ x + theta[:, :, ndim:]
    return ddf.view(theta.shape[0], ndim, *shape)


def affine_inverse(theta: torch.Tensor) -> torch.Tensor:
    """The inverse transforms ``(B, ndim, ndim + 1)``: ``x -> A^-1 (x - b)`` for ``x -> A x + b``,
    so that warping by one and then by the other is the identity."""
    ndim = theta.shape[1]
    inverse = torch.linalg.inv(theta[:, :, :ndim])
    return torch.cat([inverse, -inverse @ theta[:, :, ndim:]], dim=2)


def _scale(shape: Sequence[int], like: torch.Tensor, align_corners: bool) -> torch.Tensor:
    scales = [2.0 / (max(s - 1, 1) if align_corners else s) for s in shape]
    return torch.tensor(scales, device=like.device, dtype=like.dtype)


def affine_to_normalised(
    theta: torch.Tensor, shape: Sequence[int], align_corners: bool = True
) -> torch.Tensor:
    """The same transform as a ``torch.nn.functional.affine_grid`` matrix.

    ``affine_grid`` maps output to input coordinates in ``[-1, 1]`` with axes in (x, y, z) =
    reversed order; with ``n = S x``, ``A_n = S A S^-1`` and ``b_n = S b``. ``S = 2 / (size - 1)``
    for ``align_corners=True`` (``-1`` and ``1`` are the centres of the corner voxels) and
    ``S = 2 / size`` for ``align_corners=False`` (they are the outer edges of the corner voxels);
    use the ``align_corners`` that ``affine_grid`` and ``grid_sample`` are called with.
    """
    ndim = theta.shape[1]
    s = _scale(shape, theta, align_corners)
    a = theta[:, :, :ndim] * s.view(1, -1, 1) / s.view(1, 1, -1)
    b = theta[:, :, ndim:] * s.view(1, -1, 1)
    out = torch.cat([a, b], dim=2)
    return out.flip(1)[:, :, list(range(ndim))[::-1] + [ndim]]


def affine_from_normalised(
    theta_n: torch.Tensor, shape: Sequence[int], align_corners: bool = True
) -> torch.Tensor:
    """Inverse of :func:`affine_to_normalised` (with the same ``align_corners``)."""
    ndim = theta_n.shape[1]
    t = theta_n.flip(1)[:, :, list(range(ndim))[::-1] + [ndim]]
    s = _scale(shape, theta_n, align_corners)
    a = t[:, :, :ndim] / s.view(1, -1, 1) * s.view(1, 1, -1)
    b = t[:, :, ndim:] / s.view(1, -1, 1)
    return torch.cat([a, b], dim=2)


def affine_to_physical(theta: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """The transform in centred millimetre coordinates: ``A_mm = P A P^-1``, ``b_mm = P b``."""
    ndim = theta.shape[1]
    p = torch.tensor(list(spacing), device=theta.device, dtype=theta.dtype)
    a = theta[:, :, :ndim] * p.view(1, -1, 1) / p.view(1, 1, -1)
    return torch.cat([a, theta[:, :, ndim:] * p.view(1, -1, 1)], dim=2)


def compose_affine(ddf: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The field ``(B, ndim, *S)`` of ``ddf`` followed by the affine ``theta``: a fixed voxel ``x``
    goes to ``x + ddf(x)``, which ``theta`` carries into the moving image; exact (no resampling of
    the affine part), since an affine displacement is linear: ``affine_to_ddf(theta) + A ddf``."""
    ndim = theta.shape[1]
    linear = torch.einsum("bij,bj...->bi...", theta[:, :, :ndim], ddf)
    return affine_to_ddf(theta, ddf.shape[2:]) + linear
