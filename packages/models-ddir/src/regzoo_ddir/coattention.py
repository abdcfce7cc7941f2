"""The co-attention segmentation network of SDDIR (Chen, Xia, Ravikumar, Frangi, "Joint
segmentation and discontinuity-preserving deformable registration: application to cardiac cine-MR
images", arXiv:2211.13828, 2022; after CAR-Net's co-attention block).

No code was released. regzoo's network: one encoder (shared weights) for the moving and the fixed
image, a co-attention block joining their coarsest features, one decoder (shared) with skip
connections per image, and a 1x1 head to class logits. Widths are ours (the paper gives none).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from regzoo.nn import ConvBlock, channels_last, conv_nd, max_pool_nd, upsample_to

__all__ = ["CoAttention", "CoAttentionSegmenter"]


class CoAttention(nn.Module):
    """Co-attention between fixed features ``y`` and moving features ``x``, ``(B, C, *s)`` each.

    ``f``, ``g``, ``h1``, ``h2`` are 1x1 convolutions. The affinity ``A = f(y)^T g(x)``
    ``(B, N_y, N_x)`` over positions; each fixed position gathers ``h1(x)`` weighted by the softmax
    of its row (over moving positions) and adds it to ``y``; symmetrically each moving position
    gathers ``h2(y)`` by the softmax of its column and adds it to ``x``.

    Args:
        ndim: 2 or 3.
        channels: ``C``.
        key_channels: channels of ``f`` and ``g`` (default ``C // 2``, at least 1).
    """

    def __init__(self, ndim: int, channels: int, key_channels: int | None = None) -> None:
        super().__init__()
        keys = key_channels or max(1, channels // 2)
        conv = conv_nd(ndim)
        self.f, self.g = conv(channels, keys, 1), conv(channels, keys, 1)
        self.h1, self.h2 = conv(channels, channels, 1), conv(channels, channels, 1)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y + attended moving features, x + attended fixed features)``, shapes unchanged."""
        affinity = torch.einsum("bkn,bkm->bnm", self.f(y).flatten(2), self.g(x).flatten(2))
        to_fixed = torch.einsum("bnm,bcm->bcn", affinity.softmax(2), self.h1(x).flatten(2))
        to_moving = torch.einsum("bnm,bcn->bcm", affinity.softmax(1), self.h2(y).flatten(2))
        return y + to_fixed.view_as(y), x + to_moving.view_as(x)


class CoAttentionSegmenter(nn.Module):
    """Segments two images jointly: ``(B, C, *S)`` twice to logits ``(B, num_classes, *S)`` twice.

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image.
        num_classes: label classes, background included.
        features: encoder widths, one level each (2x max pooling between levels); the decoder
            mirrors them.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        num_classes: int,
        features: Sequence[int] = (16, 32, 32, 64),
    ) -> None:
        super().__init__()
        features = list(features)
        self.encoder = nn.ModuleList()
        prev = in_channels
        for nf in features:
            self.encoder.append(ConvBlock(ndim, prev, nf))
            prev = nf
        self.pool = max_pool_nd(ndim)(2, ceil_mode=True)
        self.attention = CoAttention(ndim, prev)
        self.decoder = nn.ModuleList()
        for skip in reversed(features[:-1]):
            self.decoder.append(ConvBlock(ndim, prev + skip, skip))
            prev = skip
        self.head = conv_nd(ndim)(prev, num_classes, 1)
        # channels-last convolutions run faster on the CPU, as in core's VoxelMorph U-Net
        self.memory_format = channels_last(ndim)
        self.to(memory_format=self.memory_format)

    def _encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        skips, x = [], image
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        return skips

    def _decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            x = block(torch.cat([upsample_to(x, skip.shape[2:]), skip], 1))
        return self.head(x)

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of ``moving`` and ``fixed``, ``(B, num_classes, *S)`` each."""
        m = self._encode(moving.contiguous(memory_format=self.memory_format))
        f = self._encode(fixed.contiguous(memory_format=self.memory_format))
        f[-1], m[-1] = self.attention(f[-1], m[-1])
        return self._decode(m), self._decode(f)
