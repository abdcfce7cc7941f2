"""The four networks of JSSR (Liu et al., ECCV 2020, arXiv 2005.12209), 2D and 3D.

- :class:`Generator` G(x, y): a U-Net whose encoder and skip connections see only the moving image
  x, conditioned on the fixed image y through a spatially pooled code of y's features. The skips
  from x carry x's geometry to the output and the pooled code carries none of y's, which keeps G
  from the trivial solution G(x, y) = y (with the registration the identity) that the paper
  warns of.
- :class:`PatchDiscriminator` D: strided 4x4 convolutions, LeakyReLU 0.2 and
  instance norm, one real/fake logit per patch (pix2pix's PatchGAN, Isola et al. 2017).
- :class:`Register` Phi: a registered backbone (the VoxelMorph U-Net by default) on the
  concatenated pair, a 3x3 flow head initialised near zero (VoxelMorph's), and a registered
  spatial transformer (``dense`` by default) giving tau.
- :class:`Segmentor` S: a registered backbone with a 1x1 head giving per-class logits.

Images are ``(B, C, *S)`` with ``S = (H, W)`` or ``(D, H, W)``; fields ``(B, ndim, *S)`` in voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regzoo import ConfigError, build
from regzoo.nn.blocks import (
    ConvBlock,
    activation,
    conv_nd,
    field_head,
    max_pool_nd,
    norm_nd,
    upsample_to,
)

__all__ = ["Generator", "PatchDiscriminator", "Register", "Segmentor"]


class Generator(nn.Module):
    """G(x, y): synthesise the moving image x in the fixed image y's modality.

    The x path is a U-Net (two 3x3 convolutions per level, instance norm, LeakyReLU 0.2, max
    pooling, nearest upsampling, skip connections from x's encoder). A second encoder of the same
    widths reads y and is averaged over space into a code that is broadcast and concatenated at
    the bottleneck: y sets the output's intensities (its contrast) but, pooled, carries none of
    its geometry, so G cannot fall into copying y.

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels: channels of x, y and the output.
        features: encoder widths per level; the decoder mirrors them.
        norm: ``"instance"``, ``"batch"`` or ``None``.
        output: ``"sigmoid"`` (images in [0, 1], regzoo's synthetic data and normalised scans)
            or ``"linear"``. A bounded output matters: trained jointly with Phi through the L1
            term, an unbounded G learned to emit extreme values that Phi then smeared into a
            copy of y (measured on the quick preset).

    Shapes:
        ``x, y (B, in_channels, *S) -> (B, in_channels, *S)``.
    """

    def __init__(
        self,
        ndim: int = 3,
        in_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: str | None = "instance",
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        if output not in ("sigmoid", "linear"):
            raise ConfigError(f"generator output must be 'sigmoid' or 'linear', got {output!r}")
        features = list(features)
        self.output = output
        self.pool = max_pool_nd(ndim)(2, ceil_mode=True)
        self.enc_x = self._encoder(ndim, in_channels, features, norm)
        self.enc_y = self._encoder(ndim, in_channels, features, norm)
        # Decoder level l sees the level below (at the bottleneck: y's code) and x's features at l.
        self.dec = nn.ModuleList()
        prev = features[-1]
        for width in reversed(features):
            self.dec.append(_double_conv(ndim, prev + width, width, norm))
            prev = width
        self.head = conv_nd(ndim)(prev, in_channels, 1)

    def _encoder(
        self, ndim: int, in_channels: int, features: list[int], norm: str | None
    ) -> nn.ModuleList:
        layers, prev = nn.ModuleList(), in_channels
        for width in features:
            layers.append(_double_conv(ndim, prev, width, norm))
            prev = width
        return layers

    def _encode(self, encoder: nn.ModuleList, image: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], image
        for level, block in enumerate(encoder):
            h = block(self.pool(h) if level else h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self._encode(self.enc_x, x)
        code = self._encode(self.enc_y, y)[-1].mean(dim=tuple(range(2, y.dim())), keepdim=True)
        h = code.expand(-1, -1, *fx[-1].shape[2:])
        for block, skip in zip(self.dec, reversed(fx)):
            h = block(torch.cat([upsample_to(h, skip.shape[2:]), skip], dim=1))
        h = self.head(h)
        return torch.sigmoid(h) if self.output == "sigmoid" else h


def _double_conv(ndim: int, in_channels: int, out_channels: int, norm: str | None) -> nn.Sequential:
    return nn.Sequential(
        ConvBlock(ndim, in_channels, out_channels, norm=norm),
        ConvBlock(ndim, out_channels, out_channels, norm=norm),
    )


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al., CVPR 2017).

    ``layers`` 4x4 convolutions at stride 2 (widths ``features * 2**i``, capped at 8x), one more at
    stride 1, then a 4x4 convolution to one logit per patch. Instance norm on all but the first
    convolution, LeakyReLU(0.2) after each. With ``layers=3`` and 2D input this is pix2pix's 70x70
    PatchGAN.

    Shapes:
        ``(B, in_channels, *S) -> (B, 1, *P)`` real/fake logits, ``P`` about ``S / 2**layers``.
    """

    def __init__(
        self,
        ndim: int = 3,
        in_channels: int = 1,
        features: int = 64,
        layers: int = 3,
        norm: str | None = "instance",
    ) -> None:
        super().__init__()
        conv = conv_nd(ndim)
        mods: list[nn.Module] = []
        prev = in_channels
        for i in range(layers + 1):
            width = features * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods.append(conv(prev, width, 4, stride, 1, bias=i == 0 or norm is None))
            if i > 0 and norm is not None:
                mods.append(norm_nd(ndim, norm, width))
            mods.append(activation("leakyrelu"))
            prev = width
        mods.append(conv(prev, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class Register(nn.Module):
    """Phi: a backbone on ``cat(source, target)``, a flow head and a spatial transformer (tau).

    Args:
        ndim: spatial dimensions.
        in_channels: channels of each image (the backbone sees twice as many).
        backbone: registry config of the backbone (``{"name": "vxm-unet", ...}``); ``ndim`` and
            ``in_channels`` are filled in.
        transformer: registry config of a spatial transformer whose parameters are a field at
            the image's resolution (``{"name": "dense"}`` or ``svf``); the transformer resizes a
            backbone output at lower resolution (``half_res``) itself.

    Shapes:
        ``source, target (B, C, *S) -> {"ddf": (B, ndim, *S), ...}`` plus whatever the transformer
        adds (``velocity`` for ``svf``). ``warped[x] = source[x + ddf[x]]``.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        backbone: Mapping[str, Any],
        transformer: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.backbone = build(
            "backbone", {**backbone, "ndim": ndim, "in_channels": 2 * in_channels}
        )
        self.transformer = build("transformer", dict(transformer))
        probe = (8,) * ndim
        if tuple(self.transformer.param_shape(probe)) != (ndim, *probe):
            raise ConfigError(
                f"JSSR's register needs a dense-field transformer (dense, svf), got "
                f"{transformer.get('name')!r}"
            )
        self.flow = field_head(ndim, self.backbone.out_channels)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        params = self.flow(self.backbone(torch.cat([source, target], dim=1)))
        return self.transformer(params, tuple(source.shape[2:]))


class Segmentor(nn.Module):
    """S: a registered backbone with a 1x1 convolution to ``num_classes`` logits.

    Shapes:
        ``(B, in_channels, *S) -> (B, num_classes, *S)`` logits.
    """

    def __init__(
        self, ndim: int, in_channels: int, num_classes: int, backbone: Mapping[str, Any]
    ) -> None:
        super().__init__()
        self.backbone = build("backbone", {**backbone, "ndim": ndim, "in_channels": in_channels})
        self.head = conv_nd(ndim)(self.backbone.out_channels, num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(image))
