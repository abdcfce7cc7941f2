"""The two networks of ISTN: the image transformer network (ITN) and the spatial transformer (STN).

Lee, Oktay, Schuh, Schaap, Glocker, "Image-and-Spatial Transformer Networks for Structure-Guided
Image Registration", MICCAI 2019 (arXiv:1907.09200); official code ``biomedia-mira/istn``
(``pymira/nets/itn.py``, ``pymira/nets/stn.py``). Layer sizes and parameter names follow the
official ``ITN2D/3D``, ``STN2D/3D`` and ``BSplineSTN2D/3D`` so that their state dicts load here
unchanged; the spatial dimensionality is a parameter instead of a second copy of each class.

Both STN heads produce their transform the way the official code does, in ``grid_sample``'s
normalised coordinates (``[-1, 1]`` per axis, axes in (x, y, z) = reversed tensor order,
``align_corners=True`` as in the torch 1.1 the code was written for); :class:`AffineSTN` returns
that matrix, :class:`BSplineSTN` converts its control points to a voxel field itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.spatial import bspline_to_ddf, control_grid_shape

__all__ = [
    "ITN",
    "AffineSTN",
    "BSplineSTN",
    "affine_matrix",
    "stn_feature_shape",
    "official_control_grid_shape",
    "official_bspline_to_ddf",
]


def _conv(ndim: int) -> type[nn.Module]:
    return nn.Conv2d if ndim == 2 else nn.Conv3d


class ITN(nn.Module):
    """The image transformer network: a small residual U-Net (2-4-8-16 channels, ReLU).

    Down path: two 3x3 convs (2, 4 channels), a 2x2 stride-2 conv to 8, a 3x3 conv, a 2x2 stride-2
    conv to 16, a 3x3 conv. Up path: 2x2 transposed convs back to 8 and 4 channels, each added to the
    skip of the same size, then 3x3 convs to 2, 2 and ``in_channels`` (linear output).

    Args:
        ndim: 2 or 3.
        in_channels: channels of the image, and of the output representation.
        activation: ``"relu"`` (official) or ``"leaky_relu"`` (slope 0.01). The official ReLU
            network has layers of two channels that die easily on images in [0, 1]: one of them
            outputs zeros for every input, the ITN becomes a constant and never recovers. Measured
            on the synthetic pairs (300 steps, Adam 1e-3): 3 of 8 seeds stuck with ReLU, none with
            LeakyReLU; 17 of 100 ReLU initialisations are constant before any step.

    Shapes: ``(B, C, *S) -> (B, C, *S)`` with every spatial size divisible by 4.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "leaky_relu"):
            raise ValueError(f"ITN activation must be relu or leaky_relu, got {activation!r}")
        self.activation = activation
        conv = _conv(ndim)
        up = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        self.conv11 = conv(in_channels, 2, kernel_size=3, padding=1)
        self.conv12 = conv(2, 4, kernel_size=3, padding=1)
        self.down1 = conv(4, 8, kernel_size=2, stride=2)
        self.conv21 = conv(8, 8, kernel_size=3, padding=1)
        self.down2 = conv(8, 16, kernel_size=2, stride=2)
        self.conv31 = conv(16, 16, kernel_size=3, padding=1)
        self.up2 = up(16, 8, kernel_size=2, stride=2)
        self.conv22 = conv(8, 8, kernel_size=3, padding=1)
        self.up1 = up(8, 4, kernel_size=2, stride=2)
        self.conv13 = conv(4, 2, kernel_size=3, padding=1)
        self.conv14 = conv(2, 2, kernel_size=3, padding=1)
        self.conv15 = conv(2, in_channels, kernel_size=3, padding=1)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.activation == "relu" else F.leaky_relu(x, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self._act
        x1 = act(self.conv12(act(self.conv11(x))))
        x2 = act(self.conv21(self.down1(x1)))
        x3 = act(self.conv31(self.down2(x2)))
        x2 = act(self.conv22(self.up2(x3) + x2))
        x1 = self.up1(x2) + x1
        x1 = act(self.conv14(act(self.conv13(x1))))
        return self.conv15(x1)


def stn_feature_shape(size: Sequence[int]) -> tuple[int, ...]:
    """Spatial size after the STN trunk: three times (valid 5-wide conv, then 2x average pooling)."""
    out = []
    for s in size:
        for _ in range(3):
            s = (s - 4) // 2
        if s < 1:
            raise ValueError(
                f"the ISTN STN needs images of at least 36 voxels per axis, got {tuple(size)}"
            )
        out.append(s)
    return tuple(out)


class _STNTrunk(nn.Module):
    """conv5 (8) -> avgpool2, conv5 (16) -> avgpool2, conv5 (32) -> avgpool2, flattened."""

    def __init__(self, ndim: int, in_channels: int, size: Sequence[int]) -> None:
        super().__init__()
        if len(size) != ndim:
            raise ValueError(f"size must have {ndim} entries, got {tuple(size)}")
        conv = _conv(ndim)
        self.ndim = ndim
        self.size = tuple(int(s) for s in size)
        self.num_features = 32 * math.prod(stn_feature_shape(self.size))
        self.conv1 = conv(in_channels, 8, kernel_size=5)
        self.conv2 = conv(8, 16, kernel_size=5)
        self.conv3 = conv(16, 32, kernel_size=5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *size)`` to ``(B, num_features)``."""
        if tuple(x.shape[2:]) != self.size:
            raise ValueError(f"the STN was built for size {self.size}, got {tuple(x.shape[2:])}")
        pool = F.avg_pool2d if self.ndim == 2 else F.avg_pool3d
        for conv in (self.conv1, self.conv2, self.conv3):
            x = pool(F.relu(conv(x)), 2)
        return x.flatten(1)


def _plane_rotation(angle: torch.Tensor, n: int, i: int, j: int) -> torch.Tensor:
    """``(B, n, n)`` identity with a rotation by ``angle`` ``(B,)`` in the (i, j) plane."""
    m = torch.eye(n, dtype=angle.dtype, device=angle.device).repeat(angle.shape[0], 1, 1)
    c, s = torch.cos(angle), torch.sin(angle)
    m[:, i, i] = c
    m[:, j, j] = c
    m[:, i, j] = -s
    m[:, j, i] = s
    return m


def affine_matrix(
    translation: torch.Tensor,
    rotation: torch.Tensor,
    log_scale: torch.Tensor,
    shear: torch.Tensor,
) -> torch.Tensor:
    """ISTN's affine ``Sh · Sc · Shᵀ · R · T`` in normalised (x, y[, z]) coordinates.

    Lee et al., "Image-and-Spatial Transformer Networks for Structure-Guided Image Registration",
    MICCAI 2019.

    Args:
        translation: ``(B, ndim)`` normalised units.
        rotation: ``(B, 1)`` in 2D; ``(B, 3)`` Euler angles in 3D, composed ``Rz · Rx · Rz`` as
            in the official code (radians).
        log_scale: ``(B, ndim)``; the scale is ``exp(log_scale)``.
        shear: ``(B, 1)`` in 2D; ``(B, 3)`` in 3D: rotations in the (y, z), (z, x) and (x, y)
            planes whose product ``Sh`` orients the scaling axes (radians).

    Returns:
        ``(B, ndim, ndim + 1)``, an ``affine_grid`` matrix (output to input coordinates).
    """
    b, ndim = translation.shape
    n = ndim + 1
    t = torch.eye(n, dtype=translation.dtype, device=translation.device).repeat(b, 1, 1)
    t[:, :ndim, ndim] = translation
    sc = torch.diag_embed(torch.cat([torch.exp(log_scale), log_scale.new_ones(b, 1)], dim=1))
    if ndim == 2:
        rot = _plane_rotation(rotation[:, 0], n, 0, 1)
        sh = _plane_rotation(shear[:, 0], n, 0, 1)
    else:
        rot = (
            _plane_rotation(rotation[:, 0], n, 0, 1)
            @ _plane_rotation(rotation[:, 1], n, 1, 2)
            @ _plane_rotation(rotation[:, 2], n, 0, 1)
        )
        sh = (
            _plane_rotation(shear[:, 0], n, 1, 2)
            @ _plane_rotation(shear[:, 1], n, 2, 0)
            @ _plane_rotation(shear[:, 2], n, 0, 1)
        )
    return (sh @ sc @ sh.transpose(1, 2) @ rot @ t)[:, :ndim]


class AffineSTN(_STNTrunk):
    """The affine STN (official ``STN2D``/``STN3D``): trunk, FC 32 + ReLU, four bounded heads.

    Each head is a zero-initialised linear layer, so the network starts at the identity:
    translation ``0.1·tanh``, rotation ``(π/4)·tanh``, log-scale ``0.2·tanh`` and shear angle
    ``(π/4)·tanh`` (one angle per rotation plane: 1 in 2D, 3 in 3D).

    Args:
        ndim: 2 or 3.
        in_channels: channels of the STN input (2: the concatenated moving and fixed images).
        size: the spatial size the network is built for (the FC layer depends on it).
        max_translation, max_rotation, max_log_scale, max_shear: the tanh bounds (official values).

    Shapes: ``(B, in_channels, *size) -> (B, ndim, ndim + 1)`` normalised ``affine_grid`` matrix.
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 2,
        size: Sequence[int] = (128, 128),
        max_translation: float = 0.1,
        max_rotation: float = math.pi / 4,
        max_log_scale: float = 0.2,
        max_shear: float = math.pi / 4,
    ) -> None:
        super().__init__(ndim, in_channels, size)
        angles = 1 if ndim == 2 else 3
        self.fc = nn.Linear(self.num_features, 32)
        self.translation = nn.Linear(32, ndim)
        self.rotation = nn.Linear(32, angles)
        self.scaling = nn.Linear(32, ndim)
        self.shearing = nn.Linear(32, angles)
        for head in (self.translation, self.rotation, self.scaling, self.shearing):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.bounds = (max_translation, max_rotation, max_log_scale, max_shear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(self.features(x)))
        bt, br, bs, bsh = self.bounds
        return affine_matrix(
            bt * torch.tanh(self.translation(h)),
            br * torch.tanh(self.rotation(h)),
            bs * torch.tanh(self.scaling(h)),
            bsh * torch.tanh(self.shearing(h)),
        )


def official_control_grid_shape(size: Sequence[int], spacing: Sequence[int]) -> tuple[int, ...]:
    """Control points per axis of the official B-spline STN: ``ceil(n / s) + 2``."""
    return tuple(math.ceil(n / s) + 2 for n, s in zip(size, spacing))


def _official_offsets(size: Sequence[int], spacing: Sequence[int]) -> list[int]:
    """Voxel of the official layout's first control point, negated, per axis.

    The official code centres the image in the span its ``ceil(n / s)`` inner control points cover:
    control point ``j`` lies at voxel ``(j - 1) * s + ceil(d / 2)``, ``d = n - s * (ceil(n / s) - 1) - 1``.
    """
    out = []
    for n, s in zip(size, spacing):
        d = n - (s * math.ceil(n / s) - (s - 1))
        out.append(s - (d + 1) // 2)
    return out


def official_bspline_to_ddf(
    control: torch.Tensor, size: Sequence[int], spacing: Sequence[int]
) -> torch.Tensor:
    """Dense field of control points laid out as the official ``BSplineSTN`` lays them out.

    Evaluated with core's cubic B-spline (:func:`regzoo.spatial.bspline_to_ddf`, the same kernel
    as the official box-convolution one): the official grid is core's grid shifted by a few voxels,
    so the control points are padded with zeros into a core grid over a slightly larger image
    whose field is then cropped.

    Args:
        control: ``(B, ndim, *official_control_grid_shape(size, spacing))``, voxel units, channel i
            along tensor axis i.
        size: image size ``(H, W)`` or ``(D, H, W)``.
        spacing: control-point spacing per axis (voxels).

    Returns:
        ``(B, ndim, *size)`` displacement in voxels.
    """
    offsets = _official_offsets(size, spacing)
    big = [o + n for o, n in zip(offsets, size)]
    grid = control_grid_shape(big, spacing)
    pad: list[int] = []
    for g, c in zip(reversed(grid), reversed(control.shape[2:])):
        pad += [1, g - c - 1]
    dense = bspline_to_ddf(F.pad(control, pad), big, spacing)
    crop = tuple(slice(o, o + n) for o, n in zip(offsets, size))
    return dense[(slice(None), slice(None), *crop)]


class BSplineSTN(_STNTrunk):
    """The B-spline STN (official ``BSplineSTN2D``/``3D``): trunk, then one FC to control points.

    The FC output is ``max_displacement·tanh`` in normalised units, viewed as
    ``(ndim, *official_control_grid_shape)`` with channels in (x, y, z) order, as in the official
    code; :meth:`forward` converts it to voxels along tensor axes and evaluates the cubic B-spline.
    The kernel is a partition of unity with non-negative weights, so every dense displacement is
    bounded by ``max_displacement * (n_i - 1) / 2`` voxels along axis i.

    Args:
        ndim: 2 or 3.
        in_channels: channels of the STN input (2).
        size: spatial size the network is built for.
        spacing: control-point spacing in voxels (10).
        max_displacement: bound of each control-point displacement, normalised units (0.2).

    Shapes: ``(B, in_channels, *size) -> (B, ndim, *size)`` displacement in voxels.
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 2,
        size: Sequence[int] = (128, 128),
        spacing: int | Sequence[int] = 10,
        max_displacement: float = 0.2,
    ) -> None:
        super().__init__(ndim, in_channels, size)
        self.spacing = (
            [int(spacing)] * ndim
            if isinstance(spacing, (int, float))
            else [int(s) for s in spacing]
        )
        self.grid = official_control_grid_shape(self.size, self.spacing)
        self.max_displacement = max_displacement
        self.fc = nn.Linear(self.num_features, ndim * math.prod(self.grid))
        half = torch.tensor([(n - 1) / 2 for n in self.size], dtype=torch.float32)
        self.register_buffer("voxels_per_unit", half.view(1, ndim, *([1] * ndim)), persistent=False)

    def control_points(self, x: torch.Tensor) -> torch.Tensor:
        """Control-point displacements ``(B, ndim, *grid)`` in voxels along tensor axes."""
        c = self.max_displacement * torch.tanh(self.fc(self.features(x)))
        c = c.view(-1, self.ndim, *self.grid).flip(1)
        return c * self.voxels_per_unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return official_bspline_to_ddf(self.control_points(x), self.size, self.spacing)
