"""Small network blocks with the spatial dimensionality as a parameter (MONAI's spirit).

Every block takes ``ndim`` (2 or 3) instead of existing once per dimensionality, and keeps the
layout ``(B, C, *S)``. The helpers return the ``torch.nn`` class for a dimensionality
(``conv_nd(3) is nn.Conv3d``), so a network written once serves 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "conv_nd",
    "conv_transpose_nd",
    "max_pool_nd",
    "avg_pool_nd",
    "channels_last",
    "norm_nd",
    "activation",
    "interpolation_mode",
    "upsample_to",
    "ConvBlock",
    "field_head",
]

_NORMS = (None, "instance", "batch")
_ACTIVATIONS = (None, "leakyrelu", "relu")


def _check_ndim(ndim: int) -> int:
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    return ndim


def conv_nd(ndim: int) -> type[nn.Module]:
    """``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` for ``ndim`` spatial dimensions."""
    return getattr(nn, f"Conv{_check_ndim(ndim)}d")


def field_head(
    ndim: int,
    in_channels: int,
    out_channels: int | None = None,
    std: float = 1e-5,
    bias: float = 0.0,
) -> nn.Module:
    """The 3x3(x3) convolution that turns features into a field ``(B, out_channels or ndim,
    *S)``, weights drawn from N(0, ``std``) and a constant ``bias``: VoxelMorph's initialisation
    (std 1e-5, bias 0), which starts a network at (nearly) the identity transform; a
    log-variance head takes std 1e-10 and bias -10 (VoxelMorph-diff)."""
    conv = conv_nd(ndim)(in_channels, out_channels or ndim, 3, padding=1)
    with torch.no_grad():
        conv.weight.normal_(0.0, std)
        conv.bias.fill_(bias)
    return conv


def conv_transpose_nd(ndim: int) -> type[nn.Module]:
    """``nn.ConvTranspose{ndim}d``."""
    return getattr(nn, f"ConvTranspose{_check_ndim(ndim)}d")


def max_pool_nd(ndim: int) -> type[nn.Module]:
    """``nn.MaxPool{ndim}d``."""
    return getattr(nn, f"MaxPool{_check_ndim(ndim)}d")


def avg_pool_nd(ndim: int) -> type[nn.Module]:
    """``nn.AvgPool{ndim}d``."""
    return getattr(nn, f"AvgPool{_check_ndim(ndim)}d")


def channels_last(ndim: int) -> torch.memory_format:
    """The channels-last memory format of ``ndim``-D feature maps (NHWC, NDHWC).

    oneDNN's own layout for convolutions on the CPU: no reorder copies, and 3D convolutions and
    their backward pass run faster there (BENCHMARKS.md); only the layout changes, never the
    values. Networks put their input in it (``x.contiguous(memory_format=channels_last(ndim))``)
    and PyTorch's convolutions, pooling and interpolation keep it.
    """
    if ndim not in (2, 3):
        raise ValueError(
            f"channels-last layouts exist for 2 and 3 spatial dimensions, got {ndim!r}"
        )
    return torch.channels_last_3d if ndim == 3 else torch.channels_last


def norm_nd(ndim: int, kind: str | None, channels: int) -> nn.Module | None:
    """A normalisation layer over ``channels``: ``"instance"`` (no affine, as PyTorch's default),
    ``"batch"``, or ``None`` for no normalisation."""
    if kind is None:
        return None
    if kind == "instance":
        return getattr(nn, f"InstanceNorm{_check_ndim(ndim)}d")(channels)
    if kind == "batch":
        return getattr(nn, f"BatchNorm{_check_ndim(ndim)}d")(channels)
    raise ValueError(f"norm must be one of {_NORMS}, got {kind!r}")


def activation(kind: str | None, negative_slope: float = 0.2) -> nn.Module | None:
    """``"leakyrelu"`` (slope 0.2, VoxelMorph's), ``"relu"`` or ``None``."""
    if kind is None:
        return None
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"act must be one of {_ACTIVATIONS}, got {kind!r}")


def interpolation_mode(ndim: int) -> str:
    """The linear interpolation mode of ``F.interpolate``: linear, bilinear or trilinear."""
    return ("linear", "bilinear", "trilinear")[_check_ndim(ndim) - 1]


def upsample_to(x: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """Resample feature maps ``(B, C, *S)`` to the spatial ``size``.

    For ``size == 2 * S`` and ``mode="nearest"`` this equals ``nn.Upsample(scale_factor=2)``; giving
    the target size instead of a factor lets odd sizes meet their skip connection exactly.
    ``mode="linear"`` picks bilinear/trilinear with ``align_corners=True``.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if mode == "linear":
        return F.interpolate(x, size=size, mode=interpolation_mode(x.dim() - 2), align_corners=True)
    return F.interpolate(x, size=size, mode=mode)


class ConvBlock(nn.Module):
    """Convolution, optional normalisation, activation: ``(B, in, *S) -> (B, out, *S / stride)``.

    The convolution is submodule ``main`` and the activation ``activation``, as in VoxelMorph's
    PyTorch ``ConvBlock``, so state_dict names match the official layout.

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels, out_channels: feature channels.
        kernel: kernel size; padding is ``kernel // 2`` ("same" for odd kernels at stride 1).
        stride: convolution stride.
        norm: ``None``, ``"instance"`` or ``"batch"`` (after the convolution).
        act: ``"leakyrelu"``, ``"relu"`` or ``None``.
        bias: whether the convolution has a bias (default: only without normalisation).
        negative_slope: the LeakyReLU's slope (VoxelMorph 0.2; DDIR's Keras code 0.3).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        norm: str | None = None,
        act: str | None = "leakyrelu",
        bias: bool | None = None,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        bias = norm is None if bias is None else bias
        self.main = conv_nd(ndim)(in_channels, out_channels, kernel, stride, kernel // 2, bias=bias)
        self.norm = norm_nd(ndim, norm, out_channels)
        self.activation = activation(act, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.main(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
