"""Behaviour of the TransMorph models: any input size, variants' heads, Monte-Carlo sampling,
activation checkpointing, the B-spline transformation model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.interpolate import BSpline

import regzoo
from regzoo.errors import ConfigError, UserError
from regzoo.spatial import affine_to_ddf
from regzoo_transmorph.bspline import bspline_kernel_1d, bspline_to_dense
from regzoo_transmorph.models import TransMorph
from regzoo_transmorph.network import ConvNormAct, _InstanceNormLeakyReLU

SMALL = {"embed_dim": 6, "num_heads": [2, 2, 4, 4]}


def _pair(*shape, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "moving": torch.rand(batch, 1, *shape, generator=g),
        "fixed": torch.rand(batch, 1, *shape, generator=g),
    }


@pytest.mark.parametrize(
    "name",
    [
        "transmorph-tiny",
        "transmorph-diff",
        "transmorph-diff-fullres",
        "transmorph-bspl",
        "transmorph-bayes",
    ],
)
def test_2d_any_size(name):
    model = regzoo.create_model(name, ndim=2, **({} if name == "transmorph-tiny" else SMALL)).eval()
    batch = _pair(45, 70, batch=2)
    with torch.no_grad():
        out = model(batch)
    assert out.ddf.shape == (2, 2, 45, 70) and out.warped.shape == (2, 1, 45, 70)
    assert torch.isfinite(out.ddf).all()


@pytest.mark.slow
def test_150x170x190_registers_at_full_size():
    model = regzoo.create_model("transmorph-tiny").eval()
    with torch.no_grad():
        out = model(_pair(150, 170, 190))
    assert out.ddf.shape == (1, 3, 150, 170, 190)
    assert out.warped.shape == (1, 1, 150, 170, 190)
    assert torch.isfinite(out.ddf).all()


def test_affine_registers_any_size_through_its_input_size():
    # The network sees the pair resized to img_size; the transform, defined on normalised
    # coordinates, is applied to the moving image at its own size.
    model = regzoo.create_model("transmorph-affine", **SMALL, img_size=[32, 32, 64]).eval()
    with torch.no_grad():
        out = model(_pair(20, 21, 22, batch=2))
    assert out.ddf.shape == (2, 3, 20, 21, 22) and out.affine.shape == (2, 3, 4)
    torch.testing.assert_close(out.ddf, affine_to_ddf(out.affine, (20, 21, 22)))
    assert out.extras["shear"].shape == (2, 6)
    with pytest.raises(UserError, match="3D"):
        model(_pair(32, 32))
    with pytest.raises(ConfigError, match="img_size must be 3 positive multiples of 32"):
        regzoo.create_model("transmorph-affine", **SMALL, img_size=[32, 32, 40])


def test_mismatched_pair_is_a_user_error():
    model = regzoo.create_model("transmorph-tiny", ndim=2)
    batch = {"moving": torch.rand(1, 1, 32, 32), "fixed": torch.rand(1, 1, 32, 40)}
    with pytest.raises(UserError, match="one size"):
        model(batch)
    with pytest.raises(UserError, match="2D"):
        model(_pair(32, 32, 32))


def test_segmentation_term_uses_warped_one_hot_labels():
    model = regzoo.create_model("transmorph-tiny", ndim=2, seg_weight=1.0)
    batch = _pair(32, 32)
    batch["moving_label"] = torch.randint(0, 4, (1, 1, 32, 32))
    batch["fixed_label"] = torch.randint(0, 5, (1, 1, 32, 32))
    out = model(batch)
    assert out.warped_label.shape == (1, 5, 32, 32)
    total = out.warped_label.sum(1)
    # Probabilities inside the image; samples from outside it are zero (zero padding).
    torch.testing.assert_close(total[:, 2:-2, 2:-2], torch.ones(1, 28, 28), atol=1e-5, rtol=0)
    assert total.max() <= 1 + 1e-5
    terms = model.loss(batch, out)
    assert "segmentation" in terms
    torch.testing.assert_close(
        terms["loss"], terms["similarity"] + terms["regularizer"] + terms["segmentation"]
    )


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = TransMorph(ndim=2, **SMALL, drop_path_rate=0.0)
    ckpt = TransMorph(ndim=2, **SMALL, drop_path_rate=0.0, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    batch = _pair(64, 64)
    grads = []
    for model in (plain, ckpt):
        out = model(batch)
        model.loss(batch, out)["loss"].backward()
        grads.append((out.ddf.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("shape", [(2, 3, 6, 5, 4), (1, 4, 7, 9)])
def test_fused_norm_activation_equals_the_modules(shape):
    # One autograd node for InstanceNorm + LeakyReLU that keeps only its output: its gradient
    # (exact in float64) and values equal those of the official modules, in channels-last layout.
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    fused = lambda t: _InstanceNormLeakyReLU.apply(t, 1e-5, 0.01)  # noqa: E731
    assert torch.autograd.gradcheck(fused, (x,))
    block = ConvNormAct(len(shape) - 2, shape[1], 3).double()
    conv, norm, act = block
    weight = torch.randn(shape[0], 3, *shape[2:], dtype=torch.float64)
    outputs = []
    for forward in (block, lambda t: F.leaky_relu(norm(conv(t)), act.negative_slope)):
        x.grad = None
        y = forward(x)
        (y * weight).sum().backward()
        outputs.append((y.detach(), x.grad.clone()))
    torch.testing.assert_close(outputs[0], outputs[1])
    layout = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    assert outputs[0][0].is_contiguous(memory_format=layout)


@pytest.mark.parametrize("name,grid", [("transmorph-diff", 32), ("transmorph-diff-fullres", 64)])
def test_diff_squares_the_head_output_without_prescaling(name, grid):
    # Official TransMorph-diff: velocity = 2**7 * head output (voxels of the integration grid),
    # the half-resolution displacement upsampled without rescaling; -fullres integrates at full
    # resolution. A constant head output c moves every interior voxel by 128 c in both.
    model = regzoo.create_model(name, ndim=2, **SMALL).eval()
    with torch.no_grad():
        model.flow_mean.weight.zero_()
        model.flow_mean.bias.copy_(torch.tensor([0.01, -0.02]))
        out = model(_pair(64, 64))
    torch.testing.assert_close(
        out.ddf[0, :, 28:36, 28:36].mean((1, 2)), torch.tensor([1.28, -2.56])
    )
    assert out.velocity.shape == (1, 2, grid, grid)
    assert set(out.extras) == {"flow_mean", "flow_log_sigma", "ddf_integrated"}
    assert out.extras["ddf_integrated"].shape == (1, 2, grid, grid)
    if grid == 64:  # no upsampling: the field is the integrated one, from the full decoder
        assert torch.equal(out.ddf, out.extras["ddf_integrated"]) and hasattr(model, "up4")


def test_diff_samples_only_in_training():
    model = regzoo.create_model("transmorph-diff", ndim=2, **SMALL, drop_path_rate=0.0)
    with torch.no_grad():
        model.flow_sigma.bias.fill_(0.0)  # unit variance, so samples differ visibly
        batch = _pair(32, 32)
        model.train()
        a, b = model(batch).ddf, model(batch).ddf
        model.eval()
        c, d = model(batch).ddf, model(batch).ddf
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


def test_bayes_dropout_stays_on_and_sample_moments():
    model = regzoo.create_model("transmorph-bayes", ndim=2, **SMALL).eval()
    batch = _pair(32, 32)
    with torch.no_grad():
        assert not torch.equal(model(batch).ddf, model(batch).ddf)
        torch.manual_seed(1)
        draws = torch.stack([model(batch).ddf for _ in range(5)])
    torch.manual_seed(1)
    out = model.sample(batch, k=5)
    torch.testing.assert_close(out.ddf, draws.mean(0))
    torch.testing.assert_close(
        out.uncertainty, draws.var(0).sum(1, keepdim=True), rtol=1e-4, atol=1e-12
    )
    assert out.uncertainty.shape == (1, 1, 32, 32) and out.extras[
        "appearance_uncertainty"
    ].shape == (1, 1, 32, 32)
    assert out.uncertainty.max() > 0
    with pytest.raises(ConfigError):
        model.sample(batch, k=1)


def test_bayes_min_mse_keeps_the_brute_force_choice_per_pair():
    # Official protocol: of the Monte-Carlo samples keep the one whose warped image has the lowest
    # MSE to the fixed image. Brute force: draw the same samples, take the argmin per pair.
    model = regzoo.create_model("transmorph-bayes", ndim=2, **SMALL, bayes_select="min_mse").eval()
    batch, k = _pair(32, 32, batch=2), 6
    torch.manual_seed(0)
    with torch.no_grad():
        draws = [model(batch) for _ in range(k)]
    mse = torch.stack([(d.warped - batch["fixed"]).pow(2).flatten(1).mean(1) for d in draws])
    pick = mse.argmin(0)
    assert pick[0] != pick[1]  # (seed 0) the two pairs keep different samples
    torch.manual_seed(0)
    out = model.sample(batch, k=k)
    assert torch.equal(out.extras["selected_sample"], pick)
    for b in range(2):
        assert torch.equal(out.ddf[b], draws[pick[b]].ddf[b])
        assert torch.equal(out.warped[b], draws[pick[b]].warped[b])
    # The uncertainty is the spread of the same samples, whichever field is returned.
    model.bayes_select = "mean"
    torch.manual_seed(0)
    mean = model.sample(batch, k=k)
    torch.testing.assert_close(mean.ddf, torch.stack([d.ddf for d in draws]).mean(0))
    torch.testing.assert_close(out.uncertainty, mean.uncertainty)
    assert "selected_sample" not in mean.extras
    with pytest.raises(ConfigError, match="bayes_select"):
        regzoo.create_model("transmorph-bayes", ndim=2, **SMALL, bayes_select="median")


def test_bayes_without_dropout_has_zero_uncertainty():
    model = regzoo.create_model("transmorph-bayes", ndim=2, **SMALL, mc_drop=0.0).eval()
    batch = _pair(32, 32)
    out = model.sample(batch, k=3)
    assert torch.all(out.uncertainty == 0)
    with torch.no_grad():
        torch.testing.assert_close(out.ddf, model(batch).ddf)


def test_bspline_kernel_is_the_cubic_bspline_and_a_partition_of_unity():
    k = bspline_kernel_1d(3).double()
    assert k.numel() == 11
    torch.testing.assert_close(k[5], torch.tensor(2 / 3, dtype=torch.float64), rtol=0, atol=1e-7)
    # Taps spaced by the stride sum to one at every phase.
    for phase in range(3):
        torch.testing.assert_close(
            k[phase::3].sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("spacing", [1, 3, 5])
def test_bspline_to_dense_matches_scipy(spacing):
    n = 23
    rng = np.random.default_rng(spacing)
    m = int(np.ceil((n - 1) / spacing)) + 3
    coeffs = rng.standard_normal(m)
    # Control point j is centred at voxel (j - 1) * s: its cubic basis has knots (j - 3) s ... (j + 1) s.
    knots = (np.arange(m + 4) - 3.0) * spacing
    expected = BSpline(knots, coeffs, 3)(np.arange(n))
    control = torch.tensor(coeffs, dtype=torch.float64).view(1, 1, m, 1).expand(1, 1, m, 6)
    ours = bspline_to_dense(control.contiguous(), (n, 4), (spacing, 1))
    # The second axis holds equal control values: the interpolant is constant along it.
    np.testing.assert_allclose(ours[0, 0, :, 0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(ours[0, 0, :, 2].numpy(), expected, atol=1e-6)


def test_bspline_rejects_a_wrong_grid_and_bad_cps():
    with pytest.raises(ValueError, match="control grid"):
        bspline_to_dense(torch.zeros(1, 2, 5, 5), (20, 20), (3, 3))
    with pytest.raises(ConfigError, match="cps"):
        regzoo.create_model("transmorph-bspl", ndim=2, cps=[3, 3, 3])
