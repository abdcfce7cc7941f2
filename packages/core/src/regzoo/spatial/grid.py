"""Identity grids and the voxel-to-normalised coordinate maps of ``grid_sample``, cached by shape."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["identity_grid", "normalised_grid_affine", "spatial_shape"]


def spatial_shape(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial size ``(D, H, W)`` or ``(H, W)`` of a ``(B, C, *spatial)`` tensor."""
    return tuple(x.shape[2:])


@lru_cache(maxsize=64)
def _identity(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def identity_grid(
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Voxel coordinates of every voxel, ``(1, ndim, *shape)``; channel i is the index on axis i.

    The tensor is cached by (shape, device, dtype) and must not be modified in place.
    """
    return _identity(tuple(int(s) for s in shape), torch.device(device or "cpu"), dtype)


@lru_cache(maxsize=64)
def _normalised_affine(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    # grid_sample wants (x, y, z) = (W, H, D) order in [-1, 1] with align_corners=True:
    # g = 2 p / (n - 1) - 1, the axes reversed.
    sizes = torch.tensor(shape[::-1], device=device, dtype=dtype)
    scale = 2.0 / (sizes - 1).clamp(min=1)
    ident = _identity(shape, device, dtype).movedim(1, -1).flip(-1)
    offset = ident * scale - 1.0
    return scale, offset.contiguous()


def normalised_grid_affine(
    shape: Sequence[int], device: torch.device | str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, offset)`` with ``grid = ddf_xyz * scale + offset`` the ``grid_sample`` grid.

    ``scale`` is ``(ndim,)`` in (x, y, z) order and ``offset`` is the normalised identity grid
    ``(1, *shape, ndim)``; both are cached.
    """
    return _normalised_affine(tuple(int(s) for s in shape), torch.device(device), dtype)
