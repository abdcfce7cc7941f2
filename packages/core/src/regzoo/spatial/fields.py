"""Operations on displacement fields: integration, composition, resizing, inversion, Jacobian.

All fields are ``(B, ndim, *spatial)`` in voxel units (docs/conventions.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .warp import warp

__all__ = [
    "integrate_velocity",
    "compose",
    "resize_field",
    "resize_image",
    "invert",
    "jacobian_determinant",
    "jacobian_matrix",
]


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """exp(v) by scaling and squaring (Arsigny et al. 2006; VoxelMorph's ``VecInt``).

    ``v`` is divided by ``2**steps`` and composed with itself ``steps`` times:
    ``u <- u + warp(u, u)``. ``steps=0`` returns ``v`` unchanged (a plain displacement).

    Args:
        velocity: stationary velocity field ``(B, ndim, *spatial)``, voxel units.
        steps: number of squarings (7 by default, as VoxelMorph).
    Returns:
        The displacement of the diffeomorphism, same shape.
    """
    if steps <= 0:
        return velocity
    u = velocity / (2**steps)
    for _ in range(steps):
        u = u + warp(u, u)
    return u


def compose(first: torch.Tensor, second: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """The field that applies ``first`` and then ``second`` to the already-warped image.

    ``warp(warp(m, first), second) ~= warp(m, compose(first, second))`` with
    ``compose = second + warp(first, second)`` (RCN aggregates cascades this way). ``padding``
    (``"zeros"`` or ``"border"``) is how ``first`` is sampled outside the image: Dual-PRNet
    composes its pyramid's fields with ``"border"``.
    """
    return second + warp(first, second, padding=padding)


def resize_field(
    ddf: torch.Tensor, size: Sequence[int] | None = None, *, factor: float | None = None
) -> torch.Tensor:
    """Resample a field ``(B, ndim, *S)`` (linearly, ``align_corners=True``) and rescale its values
    into the new voxel units.

    - ``size`` only: axis i's values scale by ``(size_i - 1) / (old_i - 1)``, the ratio of the two
      grids when voxel centres sit at integer indices.
    - ``factor`` (VoxelMorph's ``ResizeTransform``, e.g. ``0.5`` before and ``2`` after
      integrating a velocity at half resolution): the values scale by exactly ``factor`` and the
      field is interpolated to ``floor(old_i * factor)`` voxels, as
      ``F.interpolate(field, scale_factor=factor, align_corners=True)``; to ``size`` when it is
      given too. The two rules agree only where ``(size_i - 1) / (old_i - 1) == factor``.

    Raises:
        ValueError: neither ``size`` nor ``factor``, or ``factor`` leaves an axis no voxel.
    """
    old = tuple(ddf.shape[2:])
    if size is None:
        if factor is None:
            raise ValueError("resize_field: give size or factor")
        size = tuple(int(n * factor) for n in old)  # what interpolate(scale_factor=) gives
        if min(size) < 1:
            raise ValueError(f"resize_field: factor {factor} leaves no voxel of size {old}")
    size = tuple(int(s) for s in size)
    if factor is None:
        scales = [(n - 1) / max(o - 1, 1) for n, o in zip(size, old)]
    else:
        scales = [factor] * len(old)
    if size == old and all(s == 1 for s in scales):
        return ddf
    mode = "bilinear" if len(old) == 2 else "trilinear"
    # With align_corners=True the sampling positions depend on the sizes alone, so a size equals
    # the scale_factor it comes from.
    out = ddf if size == old else F.interpolate(ddf, size=size, mode=mode, align_corners=True)
    factors = torch.tensor(scales, device=ddf.device, dtype=ddf.dtype)
    return out * factors.view(1, -1, *([1] * len(size)))


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``image`` ``(B, C, *S)`` resampled to ``size`` linearly with corners aligned (the grids of
    :func:`resize_field`), box-smoothed first over about the voxels each new voxel covers when it
    shrinks, so that no detail aliases (an image pyramid's levels)."""
    size = tuple(int(n) for n in size)
    if size == tuple(image.shape[2:]):
        return image
    half = [max(0, round(s / n) // 2) for s, n in zip(image.shape[2:], size)]
    if any(half):
        pool = F.avg_pool2d if image.dim() == 4 else F.avg_pool3d
        image = pool(image, [2 * h + 1 for h in half], 1, half, count_include_pad=False)
    mode = "bilinear" if image.dim() == 4 else "trilinear"
    return F.interpolate(image, size=size, mode=mode, align_corners=True)


def invert(ddf: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Approximate inverse by fixed-point iteration ``v <- -warp(u, v)`` (Chen et al. 2008).

    Converges for fields whose Jacobian stays well away from zero; for an SVF prefer
    ``integrate_velocity(-v)``.
    """
    inv = -ddf
    for _ in range(iterations):
        inv = -warp(ddf, inv)
    return inv


def _central_gradient(ddf: torch.Tensor) -> torch.Tensor:
    """d u_i / d x_j by central differences, zero-padded at the border: ``(B, ndim, ndim, *S)``."""
    ndim = ddf.shape[1]
    grads = []
    for axis in range(ndim):
        dim = axis + 2
        padded = F.pad(ddf, [0, 0] * (ndim - 1 - axis) + [1, 1])
        hi = padded.narrow(dim, 2, ddf.shape[dim])
        lo = padded.narrow(dim, 0, ddf.shape[dim])
        grads.append((hi - lo) * 0.5)
    return torch.stack(grads, dim=2)


def jacobian_matrix(ddf: torch.Tensor) -> torch.Tensor:
    """The Jacobian ``I + grad u`` of ``x -> x + u(x)``, ``(B, ndim, ndim, *spatial)``.

    Central differences with zero padding outside the image, as the Learn2Reg scorer computes them.
    """
    ndim = ddf.shape[1]
    eye = torch.eye(ndim, device=ddf.device, dtype=ddf.dtype).view(1, ndim, ndim, *([1] * ndim))
    return _central_gradient(ddf) + eye


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) per voxel, ``(B, *spatial)`` (central differences; see :func:`jacobian_matrix`)."""
    jac = jacobian_matrix(ddf)
    if ddf.shape[1] == 2:
        return jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    return (
        jac[:, 0, 0] * (jac[:, 1, 1] * jac[:, 2, 2] - jac[:, 1, 2] * jac[:, 2, 1])
        - jac[:, 0, 1] * (jac[:, 1, 0] * jac[:, 2, 2] - jac[:, 1, 2] * jac[:, 2, 0])
        + jac[:, 0, 2] * (jac[:, 1, 0] * jac[:, 2, 1] - jac[:, 1, 1] * jac[:, 2, 0])
    )
