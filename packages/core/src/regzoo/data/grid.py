"""Resampling between voxel grids in physical space.

A *grid* is a spatial shape and a 4x4 affine from voxel indices to RAS millimetres (nibabel's
convention). For a 2D grid the affine's first two columns are the two array axes (the third
column, the through-plane axis, only completes the matrix). Resampling samples a source array at
the physical positions of the destination voxels: ``q = A_src^-1 A_dst p``; voxel centres are at
integer indices, as everywhere in regzoo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "resample",
    "same_grid",
    "resample_field",
    "grid_spacing",
    "rescaled_grid",
    "padded_grid",
]


def grid_spacing(affine: np.ndarray, ndim: int) -> np.ndarray:
    """Voxel size (mm) along the ``ndim`` array axes: the norms of the affine's columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :ndim], axis=0)


def rescaled_grid(
    shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]
) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid covering the same field of view with voxel size ``spacing`` (mm per axis).

    The new shape is ``round(size * old / new)``; the first and last voxel centres keep the
    field of view's centre, directions are unchanged.
    """
    ndim = len(shape)
    affine = np.asarray(affine, dtype=np.float64)
    old = grid_spacing(affine, ndim)
    new = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,))
    new_shape = tuple(max(1, int(round(n * o / s))) for n, o, s in zip(shape, old, new))
    out = affine.copy()
    out[:3, :ndim] = affine[:3, :ndim] / old * new
    # keep the centre of the field of view: c = A (n - 1) / 2 in both grids
    centre_old = affine[:3, :ndim] @ ((np.asarray(shape) - 1) / 2)
    centre_new = out[:3, :ndim] @ ((np.asarray(new_shape) - 1) / 2)
    out[:3, 3] = affine[:3, 3] + centre_old - centre_new
    return new_shape, out


def padded_grid(
    shape: Sequence[int],
    affine: np.ndarray,
    size: Sequence[int] | None = None,
    multiple: int | None = None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid centred on the old one: ``size`` (crop or pad) or the next multiple of ``multiple``.

    Padding puts ``floor(diff / 2)`` voxels before the first one and cropping removes
    ``n // 2 - size // 2`` there (MONAI's ``SpatialPad``/``CenterSpatialCrop``, which
    :mod:`regzoo.data.preprocess` runs on the arrays); the origin shifts by that many voxels, the
    directions and spacing are unchanged.
    """
    ndim = len(shape)
    if size is not None:
        target = tuple(int(s) for s in np.broadcast_to(np.asarray(size), (ndim,)))
    elif multiple:
        target = tuple(int(-(-n // multiple) * multiple) for n in shape)
    else:
        return tuple(shape), np.asarray(affine, dtype=np.float64)
    before = np.array(
        [(t - n) // 2 if t >= n else t // 2 - n // 2 for t, n in zip(target, shape)],
        dtype=np.float64,
    )
    out = np.asarray(affine, dtype=np.float64).copy()
    out[:3, 3] = out[:3, 3] - out[:3, :ndim] @ before
    return target, out


def _voxel_map(src_affine: np.ndarray, dst_affine: np.ndarray, ndim: int) -> np.ndarray:
    """``(ndim, ndim + 1)``: destination voxel -> source voxel."""
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(
        dst_affine, dtype=np.float64
    )
    return m[:ndim][:, list(range(ndim)) + [3]]


def _integer_shift(m: np.ndarray, ndim: int) -> np.ndarray | None:
    """The integer offset if ``m`` is a pure integer translation, else None."""
    if not np.allclose(m[:, :ndim], np.eye(ndim), atol=1e-6):
        return None
    shift = m[:, ndim]
    return np.round(shift).astype(int) if np.allclose(shift, np.round(shift), atol=1e-4) else None


def _shift_copy(
    array: torch.Tensor, shift: np.ndarray, shape: Sequence[int], fill: str
) -> torch.Tensor:
    """``out[p] = array[p + shift]`` by indexing (exact); outside: zeros, or the border value."""
    ndim = len(shape)
    index, valid = [], None
    for axis in range(ndim):
        i = torch.arange(int(shape[axis])) + int(shift[axis])
        inside = (i >= 0) & (i < array.shape[axis + 1])
        view = [1] * ndim
        view[axis] = -1
        index.append(i.clamp(0, array.shape[axis + 1] - 1).view(view))
        inside = inside.view(view)
        valid = inside if valid is None else valid & inside
    out = array[(slice(None), *index)]
    if fill == "zeros":
        out = torch.where(valid, out, torch.zeros((), dtype=out.dtype))
    return out


def same_grid(
    shape: Sequence[int], affine: np.ndarray, other_shape: Sequence[int], other_affine: np.ndarray
) -> bool:
    """Whether two grids have one shape and the same voxel positions (to 1e-6 voxel)."""
    ndim = len(shape)
    if tuple(shape) != tuple(other_shape):
        return False
    m = _voxel_map(affine, other_affine, ndim)
    return bool(np.allclose(m, np.eye(ndim, ndim + 1), atol=1e-6))


def resample(
    array: torch.Tensor,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    mode: str = "bilinear",
    padding: str = "zeros",
    ddf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample ``array`` ``(C, *S_src)`` from its grid onto ``(dst_shape, dst_affine)``.

    Args:
        array: channels first; float for ``"bilinear"``, any dtype for ``"nearest"`` (integer
            label maps keep their dtype).
        src_affine, dst_affine: 4x4 voxel-to-mm affines of the two grids.
        dst_shape: spatial size of the destination grid.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding: ``"zeros"`` or ``"border"`` outside the source.
        ddf: optional displacement ``(ndim, *dst_shape)`` in destination voxels: the source is
            sampled at the physical position of ``p + ddf[p]`` (a warp in physical space, as ITK
            applies a displacement field), not at ``p``.

    The same grid gives ``array`` itself and a pure integer shift (crop or pad) is done by
    copying, exactly.
    """
    ndim = len(dst_shape)
    m = _voxel_map(src_affine, dst_affine, ndim)
    if ddf is None:
        if same_grid(array.shape[1:], src_affine, dst_shape, dst_affine):
            return array
        shift = _integer_shift(m, ndim)
        if shift is not None:
            return _shift_copy(array, shift, dst_shape, padding)
    dtype = array.dtype
    axes = [torch.arange(n, dtype=torch.float64) for n in dst_shape]
    p = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*S, ndim)
    if ddf is not None:
        p = p + torch.movedim(torch.as_tensor(ddf, dtype=torch.float64), 0, -1)
    mt = torch.from_numpy(m)
    q = p @ mt[:, :ndim].T + mt[:, ndim]
    src = torch.tensor(array.shape[1:], dtype=torch.float64)
    g = (2 * q / (src - 1).clamp(min=1) - 1).flip(-1).to(torch.float32)
    sample = F.grid_sample(
        array[None].float(), g[None], mode=mode, padding_mode=padding, align_corners=True
    )[0]
    return sample.round().to(dtype) if not dtype.is_floating_point else sample.to(dtype)


def resample_field(
    ddf: torch.Tensor,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
) -> torch.Tensor:
    """A displacement field ``(ndim, *S_src)`` (source voxels) on another grid, destination voxels.

    The field is taken to millimetres, resampled linearly (border values outside) and expressed
    in the destination grid's voxels, so that a point keeps its physical displacement.
    """
    ndim = len(dst_shape)
    src = np.asarray(src_affine, dtype=np.float64)[:3, :ndim]
    dst = np.asarray(dst_affine, dtype=np.float64)[:3, :ndim]
    field = torch.as_tensor(ddf, dtype=torch.float64)
    mm = torch.einsum("ij,j...->i...", torch.from_numpy(src), field)
    mm = resample(mm, src_affine, dst_shape, dst_affine, "bilinear", "border")
    voxels = torch.einsum("ij,j...->i...", torch.from_numpy(np.linalg.pinv(dst)), mm.double())
    return voxels.to(torch.as_tensor(ddf).dtype)
