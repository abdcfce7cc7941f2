"""TransMorph's network body: Swin encoder, convolutional skips and the upsampling decoder.

Chen et al., "TransMorph: Transformer for unsupervised medical image registration", Medical Image
Analysis 82:102615, 2022 (doi 10.1016/j.media.2022.102615). The layout and names are the official
code's (``transformer``, ``up0``-``up4``, ``c1``, ``c2``), one class for 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from regzoo.nn import channels_last, conv_nd, field_head, interpolation_mode, norm_nd

from .configs import TransMorphConfig
from .swin import SwinEncoder

__all__ = [
    "ConvNormAct",
    "DecoderBlock",
    "registration_head",
    "TransMorphTrunk",
    "default_window_size",
    "pad_to_multiple",
    "crop_to",
]


def default_window_size(ndim: int) -> tuple[int, ...]:
    """The official windows: (5, 6, 7) for 160x192x224 volumes, (8, 8) for 2D (RaFD, 256x256)."""
    return (5, 6, 7) if ndim == 3 else (8, 8)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad every spatial axis of ``(B, C, *S)`` at its end up to a multiple of ``multiple``."""
    pad = []
    for s in reversed(x.shape[2:]):
        pad += [0, (-s) % multiple]
    return F.pad(x, pad) if any(pad) else x


def crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The leading ``shape`` of the spatial axes of ``(B, C, *S)``; undoes :func:`pad_to_multiple`."""
    return x[(slice(None), slice(None), *[slice(0, s) for s in shape])]


class _InstanceNormLeakyReLU(torch.autograd.Function):
    """Instance norm without affine, then LeakyReLU, in one autograd node.

    Two things the pair of PyTorch modules does not do: the output is channels-last, the layout
    the network's convolutions run in (instance norm returns a contiguous tensor whatever its
    input), and only the output is kept for the backward pass (the modules keep the norm's input
    too): for a positive slope the normalised values follow from the output (``y`` where
    ``y > 0``, else ``y / slope``).
    ``(B, C, *S)`` to ``(B, C, *S)``; gradients equal the modules' up to float rounding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, slope: float) -> torch.Tensor:
        axes = tuple(range(2, x.ndim))
        var, mean = torch.var_mean(x, axes, correction=0, keepdim=True)
        rstd = (var + eps).rsqrt_()
        y = torch.sub(x, mean, out=torch.empty_like(x, memory_format=channels_last(x.ndim - 2)))
        F.leaky_relu_(y.mul_(rstd), slope)
        ctx.save_for_backward(y, rstd)
        ctx.slope = slope
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        y, rstd = ctx.saved_tensors
        axes = tuple(range(2, y.ndim))
        normalised = F.leaky_relu(y, 1.0 / ctx.slope)
        grad = torch.ops.aten.leaky_relu_backward(grad, y, ctx.slope, True)
        mean_grad = grad.mean(axes, keepdim=True)
        projection = (grad * normalised).mean(axes, keepdim=True)
        grad = grad.sub_(mean_grad).sub_(normalised.mul_(projection))
        return grad.mul_(rstd), None, None


class ConvNormAct(nn.Sequential):
    """Convolution without bias, instance norm (no affine), LeakyReLU(0.01): official ``Conv3dReLU``
    with ``use_batchnorm=False``; submodules ``0``, ``1``, ``2`` as in the official state dict.
    The norm and the activation run as one autograd node (:class:`_InstanceNormLeakyReLU`)."""

    def __init__(
        self, ndim: int, in_channels: int, out_channels: int, kernel_size: int = 3
    ) -> None:
        super().__init__(
            conv_nd(ndim)(
                in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
            ),
            norm_nd(ndim, "instance", out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, act = self
        return _InstanceNormLeakyReLU.apply(conv(x), norm.eps, act.negative_slope)


class DecoderBlock(nn.Module):
    """x2 (bi/tri)linear upsampling, concatenation of a skip, two :class:`ConvNormAct`.

    ``(B, in, *S)`` and skip ``(B, skip, *2S)`` to ``(B, out, *2S)``.
    """

    def __init__(
        self, ndim: int, in_channels: int, out_channels: int, skip_channels: int = 0
    ) -> None:
        super().__init__()
        self.mode = interpolation_mode(ndim)
        self.conv1 = ConvNormAct(ndim, in_channels + skip_channels, out_channels)
        self.conv2 = ConvNormAct(ndim, out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def registration_head(
    ndim: int, in_channels: int, out_channels: int | None = None
) -> nn.Sequential:
    """3x3(x3) convolution to a field, weights drawn from N(0, 1e-5) and zero bias (official init),
    in a Sequential as the official ``RegistrationHead`` (state_dict ``reg_head.0.*``)."""
    return nn.Sequential(field_head(ndim, in_channels, out_channels))


def _drop_sampling_grid(state_dict, prefix, *args) -> None:
    # Official checkpoints carry the identity grid of their spatial transformer; it depends on the
    # image size, regzoo's warp builds its own.
    state_dict.pop(prefix + "spatial_trans.grid", None)


# TransMorph's config is the one source of the network's defaults.
_DEFAULTS = TransMorphConfig()


class TransMorphTrunk(nn.Module):
    """Swin encoder + decoder of TransMorph, up to the last feature map before a head.

    Five x2 decoder blocks lead back to full resolution (``full_resolution=True``, TransMorph,
    -Bayes) or four to half resolution (-diff, -bspl). Skips: the Swin stages (``if_transskip``)
    and two convolutions of the input pair (``if_convskip``), ``c1`` on the average-pooled input
    (half resolution, ``embed_dim // 2`` channels) and ``c2`` on the full-resolution input
    (``reg_head_chan`` channels). ``c1``/``c2`` exist even without conv skips, as officially.

    Args:
        ndim: 2 or 3.
        in_channels: channels of the network input (2: moving and fixed concatenated).
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, drop_rate,
            drop_path_rate, rpe, patch_norm: the Swin encoder's (see :class:`SwinEncoder`);
            ``window_size=None`` is :func:`default_window_size`.
        if_transskip, if_convskip: skip connections from the encoder / the input convolutions.
        reg_head_chan: channels of the last full-resolution block (16).
        up3_channels: output channels of ``up3`` (default ``embed_dim // 2``).
        full_resolution: build ``up4`` and ``c2``.
        use_checkpoint: activation checkpointing of Swin and decoder blocks (memory for compute).
        mc_drop: Monte-Carlo dropout rate (TransMorph-Bayes): in the Swin blocks and as channel
            dropout on the convolutional skips, active at inference.
    Shapes:
        ``(B, in_channels, *S)`` with ``S`` divisible by :attr:`size_multiple` to
        ``(B, C, *S)`` (``C = reg_head_chan``) or ``(B, up3_channels, *S / 2)``.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = 2,
        patch_size: int = _DEFAULTS.patch_size,
        embed_dim: int = _DEFAULTS.embed_dim,
        depths: Sequence[int] = _DEFAULTS.depths,
        num_heads: Sequence[int] = _DEFAULTS.num_heads,
        window_size: Sequence[int] | None = _DEFAULTS.window_size,
        mlp_ratio: float = _DEFAULTS.mlp_ratio,
        qkv_bias: bool = _DEFAULTS.qkv_bias,
        drop_rate: float = _DEFAULTS.drop_rate,
        drop_path_rate: float = _DEFAULTS.drop_path_rate,
        rpe: bool = _DEFAULTS.rpe,
        patch_norm: bool = _DEFAULTS.patch_norm,
        if_transskip: bool = _DEFAULTS.if_transskip,
        if_convskip: bool = _DEFAULTS.if_convskip,
        reg_head_chan: int = _DEFAULTS.reg_head_chan,
        up3_channels: int | None = None,
        full_resolution: bool = True,
        use_checkpoint: bool = _DEFAULTS.use_checkpoint,
        mc_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != 4:
            raise ValueError(
                f"TransMorph's decoder expects 4 encoder stages, got depths {list(depths)}"
            )
        self.ndim = ndim
        self.if_transskip = if_transskip
        self.if_convskip = if_convskip
        self.full_resolution = full_resolution
        self.use_checkpoint = use_checkpoint
        self.mc_drop = mc_drop
        self.transformer = SwinEncoder(
            ndim=ndim,
            in_channels=in_channels,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size or default_window_size(ndim),
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            rpe=rpe,
            patch_norm=patch_norm,
            use_checkpoint=use_checkpoint,
            mc_drop=mc_drop,
        )
        e = embed_dim
        trans = if_transskip
        self.up0 = DecoderBlock(ndim, e * 8, e * 4, e * 4 if trans else 0)
        self.up1 = DecoderBlock(ndim, e * 4, e * 2, e * 2 if trans else 0)
        self.up2 = DecoderBlock(ndim, e * 2, e, e if trans else 0)
        self.up3 = DecoderBlock(ndim, e, up3_channels or e // 2, e // 2 if if_convskip else 0)
        if full_resolution:
            conv_skip = reg_head_chan if if_convskip else 0
            self.up4 = DecoderBlock(ndim, e // 2, reg_head_chan, conv_skip)
        self.c1 = ConvNormAct(ndim, in_channels, e // 2)
        if full_resolution:
            self.c2 = ConvNormAct(ndim, in_channels, reg_head_chan)
        pool = nn.AvgPool3d if ndim == 3 else nn.AvgPool2d
        self.avg_pool = pool(3, stride=2, padding=1)
        self.out_channels = reg_head_chan if full_resolution else (up3_channels or e // 2)
        self._register_load_state_dict_pre_hook(_drop_sampling_grid)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of this (32 by default); models pad to it."""
        return self.transformer.size_multiple

    def _skip_dropout(self, x: torch.Tensor) -> torch.Tensor:
        drop = F.dropout3d if self.ndim == 3 else F.dropout2d
        return drop(x, self.mc_drop, training=True) if self.mc_drop > 0 else x

    def _block(self, block: nn.Module, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, x, skip, use_reentrant=False)
        return block(x, skip)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder features of the input pair (see the class docstring for shapes)."""
        f4 = f5 = None
        # Channels-last, the layout oneDNN's convolutions take without reorder copies: on the CPU
        # a training step at 160x192x224 is about twice as fast, with less memory (BENCHMARKS.md).
        x = x.contiguous(memory_format=channels_last(self.ndim))
        if self.if_convskip:
            f4 = self._skip_dropout(self.c1(self.avg_pool(x)))
            if self.full_resolution:
                f5 = self._skip_dropout(self.c2(x))
        feats = self.transformer(x)
        f1, f2, f3 = (feats[-2], feats[-3], feats[-4]) if self.if_transskip else (None, None, None)
        y = self._block(self.up0, feats[-1], f1)
        y = self._block(self.up1, y, f2)
        y = self._block(self.up2, y, f3)
        y = self._block(self.up3, y, f4)
        if self.full_resolution:
            y = self._block(self.up4, y, f5)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
