"""The official code's V-Net: a residual encoder of five levels and decoders that mirror it.

Estienne et al., Frontiers in Computational Neuroscience 2020, after Milletari et al.'s V-Net
(3DV 2016). Widths ``f, 2f, 4f, 8f, 16f``; level ``k`` holds ``1, 2, 3, 3, 3`` convolutions
(ReLU, "same" padding) whose output is added to the level's input; stride-2 2x2 convolutions
(ReLU) go down. A decoder goes up with stride-2 2x2 transposed convolutions (ReLU), concatenates
the encoder's features of the level, runs ``3, 3, 2, 1`` convolutions and adds the upsampled
features; a 1x1 convolution gives the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from regzoo.nn import conv_nd, conv_transpose_nd

__all__ = ["VNetEncoder", "VNetDecoder", "LEVELS"]

#: Levels of the V-Net: spatial sizes must be multiples of ``2 ** (LEVELS - 1)``.
LEVELS = 5
_ENCODER_CONVS = (1, 2, 3, 3, 3)
_DECODER_CONVS = (3, 3, 2, 1)


def _convs(ndim: int, channels: Sequence[int], kernel: int) -> nn.Sequential:
    """Convolutions ``channels[0] -> channels[1] -> ...``, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv_nd(ndim)(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU()]
    return nn.Sequential(*layers)


class VNetEncoder(nn.Module):
    """``(B, C, *S)`` to five feature maps, level ``k`` ``(B, f 2^k, *S / 2^k)``.

    Args:
        ndim: 2 or 3.
        in_channels: image channels.
        features: ``f``, the first level's width (official 8).
        kernel: convolution size (official run 3).
    """

    def __init__(self, ndim: int, in_channels: int, features: int = 8, kernel: int = 3) -> None:
        super().__init__()
        widths = [features * 2**k for k in range(LEVELS)]
        self.inputs = conv_nd(ndim)(in_channels, features, 1)  # no activation (official)
        self.blocks = nn.ModuleList(
            _convs(ndim, [w] * (n + 1), kernel) for w, n in zip(widths, _ENCODER_CONVS)
        )
        self.downs = nn.ModuleList(
            nn.Sequential(conv_nd(ndim)(w, 2 * w, 2, stride=2), nn.ReLU()) for w in widths[:-1]
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.inputs(image)
        levels = []
        for k, block in enumerate(self.blocks):
            x = x + block(x)
            levels.append(x)
            if k < len(self.downs):
                x = self.downs[k](x)
        return levels


class VNetDecoder(nn.Module):
    """Five feature maps (as :class:`VNetEncoder` gives) to ``(B, out_channels, *S)``, before
    any final activation.

    Args:
        ndim: 2 or 3.
        out_channels: output channels.
        features: ``f`` of the encoder.
        kernel: convolution size.
    """

    def __init__(self, ndim: int, out_channels: int, features: int = 8, kernel: int = 3) -> None:
        super().__init__()
        widths = [features * 2**k for k in range(LEVELS)][::-1]  # 16f, 8f, 4f, 2f, f
        self.ups = nn.ModuleList(
            nn.Sequential(conv_transpose_nd(ndim)(w, w // 2, 2, stride=2), nn.ReLU())
            for w in widths[:-1]
        )
        self.blocks = nn.ModuleList(
            _convs(ndim, [w] + [w // 2] * n, kernel) for w, n in zip(widths[:-1], _DECODER_CONVS)
        )
        self.out = conv_nd(ndim)(features, out_channels, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        x = levels[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(levels[:-1])):
            x = up(x)
            x = x + block(torch.cat([skip, x], 1))
        return self.out(x)
