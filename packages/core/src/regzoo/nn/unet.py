"""The VoxelMorph U-Net (Balakrishnan et al., IEEE TMI 38(8):1788-1800, 2019).

The layout is that of the official PyTorch ``voxelmorph`` ``Unet`` (the TensorFlow/paper version
downsamples with stride-2 convolutions instead; regzoo follows the PyTorch one):

- encoder: per level ``nb_conv_per_level`` 3x3(x3) convolutions + LeakyReLU (slope 0.2) at stride 1,
  the output kept for the skip connection, then 2x max pooling;
- decoder: per level convolutions, nearest-neighbour upsampling, concatenation with the encoder
  output of that resolution;
- the decoder widths beyond the encoder's count are extra convolutions at the output resolution.

With the defaults (encoder ``[16, 32, 32, 32]``, decoder ``[32, 32, 32, 32, 32, 16, 16]``) the
parameter names and counts equal the official ``VxmDense.unet_model`` (``encoder.0.0.main.weight``,
...). One change makes any input size work where the official network needs multiples of 16:
pooling rounds up (``ceil_mode``) and upsampling goes to the skip connection's size. For sizes that
are multiples of 16 both are exactly the official operations.

``strided=True`` builds the TensorFlow/paper layout instead (the Keras ``unet_core`` of the
MICCAI 2018 and CVPR 2018 code, which DDIR and other Keras methods reuse): one stride-2 convolution
per encoder level, skips from the input and every encoder level but the last, the last decoder
level and the next width at half resolution, then (full resolution only) an upsampling,
concatenation with the input and the remaining widths. Its skip at half resolution has the first
encoder width (16), not the second (32), so its parameter counts are the Keras ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import ConvBlock, channels_last, max_pool_nd, upsample_to

__all__ = ["VxmUnet"]


class VxmUnet(nn.Module):
    """VoxelMorph U-Net: ``(B, in_channels, *S) -> (B, out_channels, *S)``.

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels: input channels (2 for a concatenated moving/fixed pair of grey images).
        enc_features: encoder widths, ``nb_conv_per_level`` entries per level.
        dec_features: decoder widths: the first ``len(enc_features)`` are the decoder levels, the
            rest extra convolutions at the output resolution.
        nb_conv_per_level: convolutions per level.
        half_res: skip the last upsampling, so the output is at half resolution
            (``ceil(S / 2)``), as VoxelMorph-diff's MICCAI 2018 network.
        negative_slope: slope of the LeakyReLUs (VoxelMorph 0.2).
        strided: the TensorFlow/paper layout (module docstring); needs ``nb_conv_per_level`` 1
            and at least ``len(enc_features) + 1`` decoder widths (``+ 2`` at full resolution).

    Attributes:
        out_channels: channels of the output (the last decoder width).
        out_stride: 1, or 2 with ``half_res``.
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 2,
        enc_features: Sequence[int] = (16, 32, 32, 32),
        dec_features: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        nb_conv_per_level: int = 1,
        half_res: bool = False,
        negative_slope: float = 0.2,
        strided: bool = False,
    ) -> None:
        super().__init__()
        enc_features, dec_features = list(enc_features), list(dec_features)
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        if not enc_features or len(enc_features) % nb_conv_per_level:
            raise ValueError(
                f"enc_features ({len(enc_features)} entries) must be a positive multiple of "
                f"nb_conv_per_level ({nb_conv_per_level})"
            )
        if len(dec_features) < len(enc_features):
            raise ValueError(
                f"dec_features needs at least {len(enc_features)} entries (one per encoder "
                f"convolution), got {len(dec_features)}"
            )
        levels = len(enc_features) // nb_conv_per_level
        self.levels = levels
        self.half_res = half_res
        self.strided = strided
        self.out_stride = 2 if half_res else 1
        self.pool = max_pool_nd(ndim)(2, ceil_mode=True)

        def block(cin: int, cout: int, stride: int = 1) -> ConvBlock:
            return ConvBlock(ndim, cin, cout, stride=stride, negative_slope=negative_slope)

        if strided:
            needed = levels + (1 if half_res else 2)
            if nb_conv_per_level != 1 or len(dec_features) < needed:
                raise ValueError(
                    f"strided needs nb_conv_per_level 1 and at least {needed} dec_features, got "
                    f"{nb_conv_per_level} and {len(dec_features)}"
                )
            if half_res:
                dec_features = dec_features[:needed]
        prev = in_channels
        skips = [in_channels]
        self.encoder = nn.ModuleList()
        for level in range(levels):
            convs = nn.ModuleList()
            for nf in enc_features[level * nb_conv_per_level : (level + 1) * nb_conv_per_level]:
                convs.append(block(prev, nf, 2 if strided else 1))
                prev = nf
            self.encoder.append(convs)
            skips.append(prev)
        if strided:
            skips.pop()  # the bottleneck is no skip

        self.decoder = nn.ModuleList()
        for level in range(levels):
            convs = nn.ModuleList()
            for nf in dec_features[level * nb_conv_per_level : (level + 1) * nb_conv_per_level]:
                convs.append(block(prev, nf))
                prev = nf
            self.decoder.append(convs)
            if self._upsamples(level):
                prev += skips[levels - level - (1 if strided else 0)]

        self.remaining = nn.ModuleList()
        for i, nf in enumerate(dec_features[len(enc_features) :]):
            if strided and i == 1:
                prev += in_channels  # upsampled to full size and joined with the input
            self.remaining.append(block(prev, nf))
            prev = nf
        self.out_channels = prev
        # Convolutions and their backward (most of a training step) run 20-30% faster on
        # channels-last (NHWC / NDHWC) weights and activations with oneDNN on the CPU (measured:
        # BENCHMARKS.md, docs/decisions.md); the values and the state_dict are the same.
        self.memory_format = channels_last(ndim)
        self.to(memory_format=self.memory_format)

    def _upsamples(self, level: int) -> bool:
        if self.strided:
            return level < self.levels - 1
        return not self.half_res or level < self.levels - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, in_channels, *S)`` to features ``(B, out_channels, *S)`` (or at half
        resolution with ``half_res``)."""
        x = x.contiguous(memory_format=self.memory_format)
        history = []
        for convs in self.encoder:
            if not self.strided:
                for conv in convs:
                    x = conv(x)
                history.append(x)
                x = self.pool(x)
            else:
                history.append(x)
                for conv in convs:
                    x = conv(x)
        for level, convs in enumerate(self.decoder):
            for conv in convs:
                x = conv(x)
            if self._upsamples(level):
                skip = history.pop()
                x = torch.cat([upsample_to(x, skip.shape[2:]), skip], dim=1)
        for i, conv in enumerate(self.remaining):
            if self.strided and i == 1:
                skip = history.pop()
                x = torch.cat([upsample_to(x, skip.shape[2:]), skip], dim=1)
            x = conv(x)
        return x
