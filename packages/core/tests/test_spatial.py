"""Spatial transforms against outside references (docs/conventions.md).

References: scipy's ``map_coordinates`` (warping), ``torch.roll`` (integer shifts),
``F.affine_grid`` (affine), numpy convolutions (B-spline kernel), SimpleITK's
``DisplacementFieldJacobianDeterminantFilter`` (Jacobian).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from regzoo.labels import warp_labels
from regzoo.spatial import (
    affine_from_normalised,
    affine_inverse,
    affine_to_ddf,
    affine_to_normalised,
    affine_to_physical,
    bspline_kernel,
    bspline_to_ddf,
    compose,
    compose_affine,
    control_grid_shape,
    integrate_velocity,
    invert,
    jacobian_determinant,
    resize_field,
    resize_image,
    warp,
)

SHAPES = [(23, 29), (11, 13, 15)]


def smooth_field(shape, amplitude, seed, sigma=3.0, dtype=torch.float32):
    """A smooth random field ``(1, ndim, *shape)`` with max |value| = ``amplitude`` voxels."""
    rng = np.random.default_rng(seed)
    f = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") for _ in shape]
    )
    f *= amplitude / np.abs(f).max()
    return torch.from_numpy(f)[None].to(dtype)


def smooth_image(shape, seed, sigma=4.0):
    """A smooth image ``(1, 1, *shape)`` scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    m = (m - m.min()) / (m.max() - m.min())
    return torch.from_numpy(m)[None, None].float()


def interior(margin, ndim, leading=2):
    return (slice(None),) * leading + (slice(margin, -margin),) * ndim


def scipy_warp(image: np.ndarray, ddf: np.ndarray, order=1, mode="grid-constant") -> np.ndarray:
    """``image[x + ddf[x]]`` by map_coordinates in float64."""
    coords = np.indices(image.shape, dtype=np.float64) + ddf
    return ndimage.map_coordinates(image, coords, order=order, mode=mode, cval=0.0)


# --- warp -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_warp_matches_map_coordinates_with_zero_padding(shape):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=shape)
    ddf = smooth_field(shape, 4.0, seed=2, dtype=torch.float64)
    coords = np.indices(shape) + ddf[0].numpy()
    outside = np.any([(c < 0) | (c > n - 1) for c, n in zip(coords, shape)], axis=0)
    assert outside.any() and not outside.all()  # the field samples across the border

    # grid_sample's zero padding interpolates towards 0 beyond the last voxel: scipy's
    # 'grid-constant' mode; plain 'constant' does not interpolate there and must differ.
    ref = scipy_warp(image, ddf[0].numpy())
    assert np.abs(scipy_warp(image, ddf[0].numpy(), mode="constant") - ref).max() > 0.1

    ours32 = warp(torch.from_numpy(image)[None, None].float(), ddf.float())
    np.testing.assert_allclose(ours32[0, 0].double().numpy(), ref, atol=1e-5, rtol=0)
    ours64 = warp(torch.from_numpy(image)[None, None], ddf)
    np.testing.assert_allclose(ours64[0, 0].numpy(), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_warp_border_padding_matches_nearest_extension(shape):
    rng = np.random.default_rng(3)
    image = rng.uniform(size=shape)
    ddf = smooth_field(shape, 4.0, seed=4, dtype=torch.float64)
    ref = scipy_warp(image, ddf[0].numpy(), mode="nearest")
    ours = warp(torch.from_numpy(image)[None, None], ddf, padding="border")
    np.testing.assert_allclose(ours[0, 0].numpy(), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_field_and_integer_shift(shape):
    ndim = len(shape)
    image = torch.rand(1, 2, *shape, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(warp(image, torch.zeros(1, ndim, *shape)), image, atol=1e-5, rtol=0)

    shift = [2, -3, 1][:ndim]
    ddf = (
        torch.tensor(shift, dtype=torch.float32).view(1, ndim, *[1] * ndim).expand(1, ndim, *shape)
    )
    rolled = torch.roll(image, shifts=[-s for s in shift], dims=tuple(range(2, 2 + ndim)))
    inner = interior(3, ndim)
    np.testing.assert_allclose(
        warp(image, ddf.contiguous())[inner], rolled[inner], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_nearest_warp_matches_map_coordinates_order0(shape):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, size=shape)
    ddf = smooth_field(shape, 3.0, seed=6)
    coords = np.indices(shape) + ddf[0].double().numpy()
    # Exact half-voxel ties round differently in the two libraries; keep away from them.
    tie = np.any(np.abs(np.abs(coords - np.floor(coords)) - 0.5) < 1e-3, axis=0)
    ref = scipy_warp(labels.astype(np.float64), ddf[0].double().numpy(), order=0)
    ours = warp_labels(torch.from_numpy(labels)[None, None], ddf)
    assert ours.dtype == torch.int64
    np.testing.assert_array_equal(ours[0, 0].numpy()[~tie], ref[~tie])
    # Linear-on-one-hot warping of labels with the identity returns them unchanged.
    same = warp_labels(torch.from_numpy(labels)[None, None], torch.zeros_like(ddf), mode="linear")
    np.testing.assert_array_equal(same[0, 0].numpy(), labels)


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)])
def test_warp_gradients_match_grid_sample_autograd(shape):
    ndim = len(shape)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 2, *shape, generator=g, dtype=torch.float64)
    ddf = 1.5 * torch.rand(1, ndim, *shape, generator=g, dtype=torch.float64) - 0.75
    weights = torch.rand(1, 2, *shape, generator=g, dtype=torch.float64)

    image_a, ddf_a = image.clone().requires_grad_(True), ddf.clone().requires_grad_(True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # a single CPU volume is split in two along its first axis
        (warp(image_a, ddf_a) * weights).sum().backward()
    finally:
        torch.set_num_threads(threads)

    image_b, ddf_b = image.clone().requires_grad_(True), ddf.clone().requires_grad_(True)
    axes = [torch.arange(float(n), dtype=torch.float64) for n in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None] + ddf_b
    size = torch.tensor(shape, dtype=torch.float64).view(1, ndim, *[1] * ndim)
    grid = (2 * coords / (size - 1) - 1).flip(1).movedim(1, -1)
    (F.grid_sample(image_b, grid, align_corners=True) * weights).sum().backward()

    torch.testing.assert_close(image_a.grad, image_b.grad)
    torch.testing.assert_close(ddf_a.grad, ddf_b.grad)


def test_warp_broadcasts_a_single_image_over_the_field_batch():
    image = smooth_image((16, 17), seed=0)
    ddf = torch.cat([smooth_field((16, 17), 2.0, seed=s) for s in (1, 2)])
    out = warp(image, ddf)
    assert out.shape == (2, 1, 16, 17)
    torch.testing.assert_close(out[1:], warp(image, ddf[1:]))


# --- integration, composition, inversion, resizing ---------------------------------------------


@pytest.mark.parametrize("shape,amplitude", [((40, 40), 4.0), ((20, 20, 20), 3.0)])
def test_scaling_and_squaring_inverse_and_no_folding(shape, amplitude):
    ndim = len(shape)
    v = smooth_field(shape, amplitude, seed=3, sigma=4.0)
    phi = integrate_velocity(v, steps=7)
    psi = integrate_velocity(-v, steps=7)
    assert phi.abs().max() > 0.5 * amplitude  # a real deformation, not a tiny one
    residual = compose(phi, psi)  # x -> phi(psi(x)) - x
    assert residual[interior(5, ndim)].abs().max() < 0.1
    jac = jacobian_determinant(phi)
    assert jac[interior(2, ndim, leading=1)].min() > 0
    assert torch.equal(integrate_velocity(v, steps=0), v)


@pytest.mark.parametrize("shape", [(40, 40), (20, 20, 20)])
def test_composed_field_equals_sequential_warps(shape):
    ndim = len(shape)
    image = smooth_image(shape, seed=5)
    first = smooth_field(shape, 2.0, seed=6)
    second = smooth_field(shape, 2.0, seed=7)
    sequential = warp(warp(image, first), second)
    composed = warp(image, compose(first, second))
    inner = interior(5, ndim)
    error = (sequential - composed)[inner].abs().max()
    assert error < 1e-2
    # Composing in the wrong order is several times worse: the check has teeth.
    assert (sequential - warp(image, compose(second, first)))[inner].abs().max() > 3 * error


def test_compose_border_padding():
    """``padding="border"`` samples the first field at the nearest edge voxel where the second
    leaves the image (Dual-PRNet's composition); zeros padding drops it there."""
    first = torch.zeros(1, 2, 6, 6)
    first[:, 0] = 1.5
    second = torch.zeros(1, 2, 6, 6)
    second[:, 1] = 10.0  # every point leaves the image along the last axis
    torch.testing.assert_close(compose(first, second, padding="border"), first + second)
    torch.testing.assert_close(compose(first, second), second)


@pytest.mark.parametrize("shape", [(40, 40), (20, 20, 20)])
def test_invert_solves_the_fixed_point_equation(shape):
    ndim = len(shape)
    u = smooth_field(shape, 2.0, seed=8, sigma=4.0)
    inv = invert(u)
    inner = interior(5, ndim)
    assert compose(u, inv)[inner].abs().max() < 1e-3  # phi_u(phi_inv(x)) = x
    assert compose(inv, u)[inner].abs().max() < 0.1  # and the other side, up to interpolation
    v = smooth_field(shape, 2.0, seed=9, sigma=4.0)
    diff = invert(integrate_velocity(v)) - integrate_velocity(-v)
    assert diff[inner].abs().max() < 0.1


def test_resize_field_rescales_values():
    ramp = torch.stack(torch.meshgrid(torch.arange(9.0), torch.arange(17.0), indexing="ij"))[None]
    # u(x) = 0.5 x is the same physical stretch at any resolution: 0.5 x' in the new units.
    up = resize_field(0.5 * ramp, (17, 33))
    ramp_up = torch.stack(torch.meshgrid(torch.arange(17.0), torch.arange(33.0), indexing="ij"))[
        None
    ]
    torch.testing.assert_close(up, 0.5 * ramp_up, atol=1e-5, rtol=0)
    const = torch.ones(1, 3, 5, 9, 9) * torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1, 1)
    down = resize_field(const, (3, 5, 3))
    expected = torch.tensor([1.0 * 2 / 4, 2.0 * 4 / 8, -1.0 * 2 / 8]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(down, expected.expand_as(down), atol=1e-6, rtol=0)


def test_resize_field_by_factor_scales_values_exactly():
    """``factor``: values times exactly ``factor`` (VoxelMorph's ``ResizeTransform``), sizes
    ``floor(n * factor)`` or the given ``size``; not the grids' ratio, which is 3/8 here."""
    const = torch.ones(1, 2, 9, 12) * torch.tensor([1.0, -3.0]).view(1, 2, 1, 1)
    down = resize_field(const, factor=0.5)
    assert down.shape == (1, 2, 4, 6)
    torch.testing.assert_close(down, 0.5 * const[..., :4, :6], atol=1e-6, rtol=0)
    torch.testing.assert_close(resize_field(down, (9, 12), factor=2), const, atol=1e-6, rtol=0)
    assert resize_field(const, factor=1) is const
    with pytest.raises(ValueError, match="size or factor"):
        resize_field(const)
    with pytest.raises(ValueError, match="leaves no voxel"):
        resize_field(const, factor=0.1)


# --- affine ----------------------------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_affine_to_ddf_agrees_with_affine_grid(shape, align_corners):
    ndim = len(shape)
    g = torch.Generator().manual_seed(0)
    theta = torch.cat([torch.eye(ndim), torch.zeros(ndim, 1)], 1).expand(2, -1, -1)
    theta = theta + 0.1 * torch.randn(2, ndim, ndim + 1, generator=g)
    theta[:, :, -1] *= 10  # translations of about a voxel
    image = torch.rand(2, 1, *shape, generator=g)
    ours = warp(image, affine_to_ddf(theta, shape))
    theta_n = affine_to_normalised(theta, shape, align_corners)
    grid = F.affine_grid(theta_n, list(image.shape), align_corners=align_corners)
    ref = F.grid_sample(image, grid, align_corners=align_corners)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(affine_from_normalised(theta_n, shape, align_corners), theta)


def test_affine_conventions_centre_and_physical_units():
    shape = (9, 11, 13)
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([1.0, -2.0, 0.5])
    theta = torch.cat([rot, b[:, None]], 1)[None]
    ddf = affine_to_ddf(theta, shape)
    torch.testing.assert_close(ddf[0, :, 4, 5, 6], b)  # the centre only translates
    p = torch.tensor([1.0, 2.0, 3.0])
    x = p - torch.tensor([4.0, 5.0, 6.0])
    torch.testing.assert_close(ddf[0, :, 1, 2, 3], rot @ x + b - x)
    spacing = torch.tensor([2.0, 0.5, 1.5])
    phys = affine_to_physical(theta, spacing.tolist())[0]
    torch.testing.assert_close(phys[:, :3] @ (spacing * x) + phys[:, 3], spacing * (rot @ x + b))


# --- B-spline --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,spacing", [((23, 30), (4, 5)), ((13, 11, 16), (3, 4, 5))])
def test_bspline_partition_of_unity_and_linear_reproduction(shape, spacing):
    ndim = len(shape)
    grid = control_grid_shape(shape, spacing)
    values = torch.tensor([1.5, -0.5, 2.0][:ndim]).view(1, ndim, *[1] * ndim)
    dense = bspline_to_ddf(values.expand(1, ndim, *grid).contiguous(), shape, spacing)
    torch.testing.assert_close(dense, values.expand(1, ndim, *shape), atol=1e-5, rtol=0)
    # Control point j sits at voxel (j - 1) s; a linear function of the control positions
    # gives the same linear function of the voxel positions.
    pos = torch.stack(
        torch.meshgrid(*[(torch.arange(n) - 1.0) * s for n, s in zip(grid, spacing)], indexing="ij")
    )[None]
    dense = bspline_to_ddf(0.3 * pos + 1.0, shape, spacing)
    vox = torch.stack(torch.meshgrid(*[torch.arange(float(n)) for n in shape], indexing="ij"))[None]
    torch.testing.assert_close(dense, 0.3 * vox + 1.0, atol=1e-4, rtol=0)


def test_bspline_equals_explicit_sum_of_kernels_and_is_smooth():
    shape, spacing = (21, 26), (5, 6)
    grid = control_grid_shape(shape, spacing)
    control = torch.randn(
        1, 2, *grid, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    dense = bspline_to_ddf(control, shape, spacing)[0].numpy()

    def kernel_1d(s):  # a box of width s convolved with itself three times, area-normalised
        k = np.ones(s)
        for _ in range(3):
            k = np.convolve(k, np.ones(s))
        return k / s**3

    def weights(n, s, count):  # weights[x, j]: kernel of control point j (at (j - 1) s) at x
        k = kernel_1d(s)
        centre = (len(k) - 1) // 2
        w = np.zeros((n, count))
        for j in range(count):
            for x in range(n):
                if 0 <= x - (j - 1) * s + centre < len(k):
                    w[x, j] = k[x - (j - 1) * s + centre]
        return w

    kernel = np.outer(kernel_1d(spacing[0]), kernel_1d(spacing[1]))
    np.testing.assert_allclose(bspline_kernel(spacing).numpy(), kernel, atol=1e-7)
    w0 = weights(shape[0], spacing[0], grid[0])
    w1 = weights(shape[1], spacing[1], grid[1])
    expected = np.einsum("xi,cij,yj->cxy", w0, control[0].numpy(), w1)
    np.testing.assert_allclose(dense, expected, atol=1e-6)
    # Cubic smoothness: second differences are bounded by 4 max|c| / s^2 (white noise of the
    # same amplitude reaches 4 max|c|).
    bound = 4 * control.abs().max().item() / min(spacing) ** 2
    assert np.abs(np.diff(dense, 2, axis=1)).max() <= bound
    assert np.abs(np.diff(dense, 2, axis=2)).max() <= bound


# --- Jacobian ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(17, 19), (10, 11, 12)])
def test_jacobian_determinant_matches_simpleitk(shape):
    ndim = len(shape)
    ddf = smooth_field(shape, 1.5, seed=9, sigma=2.0, dtype=torch.float64)
    # SimpleITK: array axes (z, y, x) = ours, vector components (x, y, z) = ours reversed.
    vectors = ddf[0].permute(*range(1, ndim + 1), 0).numpy()[..., ::-1].copy()
    image = sitk.GetImageFromArray(vectors, isVector=True)
    ref = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminantFilter().Execute(image))
    ours = jacobian_determinant(ddf)[0].numpy()
    inner = (slice(1, -1),) * ndim  # the filter's border handling differs from zero padding
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-10, rtol=0)
    assert np.abs(ours[inner] - 1).max() > 0.2  # a field far from the identity


def test_affine_inverse_undoes_the_affine():
    g = torch.Generator().manual_seed(0)
    theta = torch.cat(
        [torch.eye(3) + 0.2 * torch.randn(2, 3, 3, generator=g), torch.randn(2, 3, 1, generator=g)],
        dim=2,
    )
    inverse = affine_inverse(theta)
    points = torch.randn(3, 10, generator=g)
    there = theta[:, :, :3] @ points + theta[:, :, 3:]
    back = inverse[:, :, :3] @ there + inverse[:, :, 3:]
    torch.testing.assert_close(back, points.expand(2, 3, 10), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_compose_affine_is_the_field_then_the_affine_exactly(shape):
    """Each fixed voxel ``x`` goes to ``theta(x + ddf(x))``: checked pointwise, and against
    :func:`compose` (which samples the affine field: equal away from the border)."""
    ndim = len(shape)
    g = torch.Generator().manual_seed(3)
    theta = torch.cat(
        [torch.eye(ndim) + 0.1 * torch.randn(1, ndim, ndim, generator=g), torch.randn(1, ndim, 1)],
        dim=2,
    )
    ddf = smooth_field(shape, 2.0, seed=8)
    composed = compose_affine(ddf, theta)
    centre = torch.tensor([(n - 1) / 2 for n in shape]).view(1, ndim, *[1] * ndim)
    grid = (
        torch.stack(
            torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
        )[None]
        - centre
    )
    moved = grid + ddf
    expected = torch.einsum("bij,bj...->bi...", theta[:, :, :ndim], moved)
    expected = expected + theta[:, :, ndim:].view(1, ndim, *[1] * ndim) - grid
    torch.testing.assert_close(composed, expected, atol=1e-4, rtol=0)
    inner = interior(4, ndim)
    sampled = compose(affine_to_ddf(theta, shape), ddf)
    torch.testing.assert_close(composed[inner], sampled[inner], atol=1e-3, rtol=0)


def test_resize_image_keeps_corners_and_smooths_before_shrinking():
    image = smooth_image((33, 41), seed=2)
    half = resize_image(image, (17, 21))
    assert half.shape[2:] == (17, 21)
    torch.testing.assert_close(
        half[..., 0, 0], F.avg_pool2d(image, 3, 1, 1, count_include_pad=False)[..., 0, 0]
    )
    stripes = torch.tensor([1.0, -1.0]).repeat(16).view(1, 1, 32, 1).expand(1, 1, 32, 8)
    assert resize_image(stripes.contiguous(), (16, 4)).abs().max() < 0.5  # no aliasing to +-1
    assert resize_image(image, (33, 41)) is image
