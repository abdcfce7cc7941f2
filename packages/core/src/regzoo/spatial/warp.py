"""Warping images with a dense displacement field (label maps: :mod:`regzoo.labels`).

``warped[x] = moving[x + ddf[x]]`` with ``ddf`` in voxel units, channel i along spatial axis i, voxel
centres at integer indices (``align_corners=True``). On CPU (and wherever Triton is not usable) the
warp is ``torch.nn.functional.grid_sample``; on CUDA the fused Triton kernel of
:mod:`regzoo.spatial.triton_warp` is used when it is importable, with the same results.

The ``grid_sample`` path is one autograd node (:class:`_GridSampleWarp`): the field's gradient is the
grid's gradient scaled and transposed once, instead of three copies through autograd, and on CPU a
single volume is split along its first axis into a batch, because PyTorch's CPU grid_sample kernels
parallelise over the batch only (3D forward and backward, 2D backward): measured in BENCHMARKS.md.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .grid import normalised_grid_affine

__all__ = ["warp", "sampling_grid"]

_MODES = ("bilinear", "nearest")
_PADDINGS = ("zeros", "border")
# grid_sample's integer codes (torch.grid_sampler) and the most batch entries a volume is split into
_MODE_CODES = {"bilinear": 0, "nearest": 1}
_PADDING_CODES = {"zeros": 0, "border": 1}
_MAX_FOLDS = 4


def _check(image: torch.Tensor, ddf: torch.Tensor, mode: str, padding: str) -> int:
    ndim = ddf.shape[1]
    if ndim not in (2, 3) or ddf.dim() != ndim + 2:
        raise ValueError(
            f"ddf must be (B, ndim, *spatial) with ndim 2 or 3, got {tuple(ddf.shape)}"
        )
    if image.dim() != ddf.dim() or image.shape[2:] != ddf.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and ddf {tuple(ddf.shape)} must share batch-free spatial size"
        )
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    return ndim


def sampling_grid(ddf: torch.Tensor) -> torch.Tensor:
    """The normalised ``grid_sample`` grid ``(B, *spatial, ndim)`` of ``identity + ddf``."""
    scale, offset = normalised_grid_affine(ddf.shape[2:], ddf.device, ddf.dtype)
    return torch.addcmul(offset, ddf.movedim(1, -1).flip(-1), scale)


def warp(
    image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding: str = "zeros"
) -> torch.Tensor:
    """Warp ``image`` ``(B, C, *spatial)`` by ``ddf`` ``(B, ndim, *spatial)`` (voxel units).

    Args:
        image: float tensor; a batch of 1 broadcasts against the field's batch.
        ddf: displacement in voxels; ``warped[x] = image[x + ddf[x]]``.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding: ``"zeros"`` or ``"border"`` for samples outside the image.

    Returns:
        The warped image, ``(B, C, *spatial)``, differentiable in both inputs (bilinear).
    """
    _check(image, ddf, mode, padding)
    if image.is_cuda and image.shape[0] in (1, ddf.shape[0]):
        from . import triton_warp

        if triton_warp.available():
            return triton_warp.warp(image, ddf, mode=mode, padding=padding)
    if image.shape[0] != ddf.shape[0] and image.shape[0] == 1:
        image = image.expand(ddf.shape[0], *image.shape[1:])
    return _GridSampleWarp.apply(image, ddf, mode, padding)


def _folds(image: torch.Tensor, ddf: torch.Tensor) -> int:
    """How many batch entries a single CPU volume is split into (along its first spatial axis)."""
    if image.device.type != "cpu" or ddf.shape[0] != 1 or image.shape[0] != 1:
        return 1
    first = ddf.shape[2]
    for k in range(min(torch.get_num_threads(), _MAX_FOLDS), 1, -1):
        if first % k == 0:
            return k
    return 1


class _GridSampleWarp(torch.autograd.Function):
    """``grid_sample(image, sampling_grid(ddf))`` as one autograd node (see the module docstring).

    Forward values are those of ``F.grid_sample`` bit for bit; gradients equal up to the order of
    float sums (the split volume's image gradient is summed over its parts).
    """

    @staticmethod
    def forward(ctx, image, ddf, mode, padding):  # type: ignore[override]
        grid = sampling_grid(ddf)
        folds = _folds(image, ddf)
        channels, spatial = image.shape[1], ddf.shape[2:]
        if folds > 1:
            image = image.expand(folds, *image.shape[1:])
            grid = grid.view(folds, spatial[0] // folds, *spatial[1:], len(spatial))
        out = torch.grid_sampler(image, grid, _MODE_CODES[mode], _PADDING_CODES[padding], True)
        if folds > 1:
            out = out.transpose(0, 1).reshape(1, channels, *spatial)
        ctx.save_for_backward(image, grid)
        ctx.folds, ctx.codes = folds, (_MODE_CODES[mode], _PADDING_CODES[padding])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        image, grid = ctx.saved_tensors
        ndim, folds, channels, spatial = grid.shape[-1], ctx.folds, image.shape[1], grad.shape[2:]
        if folds > 1:
            grad = grad.reshape(channels, folds, spatial[0] // folds, *spatial[1:]).transpose(0, 1)
        backward = (
            torch.ops.aten.grid_sampler_3d_backward
            if ndim == 3
            else torch.ops.aten.grid_sampler_2d_backward
        )
        need = list(ctx.needs_input_grad[:2])
        grad_image, grad_grid = backward(grad.contiguous(), image, grid, *ctx.codes, True, need)
        grad_ddf = None
        if need[0] and folds > 1:
            grad_image = grad_image.sum(0, keepdim=True)
        if need[1]:
            grad_grid = grad_grid.reshape(-1, *spatial, ndim)
            scale, _ = normalised_grid_affine(spatial, grid.device, grid.dtype)
            grad_ddf = grad_grid.new_empty((grad_grid.shape[0], ndim, *spatial))
            for axis in range(ndim):  # grid channels are (x, y, z): reversed axes
                torch.mul(
                    grad_grid[..., ndim - 1 - axis], scale[ndim - 1 - axis], out=grad_ddf[:, axis]
                )
        return (grad_image if need[0] else None), grad_ddf, None, None
