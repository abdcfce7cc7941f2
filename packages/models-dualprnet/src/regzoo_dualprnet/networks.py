"""The networks of Dual-PRNet (Hu et al., MICCAI 2019) and Dual-PRNet++ (Kang et al., MedIA 2022).

Layers and attribute names follow the authors' code (``kangmiao15/Dual-Stream-PRNet-Plus``:
``VoxResNet``, ``VoxNet``, ``RefinePyramid``, the cascade and fusion heads, the correlation layer),
so that its state dicts load unchanged; every network exists in 2D and 3D (the authors' code is
3D). Tensors are ``(B, C, *S)`` with ``S`` ``(D, H, W)`` or ``(H, W)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.errors import ConfigError
from regzoo.nn import conv_nd, norm_nd

__all__ = [
    "VoxResNet",
    "VoxNet",
    "RefinePyramid",
    "Correlation",
    "CorrelationHead",
    "upsample",
]


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Linear upsampling of features to ``size`` (``align_corners=False``, as the official decoder
    and pyramid: ``F.interpolate(scale_factor=2)`` where ``size`` is twice the input's)."""
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _bn(ndim: int, channels: int) -> nn.Module:
    return norm_nd(ndim, "batch", channels)


def _conv(ndim: int, cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Module:
    return conv_nd(ndim)(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


class _ResidualUnit(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))``, bias-free 3x3 convolutions (``VoxRex``)."""

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _bn(ndim, channels),
            nn.ReLU(),
            _conv(ndim, channels, channels, bias=False),
            _bn(ndim, channels),
            nn.ReLU(),
            _conv(ndim, channels, channels, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


class VoxResNet(nn.Module):
    """The MICCAI 2019 encoder: four stride-2 stages with batch-normalised residual units.

    ``channels`` ``[c1, c2, c3, c4]``: a bias-free stride-2 convolution to ``c1`` then a
    convolution; each further stage is batch norm, ReLU, a stride-2 convolution and (from the
    second stage) two residual units. ``forward`` returns the four stage outputs, finest first, at
    1/2, 1/4, 1/8 and 1/16 of the input size.
    """

    def __init__(self, ndim: int, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ConfigError(
                f"model.channels: the resnet backbone takes 4 widths, got {list(channels)}"
            )
        c1, c2, c3, c4 = channels

        self.conv1_1 = nn.Sequential(
            _conv(ndim, in_channels, c1, stride=2, bias=False),
            _bn(ndim, c1),
            nn.ReLU(),
            _conv(ndim, c1, c1, bias=False),
        )

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(_bn(ndim, cin), nn.ReLU(), _conv(ndim, cin, cout, stride=2))

        self.conv1_2 = down(c1, c2)
        self.voxres2 = _ResidualUnit(ndim, c2)
        self.voxres3 = _ResidualUnit(ndim, c2)
        self.conv4 = down(c2, c3)
        self.voxres5 = _ResidualUnit(ndim, c3)
        self.voxres6 = _ResidualUnit(ndim, c3)
        self.conv7 = down(c3, c4)
        self.voxres8 = _ResidualUnit(ndim, c4)
        self.voxres9 = _ResidualUnit(ndim, c4)
        self.out_channels = list(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` ``(B, C, *S)`` -> four maps ``(B, c_i, *S / 2^i)``, finest first."""
        h1 = self.conv1_1(x)
        h2 = self.voxres3(self.voxres2(self.conv1_2(h1)))
        h3 = self.voxres6(self.voxres5(self.conv4(h2)))
        h4 = self.voxres9(self.voxres8(self.conv7(h3)))
        return [h1, h2, h3, h4]


def _conv_relu(ndim: int, cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(_conv(ndim, cin, cout, stride, bias), nn.ReLU())


class VoxNet(nn.Module):
    """The MedIA 2022 encoder-decoder (Dual-PRNet++).

    ``channels`` ``[c1, ..., c5]``: a bias-free convolution to ``c1`` at full resolution, four
    stride-2 convolutions (to ``c2``..``c5``), each with ReLU; the decoder upsamples x2, convolves
    and concatenates the encoder map of the same size, five times (the last without upsampling).
    ``forward`` returns the five decoder maps finest first: ``c1`` and ``c2`` channels at full
    resolution, ``c3`` at 1/2, ``c4`` at 1/4, ``c5`` at 1/8.
    """

    def __init__(self, ndim: int, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ConfigError(
                f"model.channels: the voxnet backbone takes 5 widths, got {list(channels)}"
            )
        c1, c2, c3, c4, c5 = channels
        self.conv1_1 = _conv_relu(ndim, in_channels, c1, bias=False)
        self.conv1_2 = _conv_relu(ndim, c1, c2, stride=2)
        self.conv4 = _conv_relu(ndim, c2, c3, stride=2)
        self.conv7 = _conv_relu(ndim, c3, c4, stride=2)
        self.conv8 = _conv_relu(ndim, c4, c5, stride=2)
        self.decv1 = _conv_relu(ndim, c5, c5)
        self.decv2 = _conv_relu(ndim, c5 + c4, c4)
        self.decv3 = _conv_relu(ndim, c4 + c3, c3)
        self.decv4 = _conv_relu(ndim, c3 + c2, c2)
        self.decv5 = _conv_relu(ndim, c2 + c1, c1)
        self.out_channels = list(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` ``(B, C, *S)`` -> ``[d1, d2, d3, d4, d5]`` as the class docstring says."""
        h1 = self.conv1_1(x)
        h2 = self.conv1_2(h1)
        h3 = self.conv4(h2)
        h4 = self.conv7(h3)
        x = self.conv8(h4)
        d5 = self.decv1(upsample(x, h4.shape[2:]))
        d4 = self.decv2(upsample(torch.cat([d5, h4], 1), h3.shape[2:]))
        d3 = self.decv3(upsample(torch.cat([d4, h3], 1), h2.shape[2:]))
        d2 = self.decv4(upsample(torch.cat([d3, h2], 1), h1.shape[2:]))
        d1 = self.decv5(torch.cat([d2, h1], 1))
        return [d1, d2, d3, d4, d5]


class RefinePyramid(nn.Module):
    """Feature pyramid refinement (Lin et al.'s FPN, as Dual-PRNet uses it) around a backbone.

    Coarse to fine, each level is a 1x1 lateral convolution of the backbone's map to ``fpn_dim``
    channels plus the refined coarser level upsampled to its size, then a 3x3 smoothing
    convolution. ``adaptive[i]`` and ``smooth[i]`` are level ``i`` counted from the coarsest.
    """

    def __init__(self, backend: nn.Module, ndim: int, fpn_dim: int) -> None:
        super().__init__()
        self.backend = backend
        conv = conv_nd(ndim)
        widths = list(reversed(backend.out_channels))
        self.adaptive = nn.ModuleList(conv(c, fpn_dim, kernel_size=1) for c in widths)
        self.smooth = nn.ModuleList(conv(fpn_dim, fpn_dim, 3, padding=1) for _ in widths)
        self.out_channels = [fpn_dim] * len(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` ``(B, C, *S)`` -> the refined maps ``(B, fpn_dim, ...)``, finest first."""
        refined: list[torch.Tensor] = []
        last = None
        for i, feature in enumerate(reversed(self.backend(x))):
            feature = self.adaptive[i](feature)
            if last is not None:
                feature = feature + upsample(last, feature.shape[2:])
            last = self.smooth[i](feature)
            refined.append(last)
        return refined[::-1]


class Correlation(nn.Module):
    """Local cost volume of Dual-PRNet++ (the official CUDA ``Correlation`` with ``pad_size=3,
    kernel_size=1, max_displacement=3, stride1=1, stride2=2``).

    ``out[k, x] = mean_c first[c, x] * second[c, x + d_k]`` over the displacements
    ``d_k in {-2, 0, 2}^ndim`` (``max_displacement // stride2 = 1`` step of ``stride2 = 2``
    voxels each way; the first axis varies slowest), with zeros outside ``second``: 27 channels in
    3D, 9 in 2D, at the input's size.
    """

    def __init__(self, max_displacement: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.max_displacement, self.stride = max_displacement, stride

    def displacements(self, ndim: int) -> list[tuple[int, ...]]:
        """The displacements ``d_k`` in channel order, in voxels along each spatial axis."""
        steps = self.max_displacement // self.stride
        one = [self.stride * t for t in range(-steps, steps + 1)]
        return list(itertools.product(one, repeat=ndim))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``first``, ``second`` ``(B, C, *S)`` -> ``(B, K, *S)``, ``K = (2 (max_disp // stride)
        + 1)^ndim``."""
        ndim = first.dim() - 2
        reach = (self.max_displacement // self.stride) * self.stride
        padded = F.pad(second, [reach] * (2 * ndim))
        size = first.shape[2:]
        volumes = []
        for d in self.displacements(ndim):
            index = (Ellipsis, *(slice(reach + o, reach + o + n) for o, n in zip(d, size)))
            volumes.append((first * padded[index]).mean(1))
        return torch.stack(volumes, 1)


class CorrelationHead(nn.Module):
    """Dual-PRNet++'s field predictor at one level (the official ``FlowNet``).

    The correlation of the warped moving and the fixed features, concatenated with both, goes
    through two 3x3 convolutions with ReLU (to ``channels``), a residual block of two more, and a
    3x3 convolution to the ``ndim`` field components (official order: the last spatial axis first).
    """

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.corr_layer = Correlation()
        conv = conv_nd(ndim)
        corr = len(self.corr_layer.displacements(ndim))
        self.conv_layer = nn.Sequential(
            conv(corr + 2 * channels, channels, 3, padding=1),
            nn.ReLU(),
            conv(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.resblock_layer_1 = nn.Sequential(
            conv(channels, channels, 3, padding=1),
            nn.ReLU(),
            conv(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.offset_layer = conv(channels, ndim, 3, padding=1)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``moving``, ``fixed`` ``(B, channels, *S)`` -> ``(B, ndim, *S)``."""
        x = torch.cat([moving, fixed, self.corr_layer(moving, fixed)], 1)
        x = self.conv_layer(x)
        x = x + self.resblock_layer_1(x)
        return self.offset_layer(x)
