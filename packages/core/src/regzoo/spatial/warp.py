"""Warping images and label maps with a dense displacement field (METHODS.md B1).

``warped[x] = moving[x + ddf[x]]`` with ``ddf`` in voxel units, channel i along spatial axis i, voxel
centres at integer indices (``align_corners=True``). On CPU (and wherever Triton is not usable) the
warp is ``torch.nn.functional.grid_sample``; on CUDA the fused Triton kernel of
:mod:`regzoo.spatial.triton_warp` is used when it is importable, with the same results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grid import normalised_grid_affine

__all__ = ["warp", "warp_labels", "one_hot"]

_MODES = ("bilinear", "nearest")
_PADDINGS = ("zeros", "border")


def _check(image: torch.Tensor, ddf: torch.Tensor, mode: str, padding: str) -> int:
    ndim = ddf.shape[1]
    if ndim not in (2, 3) or ddf.dim() != ndim + 2:
        raise ValueError(f"ddf must be (B, ndim, *spatial) with ndim 2 or 3, got {tuple(ddf.shape)}")
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
    if image.shape[0] != ddf.shape[0] and image.shape[0] == 1:
        image = image.expand(ddf.shape[0], *image.shape[1:])
    if image.is_cuda:
        from . import triton_warp

        if triton_warp.available():
            return triton_warp.warp(image, ddf, mode=mode, padding=padding)
    return F.grid_sample(
        image, sampling_grid(ddf), mode=mode, padding_mode=padding, align_corners=True
    )


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels to ``(B, num_classes, *spatial)`` one-hot maps."""
    if labels.dim() < 3 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (B, 1, *spatial), got {tuple(labels.shape)}")
    return F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).to(dtype)


def warp_labels(
    labels: torch.Tensor, ddf: torch.Tensor, num_classes: int | None = None, mode: str = "nearest"
) -> torch.Tensor:
    """Warp an integer label map ``(B, 1, *spatial)``, never interpolating label values.

    ``mode="nearest"`` samples the nearest label. ``mode="linear"`` warps the one-hot maps linearly
    and returns the arg-max (TransMorph's evaluation); both return ``(B, 1, *spatial)`` int64.
    """
    if mode == "nearest":
        return warp(labels.float(), ddf, mode="nearest").round().long()
    if mode != "linear":
        raise ValueError(f"label warp mode must be 'nearest' or 'linear', got {mode!r}")
    k = int(num_classes or labels.max().item() + 1)
    return warp(one_hot(labels, k), ddf).argmax(1, keepdim=True)
