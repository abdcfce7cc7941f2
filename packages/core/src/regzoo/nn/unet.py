"""The VoxelMorph U-Net (Balakrishnan et al., IEEE TMI 38(8):1788-1800, 2019).

The layout is that of the official PyTorch ``voxelmorph`` ``Unet`` (the TensorFlow/paper version
downsamples with stride-2 convolutions instead; regzoo follows the PyTorch one):

- encoder: per level ``nb_conv_per_level`` 3x3(x3) convolutions + LeakyReLU(0.2) at stride 1,
  the output kept for the skip connection, then 2x max pooling;
- decoder: per level convolutions, nearest-neighbour upsampling, concatenation with the encoder
  output of that resolution;
- the decoder widths beyond the encoder's count are extra convolutions at the output resolution.

With the defaults (encoder ``[16, 32, 32, 32]``, decoder ``[32, 32, 32, 32, 32, 16, 16]``) the
parameter names and counts equal the official ``VxmDense.unet_model`` (``encoder.0.0.main.weight``,
...). One change makes any input size work where the official network needs multiples of 16:
pooling rounds up (``ceil_mode``) and upsampling goes to the skip connection's size. For sizes that
are multiples of 16 both are exactly the official operations.
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
        self.out_stride = 2 if half_res else 1
        self.pool = max_pool_nd(ndim)(2, ceil_mode=True)

        prev = in_channels
        skips = [in_channels]
        self.encoder = nn.ModuleList()
        for level in range(levels):
            convs = nn.ModuleList()
            for nf in enc_features[level * nb_conv_per_level : (level + 1) * nb_conv_per_level]:
                convs.append(ConvBlock(ndim, prev, nf))
                prev = nf
            self.encoder.append(convs)
            skips.append(prev)

        self.decoder = nn.ModuleList()
        for level in range(levels):
            convs = nn.ModuleList()
            for nf in dec_features[level * nb_conv_per_level : (level + 1) * nb_conv_per_level]:
                convs.append(ConvBlock(ndim, prev, nf))
                prev = nf
            self.decoder.append(convs)
            if self._upsamples(level):
                prev += skips[levels - level]

        self.remaining = nn.ModuleList()
        for nf in dec_features[len(enc_features) :]:
            self.remaining.append(ConvBlock(ndim, prev, nf))
            prev = nf
        self.out_channels = prev
        # Convolutions and their backward (most of a training step) run 20-30% faster on
        # channels-last (NHWC / NDHWC) weights and activations with oneDNN on the CPU (measured:
        # BENCHMARKS.md, docs/decisions.md); the values and the state_dict are the same.
        self.memory_format = channels_last(ndim)
        self.to(memory_format=self.memory_format)

    def _upsamples(self, level: int) -> bool:
        return not self.half_res or level < self.levels - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, in_channels, *S)`` to features ``(B, out_channels, *S)`` (or at half
        resolution with ``half_res``)."""
        x = x.contiguous(memory_format=self.memory_format)
        history = []
        for convs in self.encoder:
            for conv in convs:
                x = conv(x)
            history.append(x)
            x = self.pool(x)
        for level, convs in enumerate(self.decoder):
            for conv in convs:
                x = conv(x)
            if self._upsamples(level):
                skip = history.pop()
                x = torch.cat([upsample_to(x, skip.shape[2:]), skip], dim=1)
        for conv in self.remaining:
            x = conv(x)
        return x
