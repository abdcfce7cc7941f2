"""LNCC: box sums and the closed-form gradient against the dense-kernel form, and the
value against the outside references MONAI (LocalNormalizedCrossCorrelationLoss) and neurite (the
NCC that voxelmorph now points to)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regzoo.losses.lncc import LNCC, box_sum, lncc, local_cc


def dense_terms(pred, target, window):
    """``cross, var_I, var_J`` written as VoxelMorph writes them, with a dense ones kernel."""
    ndim = pred.dim() - 2
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    channels = pred.shape[1]
    kernel = torch.ones(channels, 1, *([window] * ndim), dtype=pred.dtype)

    def s(x):
        return conv(x, kernel, padding=window // 2, groups=channels)

    n = window**ndim
    s_i, s_j = s(pred), s(target)
    u_i, u_j = s_i / n, s_j / n
    cross = s(pred * target) - u_j * s_i - u_i * s_j + u_i * u_j * n
    var_i = s(pred * pred) - 2 * u_i * s_i + u_i * u_i * n
    var_j = s(target * target) - 2 * u_j * s_j + u_j * u_j * n
    return cross, var_i, var_j


def dense_lncc(pred, target, window=9, eps=1e-5):
    cross, var_i, var_j = dense_terms(pred, target, window)
    return -(cross * cross / (var_i * var_j + eps)).mean()


def textured(shape, seed, dtype=torch.float64):
    """Smooth blobs plus noise in [0, 1]-ish: every 9-window has clear variance."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(shape[0], shape[1], *[max(s // 4, 2) for s in shape[2:]], generator=g)
    mode = "bilinear" if len(shape) == 4 else "trilinear"
    smooth = F.interpolate(low, size=shape[2:], mode=mode, align_corners=True)
    return (smooth + 0.2 * torch.rand(shape, generator=g)).to(dtype)


SHAPES = [(2, 2, 13, 17), (1, 1, 9, 11, 10), (2, 1, 6, 12, 7)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("window", [9, 5])
def test_value_and_gradients_match_dense_kernel_form(shape, window):
    pred = textured(shape, 0).requires_grad_()
    target = (0.6 * pred.detach() + 0.5 * textured(shape, 1)).requires_grad_()
    ours = lncc(pred, target, window)
    grads = torch.autograd.grad(ours, (pred, target))
    ref = dense_lncc(pred, target, window)
    ref_grads = torch.autograd.grad(ref, (pred, target))
    assert abs(ours.item() - ref.item()) < 1e-5
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() <= 1e-5 * r.abs().max()


def test_gradient_of_pred_alone_and_gradcheck():
    pred = textured((1, 2, 7, 8), 2).requires_grad_()
    target = textured((1, 2, 7, 8), 3)
    (g,) = torch.autograd.grad(lncc(pred, target, 3), pred)
    (r,) = torch.autograd.grad(dense_lncc(pred, target, 3), pred)
    assert torch.allclose(g, r, rtol=0, atol=1e-12)
    small = (textured((1, 1, 5, 4, 6), 4).requires_grad_(), textured((1, 1, 5, 4, 6), 5))
    assert torch.autograd.gradcheck(lambda a, b: lncc(a, b, 3), small)


def test_float32_matches_dense_float64():
    shape = (1, 1, 24, 20, 22)
    pred, target = textured(shape, 6), textured(shape, 7)
    ref = dense_lncc(pred, target).item()
    assert abs(lncc(pred.float(), target.float()).item() - ref) < 1e-5


def test_box_sum_is_a_zero_padded_ones_convolution_per_axis():
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    ref = F.conv2d(x, torch.ones(3, 1, 5, 3, dtype=x.dtype), padding=(2, 1), groups=3)
    assert torch.allclose(box_sum(x, (5, 3)), ref, atol=1e-12)
    # windows wider than the image: every output sums the whole (zero-padded) extent
    assert torch.allclose(box_sum(x, 21), x.sum((2, 3), keepdim=True).expand_as(x), atol=1e-12)


def test_equals_monai_rectangular_lncc_on_textured_images():
    """MONAI: ncc = (cross² + smooth_nr) / (max(var_T, smooth_dr) max(var_P, smooth_dr)).

    Where every local variance exceeds ``smooth_dr`` (textured images) MONAI's ncc is
    ``cross² / (var_I var_J)``, which is ours with ``eps = 0`` (exactly, up to float sums), and ours
    with the VoxelMorph ``eps = 1e-5`` differs by ``cc · eps / (var_I var_J + eps)``: below 1e-5.
    """
    monai_losses = pytest.importorskip("monai.losses")
    for shape in [(2, 1, 20, 24), (1, 2, 12, 14, 11)]:
        pred = textured(shape, 8).requires_grad_()
        target = 0.7 * pred.detach() + 0.4 * textured(shape, 9)
        monai = monai_losses.LocalNormalizedCrossCorrelationLoss(
            spatial_dims=len(shape) - 2, kernel_size=9, kernel_type="rectangular"
        )
        ref = monai(pred, target)
        (ref_grad,) = torch.autograd.grad(ref, pred)
        _, var_i, var_j = dense_terms(pred.detach(), target, 9)
        assert min(var_i.min(), var_j.min()) > 1e-5  # textured: MONAI's clamp is inactive
        exact = lncc(pred, target, 9, eps=0.0)
        (grad,) = torch.autograd.grad(exact, pred)
        assert abs(exact.item() - ref.item()) < 1e-9
        assert (grad - ref_grad).abs().max() <= 1e-7 * ref_grad.abs().max()
        assert abs(lncc(pred, target, 9).item() - ref.item()) < 1e-5


def test_epsilon_handling_differs_from_monai_on_faint_and_flat_regions():
    """Faint but perfectly correlated images (local variances ~1e-6 < 1e-5).

    VoxelMorph/regzoo add eps to the product, ``v² / (v² + eps) ≈ 0``; MONAI clamps each variance at
    ``smooth_dr``, ``v² / smooth_dr²``. Both lose the true cc = 1; the values are pinned here.
    Where an image is flat both give cc = 0 (no NaN), with a finite gradient.
    """
    monai_losses = pytest.importorskip("monai.losses")
    monai = monai_losses.LocalNormalizedCrossCorrelationLoss(
        spatial_dims=2, kernel_size=9, kernel_type="rectangular"
    )
    monai_none = monai_losses.LocalNormalizedCrossCorrelationLoss(
        spatial_dims=2, kernel_size=9, kernel_type="rectangular", reduction="none"
    )
    image = 5e-4 * textured((1, 1, 24, 24), 10)
    cross, var_i, var_j = dense_terms(image, image, 9)
    assert var_i.max() < 1e-5
    ours_expected = -(cross**2 / (var_i * var_j + 1e-5)).mean()
    monai_expected = -(cross**2 / (var_i.clamp(min=1e-5) * var_j.clamp(min=1e-5))).mean()
    ours, ref = lncc(image, image), monai(image, image)
    assert abs(ours.item() - ours_expected.item()) < 1e-12
    assert abs(ref.item() - monai_expected.item()) < 1e-12
    assert ours.item() > -1e-4 and ref.item() < ours.item() - 0.01

    # zero images are flat with their padding; a constant 0.5 is flat away from the border
    other = textured((1, 1, 24, 24), 11)
    zero = torch.zeros_like(other, requires_grad=True)
    for b in (zero * 1.0, other):
        value = lncc(zero, b)
        (grad,) = torch.autograd.grad(value, zero)
        assert value.item() == 0.0 and monai(zero, b).item() == 0.0
        assert torch.isfinite(grad).all()
    flat = torch.full_like(other, 0.5)
    for b in (flat, other):
        interior = (slice(None), slice(None), slice(4, -4), slice(4, -4))
        assert local_cc(flat, b)[interior].abs().max() < 1e-12
        assert monai_none(flat, b)[interior].abs().max() < 1e-12


def test_equals_neurite_ncc():
    """neurite.nn.modules.NCC (voxelmorph 0.3's pointer for its NCC) returns mean cc: -ours."""
    neurite_modules = pytest.importorskip("neurite.nn.modules")
    for shape in [(2, 2, 15, 13), (1, 1, 10, 12, 11)]:
        pred = textured(shape, 12).requires_grad_()
        target = 0.5 * pred.detach() + 0.5 * textured(shape, 13)
        ref = -neurite_modules.NCC(window_size=9)(pred, target).mean()
        ours = lncc(pred, target)
        assert abs(ours.item() - ref.item()) < 1e-10
        g, r = (torch.autograd.grad(v, pred)[0] for v in (ours, ref))
        assert (g - r).abs().max() <= 1e-8 * r.abs().max()


@pytest.mark.parametrize("a, b", [(2.5, 0.3), (0.1, -4.0), (-3.0, 1.0)])
def test_affine_intensity_change_is_perfect_correlation_in_the_interior(a, b):
    """LNCC(I, aI + b) = -1 in the interior (the squared form also for a < 0)."""
    image = 100.0 * textured((1, 1, 20, 22, 18), 14)
    cc = local_cc(image, a * image + b, window=5)
    interior = cc[..., 2:-2, 2:-2, 2:-2]
    assert (interior - 1).abs().max() < 1e-9
    assert abs(-interior.mean().item() + 1) < 1e-9
    # at the border the zero padding, which the intensity change does not map, breaks the relation
    shifted = local_cc(image, image + 100.0, window=5)
    assert (shifted[..., 2:-2, 2:-2, 2:-2] - 1).abs().max() < 1e-9 and shifted.min() < 0.9


def test_module_registry_and_validation():
    import regzoo

    loss = regzoo.build("loss", {"name": "lncc", "window": 5})
    assert isinstance(loss, LNCC) and loss.window == 5 and loss.eps == 1e-5
    x, y = textured((1, 1, 9, 9), 15), textured((1, 1, 9, 9), 16)
    assert torch.allclose(loss(x, y), dense_lncc(x, y, 5))
    with pytest.raises(ValueError, match="odd"):
        LNCC(window=4)
    with pytest.raises(ValueError, match="differ"):
        lncc(x, y[..., :-1])


def test_half_precision_is_computed_in_float32():
    x, y = textured((1, 1, 16, 16), 17), textured((1, 1, 16, 16), 18)
    value = lncc(x.half(), y.half())
    assert value.dtype == torch.float32
    assert abs(value.item() - lncc(x.half().float(), y.half().float()).item()) < 1e-6
