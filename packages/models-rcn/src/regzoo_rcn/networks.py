"""The networks of Recursive Cascaded Networks: the affine stem and the VTN base.

Zhao, Dong, Chang, Xu, "Recursive Cascaded Networks for Unsupervised Medical Image Registration",
ICCV 2019 (doi:10.1109/ICCV.2019.01070). Layer names, widths and strides follow the official
TensorFlow code (``network/base_networks.py``); every convolution is followed by LeakyReLU 0.1
except the ones that predict flows or affine parameters. Inputs are ``(B, C, *S)`` with ``S`` 2D
or 3D; both networks read ``concat(fixed, moving)`` (the official ``img1, img2`` order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.nn import conv_nd, conv_transpose_nd

__all__ = ["AffineStem", "VTN", "affine_regularizers", "stem_output_size", "LEAKY_SLOPE"]

#: Negative slope of every LeakyReLU in the official networks.
LEAKY_SLOPE = 0.1

# (name, width multiplier of the base width, stride): the encoder shared by the affine stem and
# VTN, six stride-2 levels, each but the first two followed by a stride-1 convolution.
_ENCODER = (
    ("conv1", 1, 2),
    ("conv2", 2, 2),
    ("conv3", 4, 2),
    ("conv3_1", 4, 1),
    ("conv4", 8, 2),
    ("conv4_1", 8, 1),
    ("conv5", 16, 2),
    ("conv5_1", 16, 1),
    ("conv6", 32, 2),
    ("conv6_1", 32, 1),
)
_LEVELS = sum(stride == 2 for _, _, stride in _ENCODER)


def official_init(module: nn.Module) -> None:
    """tflearn's ``uniform_scaling`` of the official code on every (transposed) convolution:
    weights uniform in ``+-sqrt(3 / fan_in)`` (fan_in: kernel volume times input channels, the
    output channels of a transposed convolution), biases zero. It keeps more of the signal through
    the deep encoder than PyTorch's default (a third of the variance), without which the affine
    stem barely learns."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            fan_in = m.weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_lrelu(ndim: int, cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3(x3) convolution ("same" padding) with bias, then LeakyReLU 0.1."""
    return nn.Sequential(conv_nd(ndim)(cin, cout, 3, stride, 1), nn.LeakyReLU(LEAKY_SLOPE))


def _encoder(ndim: int, in_channels: int, channels: int) -> nn.ModuleDict:
    layers, cin = {}, in_channels
    for name, mult, stride in _ENCODER:
        layers[name] = _conv_lrelu(ndim, cin, mult * channels, stride)
        cin = mult * channels
    return nn.ModuleDict(layers)


def stem_output_size(size: Sequence[int]) -> tuple[int, ...]:
    """Spatial size after the six stride-2 levels: ``ceil(n / 2)`` each (a 3x3 convolution with
    padding 1), e.g. 128 -> 2 and 64 -> 1 (at 64 or less the deepest level runs on 1 voxel)."""
    out = tuple(int(n) for n in size)
    for _ in range(_LEVELS):
        out = tuple(math.ceil(n / 2) for n in out)
    return out


class AffineStem(nn.Module):
    """RCN's affine cascade: ``(fixed, moving) -> (B, ndim, ndim + 1)`` affine matrix.

    Ten convolutions (widths ``c, 2c, 4c, 4c, 8c, 8c, 16c, 16c, 32c, 32c`` with ``c = channels``,
    16 officially; strides 2, 2, 2, 1, 2, 1, 2, 1, 2, 1) and two bias-free convolutions whose
    kernel is the remaining spatial size (2^3 for the official 128^3), giving ``W``
    (``ndim * ndim`` values, row-major) and ``b`` (``ndim``). ``A = I + W``; the transform
    ``x -> A x + b`` acts on centred voxel coordinates, so the displacement is ``(A - I) x + b``
    (:func:`regzoo.spatial.affine_to_ddf`). Both convolutions start at zero: the untrained stem is
    the identity (the official code draws them like every other layer).

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image.
        size: the input size the last convolutions are built for (one int per axis); other sizes
            are refused, since the kernel would not cover the features.
        channels: base width ``c`` (official 16).
    """

    def __init__(self, ndim: int, in_channels: int, size: Sequence[int], channels: int = 16):
        super().__init__()
        self.ndim = ndim
        self.size = tuple(int(n) for n in size)
        if len(self.size) != ndim:
            raise ValueError(f"size must have {ndim} entries, got {list(self.size)}")
        self.encoder = _encoder(ndim, 2 * in_channels, channels)
        kernel = stem_output_size(self.size)
        width = 32 * channels
        self.conv7_W = conv_nd(ndim)(width, ndim * ndim, kernel, bias=False)
        self.conv7_b = conv_nd(ndim)(width, ndim, kernel, bias=False)
        official_init(self)
        nn.init.zeros_(self.conv7_W.weight)
        nn.init.zeros_(self.conv7_b.weight)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``fixed``, ``moving`` ``(B, C, *size)`` -> ``[A | b]`` ``(B, ndim, ndim + 1)``."""
        if tuple(fixed.shape[2:]) != self.size:
            raise ValueError(
                f"the affine stem was built for images of size {list(self.size)} (model.size), "
                f"got {list(fixed.shape[2:])}"
            )
        x = torch.cat([fixed, moving], dim=1)
        for layer in self.encoder.values():
            x = layer(x)
        n = self.ndim
        w = self.conv7_W(x).reshape(-1, n, n)
        b = self.conv7_b(x).reshape(-1, n, 1)
        eye = torch.eye(n, device=w.device, dtype=w.dtype)
        return torch.cat([eye + w, b], dim=2)


def affine_regularizers(
    matrix: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """RCN's determinant and orthogonality losses of ``A`` ``(B, ndim, ndim)``, batch means.

    - ``det = 0.5 (det A - 1)^2``;
    - ``ortho = sum_i (mu_i + (1 + eps)^2 / mu_i) - 2 ndim (1 + eps)`` with ``mu_i`` the
      eigenvalues of ``C = A^T A + eps I``; ``sum 1 / mu_i = trace(C^-1)``. It is 0 when ``A`` is a
      rotation and grows with any scaling or shear.

    The official code sums over the batch; the mean keeps the weights independent of the batch
    size, as regzoo's similarity and regularisers do.
    """
    n = matrix.shape[-1]
    det_loss = 0.5 * (torch.linalg.det(matrix) - 1.0).square()
    eye = torch.eye(n, device=matrix.device, dtype=matrix.dtype)
    c = matrix.transpose(1, 2) @ matrix + eps * eye
    trace = c.diagonal(dim1=1, dim2=2).sum(1)
    trace_inv = torch.linalg.inv(c).diagonal(dim1=1, dim2=2).sum(1)
    ortho_loss = trace + (1 + eps) ** 2 * trace_inv - 2 * n * (1 + eps)
    return det_loss.mean(), ortho_loss.mean()


def _fit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Crop or zero-pad ``x`` at the end of each spatial axis to ``like``'s spatial size (the
    transposed convolutions double the size; odd skip sizes need one voxel less)."""
    pad = []
    for have, want in zip(reversed(x.shape[2:]), reversed(like.shape[2:])):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


class VTN(nn.Module):
    """RCN's VTN base network: ``(fixed, moving) -> flow`` ``(B, ndim, *S)`` in voxels.

    Encoder as the affine stem's (base width ``channels``). FlowNet-style decoder from the deepest
    level up: at each level a 3x3 convolution predicts a flow (``pred6`` ... ``pred2``), a 4x4
    transposed convolution (stride 2, no bias) upsamples it (``upsamp6to5`` ...), another
    upsamples the features (``deconv5`` ... ``deconv1``, LeakyReLU 0.1), and the skip, the
    deconvolved features and the upsampled flow are concatenated. ``upsamp1to0`` gives the flow at
    full resolution, multiplied by ``20 * flow_multiplier`` (RCN passes ``1 / n_cascades``). It
    starts near zero (weights N(0, 1e-5); the official code draws them like every other layer).

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image.
        channels: base width (official 16).
        flow_multiplier: scale of the output flow besides the fixed 20.
    """

    def __init__(
        self, ndim: int, in_channels: int, channels: int = 16, flow_multiplier: float = 1.0
    ):
        super().__init__()
        self.flow_multiplier = float(flow_multiplier)
        self.encoder = _encoder(ndim, 2 * in_channels, channels)
        conv, up = conv_nd(ndim), conv_transpose_nd(ndim)
        # skips of levels 5..1 and their widths; the features entering each level
        skips = {5: 16, 4: 8, 3: 4, 2: 2, 1: 1}
        cin = 32 * channels
        self.pred = nn.ModuleDict()
        self.upsamp = nn.ModuleDict()
        self.deconv = nn.ModuleDict()
        for level, mult in skips.items():
            self.pred[f"pred{level + 1}"] = conv(cin, ndim, 3, 1, 1)
            self.upsamp[f"upsamp{level + 1}to{level}"] = up(ndim, ndim, 4, 2, 1, bias=False)
            self.deconv[f"deconv{level}"] = nn.Sequential(
                up(cin, mult * channels, 4, 2, 1, bias=False), nn.LeakyReLU(LEAKY_SLOPE)
            )
            cin = 2 * mult * channels + ndim
        self.upsamp1to0 = up(cin, ndim, 4, 2, 1, bias=False)
        official_init(self)
        nn.init.normal_(self.upsamp1to0.weight, std=1e-5)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``fixed``, ``moving`` ``(B, C, *S)`` -> flow ``(B, ndim, *S)`` (voxels)."""
        x = torch.cat([fixed, moving], dim=1)
        features = {}
        for name, layer in self.encoder.items():
            x = layer(x)
            features[name] = x
        skips = [features[k] for k in ("conv5_1", "conv4_1", "conv3_1", "conv2", "conv1")]
        preds, ups, deconvs = self.pred.values(), self.upsamp.values(), self.deconv.values()
        for skip, pred, upsamp, deconv in zip(skips, preds, ups, deconvs):
            flow = _fit(upsamp(pred(x)), skip)
            x = torch.cat([skip, _fit(deconv(x), skip), flow], dim=1)
        flow = _fit(self.upsamp1to0(x), fixed)
        return flow * (20.0 * self.flow_multiplier)
