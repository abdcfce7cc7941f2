"""The ITN and STN networks against the official layer list and external references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from regzoo.spatial import affine_from_normalised, affine_to_ddf, jacobian_determinant, warp
from regzoo_istn.networks import (
    ITN,
    AffineSTN,
    BSplineSTN,
    affine_matrix,
    official_bspline_to_ddf,
    official_control_grid_shape,
)

# Parameter shapes of the official pymira/nets/itn.py ITN2D(input_channels=1), layer by layer.
OFFICIAL_ITN_2D = {
    "conv11": (2, 1, 3, 3),
    "conv12": (4, 2, 3, 3),
    "down1": (8, 4, 2, 2),
    "conv21": (8, 8, 3, 3),
    "down2": (16, 8, 2, 2),
    "conv31": (16, 16, 3, 3),
    "up2": (16, 8, 2, 2),  # ConvTranspose: (in, out, k, k)
    "conv22": (8, 8, 3, 3),
    "up1": (8, 4, 2, 2),
    "conv13": (2, 4, 3, 3),
    "conv14": (2, 2, 3, 3),
    "conv15": (1, 2, 3, 3),
}
# Official STN2D(input_size=(128, 128), input_channels=2): trunk features 32 * 12 * 12.
OFFICIAL_STN_2D = {
    "conv1": (8, 2, 5, 5),
    "conv2": (16, 8, 5, 5),
    "conv3": (32, 16, 5, 5),
    "fc": (32, 4608),
    "translation": (2, 32),
    "rotation": (1, 32),
    "scaling": (2, 32),
    "shearing": (1, 32),
}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _expected(layers: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, shape in layers.items():
        out[f"{name}.weight"] = shape
        out[f"{name}.bias"] = (shape[1] if name.startswith("up") else shape[0],)
    return out


def test_itn_matches_official_layers_and_parameter_count():
    itn = ITN(2, 1)
    assert _shapes(itn) == _expected(OFFICIAL_ITN_2D)
    assert sum(p.numel() for p in itn.parameters()) == 5031
    itn3 = ITN(3, 1)
    assert {k: v[:2] for k, v in _shapes(itn3).items()} == {
        k: v[:2] for k, v in _expected(OFFICIAL_ITN_2D).items()
    }
    assert all(len(v) == 5 for k, v in _shapes(itn3).items() if k.endswith("weight"))
    x = torch.randn(2, 1, 16, 12)
    assert itn(x).shape == x.shape


def test_affine_stn_matches_official_layers():
    stn = AffineSTN(2, 2, (128, 128))
    assert _shapes(stn) == _expected(OFFICIAL_STN_2D)
    assert sum(p.numel() for p in stn.parameters()) == 164142
    stn3 = AffineSTN(3, 2, (64, 64, 64))
    # 64 -> 30 -> 13 -> 4 per axis; 3 rotation and 3 shear angles in 3D.
    assert stn3.fc.in_features == 32 * 4**3
    assert stn3.rotation.out_features == 3 and stn3.shearing.out_features == 3


def test_bspline_stn_matches_official_layers():
    stn = BSplineSTN(2, 2, (128, 128), spacing=10)
    # ceil(128 / 10) + 2 = 15 control points per axis, two displacement channels.
    assert official_control_grid_shape((128, 128), (10, 10)) == (15, 15)
    assert _shapes(stn) == {
        "conv1.weight": (8, 2, 5, 5),
        "conv1.bias": (8,),
        "conv2.weight": (16, 8, 5, 5),
        "conv2.bias": (16,),
        "conv3.weight": (32, 16, 5, 5),
        "conv3.bias": (32,),
        "fc.weight": (2 * 15 * 15, 4608),
        "fc.bias": (2 * 15 * 15,),
    }


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_head_is_identity_at_initialisation(ndim):
    torch.manual_seed(0)
    size = (48,) * ndim
    stn = AffineSTN(ndim, 2, size)
    theta = stn(torch.rand(3, 2, *size))
    expected = torch.eye(ndim, ndim + 1).expand(3, -1, -1)
    assert torch.equal(theta, expected)


def test_affine_matrix_2d_composition():
    t = torch.tensor([[0.05, -0.02]])
    r, s, sh = torch.tensor([[0.3]]), torch.tensor([[0.1, -0.15]]), torch.tensor([[0.2]])

    def rot(a: float) -> np.ndarray:
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    shear = rot(0.2)
    lin = shear @ np.diag(np.exp([0.1, -0.15])) @ shear.T @ rot(0.3)
    expected = np.concatenate([lin, (lin @ t.numpy().T)], axis=1)
    got = affine_matrix(t, r, s, sh)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_affine_matrix_3d_against_scipy_rotations():
    g = torch.Generator().manual_seed(1)
    t = 0.1 * torch.randn(1, 3, generator=g)
    r = 0.5 * torch.randn(1, 3, generator=g)
    s = 0.2 * torch.randn(1, 3, generator=g)
    sh = 0.5 * torch.randn(1, 3, generator=g)
    # Official: R = Rz Rx Rz (intrinsic z-x-z Euler angles); shear orientation Rx Ry Rz.
    rot = Rotation.from_euler("ZXZ", r[0].numpy()).as_matrix()
    shear = Rotation.from_euler("XYZ", sh[0].numpy()).as_matrix()
    lin = shear @ np.diag(np.exp(s[0].numpy())) @ shear.T @ rot
    expected = np.concatenate([lin, lin @ t[0].numpy()[:, None]], axis=1)
    np.testing.assert_allclose(affine_matrix(t, r, s, sh)[0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_normalised_affine_warps_like_affine_grid(ndim):
    """The voxel-space field of the head's matrix reproduces the official affine_grid warp."""
    g = torch.Generator().manual_seed(2)
    size = (24, 20) if ndim == 2 else (12, 14, 10)
    n_angles = 1 if ndim == 2 else 3
    theta_n = affine_matrix(
        0.1 * torch.randn(2, ndim, generator=g),
        0.4 * torch.randn(2, n_angles, generator=g),
        0.1 * torch.randn(2, ndim, generator=g),
        0.3 * torch.randn(2, n_angles, generator=g),
    )
    image = torch.rand(2, 1, *size, generator=g)
    ddf = affine_to_ddf(affine_from_normalised(theta_n, size), size)
    grid = F.affine_grid(theta_n, list(image.shape), align_corners=True)
    reference = F.grid_sample(image, grid, align_corners=True)
    torch.testing.assert_close(warp(image, ddf), reference, atol=1e-5, rtol=0)


def _official_dense(control: torch.Tensor, size: tuple[int, ...], s: int) -> torch.Tensor:
    """The official BSplineSTN's transposed convolution and crop, written from its description.

    Kernel: a box of width s convolved with boxes three times, padding s and dividing by s**ndim
    each time; transposed conv with stride s and padding (k - 1) / 2; then a crop that starts at
    s + crop_start, where the image is centred in the span of ceil(n / s) control points.
    """
    ndim = len(size)
    box = torch.ones(1, 1, *([s] * ndim), dtype=torch.float64)
    conv = F.conv2d if ndim == 2 else F.conv3d
    kernel = box
    for _ in range(3):
        kernel = conv(kernel, box, padding=s) / s**ndim
    kernel = kernel.expand(ndim, 1, *kernel.shape[2:])
    tconv = F.conv_transpose2d if ndim == 2 else F.conv_transpose3d
    dense = tconv(control, kernel, stride=s, padding=(kernel.shape[-1] - 1) // 2, groups=ndim)
    index = []
    for n in size:
        diff = s * math.ceil(n / s) - (s - 1) - n
        start = int(np.floor(abs(diff) / 2) * np.sign(diff) + np.remainder(diff, 2) * np.sign(diff))
        index.append(slice(s + start, s + start + n))
    return dense[(slice(None), slice(None), *index)]


@pytest.mark.parametrize(
    "size,spacing", [((64, 64), 10), ((61, 67), 7), ((128, 40), 20), ((20, 23, 18), 5)]
)
def test_official_bspline_layout(size, spacing):
    grid = official_control_grid_shape(size, [spacing] * len(size))
    control = torch.randn(2, len(size), *grid, dtype=torch.float64)
    got = official_bspline_to_ddf(control, size, [spacing] * len(size))
    torch.testing.assert_close(got, _official_dense(control, size, spacing), atol=1e-6, rtol=0)


@pytest.mark.parametrize("ndim,size,seeds", [(2, 128, 5), (2, 64, 5), (3, 64, 1)])
def test_bspline_stn_has_no_folding_at_initialisation(ndim, size, seeds):
    for seed in range(seeds):
        torch.manual_seed(seed)
        stn = BSplineSTN(ndim, 2, (size,) * ndim)
        with torch.no_grad():
            ddf = stn(torch.rand(2 if ndim == 2 else 1, 2, *(size,) * ndim))
        assert jacobian_determinant(ddf).min() > 0


@pytest.mark.parametrize("ndim,size", [(2, (64, 48)), (3, (40, 44, 36))])
def test_bspline_displacement_stays_within_bound(ndim, size):
    stn = BSplineSTN(ndim, 2, size, spacing=10, max_displacement=0.2)
    bound = torch.tensor([0.2 * (n - 1) / 2 for n in size]).view(1, ndim, *([1] * ndim))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for scale in (1.0, 100.0):  # saturating tanh: every control point at +-max
            stn.fc.weight.copy_(scale * torch.randn(stn.fc.weight.shape, generator=g))
            stn.fc.bias.copy_(scale * torch.randn(stn.fc.bias.shape, generator=g))
            ddf = stn(torch.rand(2, 2, *size, generator=g))
            assert (ddf.abs() <= bound * (1 + 1e-5)).all()
        # All control points at +max give the bound itself (the kernel is a partition of unity
        # away from the border, where the official grid leaves out the outermost, tiny taps).
        stn.fc.weight.zero_()
        stn.fc.bias.fill_(50.0)
        ddf = stn(torch.rand(1, 2, *size, generator=g))
        inner = (slice(None), slice(None), *([slice(10, -10)] * ndim))
        torch.testing.assert_close(ddf[inner], bound.expand_as(ddf)[inner], atol=1e-4, rtol=1e-5)
