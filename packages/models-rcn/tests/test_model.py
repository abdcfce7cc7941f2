"""What makes RCN that method, without training: the layers of the official networks, the
identity at initialisation, the affine losses, one warp by the composed field, and composition."""

from __future__ import annotations

import math

import pytest
import torch

import regzoo
from regzoo.errors import ConfigError
from regzoo.spatial import affine_to_ddf, compose, warp
from regzoo.testing import tiny_batch
from regzoo_rcn.networks import VTN, AffineStem, affine_regularizers, stem_output_size


def _smooth_field(shape, amplitude: float, seed: int) -> torch.Tensor:
    """A smooth random displacement ``(1, ndim, *shape)`` of at most about ``amplitude`` voxels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, len(shape), *[4] * len(shape), generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    field = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return field * amplitude / field.abs().max()


def _smooth_image(shape, seed: int) -> torch.Tensor:
    """A smooth image ``(1, 1, *shape)``: a sum of low-frequency sinusoids."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    image = torch.zeros(shape)
    for _ in range(4):
        freq = torch.rand(len(shape), generator=g) * 2 * math.pi / 32
        phase = float(torch.rand((), generator=g)) * 2 * math.pi
        image = image + torch.sin(sum(f * a for f, a in zip(freq, axes)) + phase)
    return image[None, None]


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_stem_layers_follow_the_official_network(ndim):
    """Widths 16 ... 512, strides 2, 2, 2, 1, 2, 1, 2, 1, 2, 1; the last kernel covers the rest."""
    size = [128] * ndim
    stem = AffineStem(ndim, 1, size)
    widths = [layer[0].out_channels for layer in stem.encoder.values()]
    strides = [layer[0].stride[0] for layer in stem.encoder.values()]
    assert widths == [16, 32, 64, 64, 128, 128, 256, 256, 512, 512]
    assert strides == [2, 2, 2, 1, 2, 1, 2, 1, 2, 1]
    assert stem_output_size(size) == (2,) * ndim
    assert stem.conv7_W.kernel_size == (2,) * ndim and stem.conv7_W.out_channels == ndim * ndim
    assert stem.conv7_b.out_channels == ndim and stem.conv7_b.bias is None
    assert all(isinstance(layer[1], torch.nn.LeakyReLU) for layer in stem.encoder.values())
    assert stem.encoder["conv1"][1].negative_slope == 0.1


def test_small_inputs_adapt_and_other_sizes_are_refused():
    """At 64x64 the deepest level runs on 1 voxel (kernel 1); a size the stem was not built for
    is refused in one line naming model.size."""
    assert stem_output_size([64, 64]) == (1, 1)
    assert stem_output_size([40, 48]) == (1, 1)
    stem = AffineStem(2, 1, [64, 64])
    x = torch.rand(2, 1, 64, 64)
    assert stem(x, x).shape == (2, 2, 3)
    with pytest.raises(ValueError, match=r"model\.size"):
        stem(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("ndim", [2, 3])
def test_zero_initialised_stem_is_the_identity(ndim):
    size = [32] * ndim
    stem = AffineStem(ndim, 1, size, channels=4)
    x = torch.rand(2, 1, *size)
    theta = stem(x, torch.rand_like(x))
    assert torch.equal(theta, torch.eye(ndim, ndim + 1).expand(2, -1, -1))
    assert affine_to_ddf(theta, size).abs().max() == 0


def test_vtn_layers_follow_the_official_network():
    """c = 16: encoder widths as the stem's, decoder widths from the concatenations, flow x 20."""
    vtn = VTN(3, 1, channels=16, flow_multiplier=1 / 3)
    assert [layer[0].out_channels for layer in vtn.encoder.values()] == [
        16, 32, 64, 64, 128, 128, 256, 256, 512, 512
    ]  # fmt: skip
    ins = [m[0].in_channels for m in vtn.deconv.values()]
    outs = [m[0].out_channels for m in vtn.deconv.values()]
    assert ins == [512, 512 + 3, 256 + 3, 128 + 3, 64 + 3]
    assert outs == [256, 128, 64, 32, 16]
    assert vtn.upsamp1to0.in_channels == 32 + 3 and vtn.upsamp1to0.kernel_size == (4, 4, 4)
    assert all(m.bias is None for m in vtn.upsamp.values())
    x = torch.rand(1, 1, 32, 32, 32)
    flow = VTN(3, 1, channels=4)(x, x)
    assert flow.shape == (1, 3, 32, 32, 32)
    # odd and non-power-of-two sizes meet their skips
    assert VTN(2, 1, channels=4)(torch.rand(1, 1, 40, 36), torch.rand(1, 1, 40, 36)).shape == (
        1,
        2,
        40,
        36,
    )


def test_vtn_flow_scale():
    """The output is the last layer's times 20 x flow_multiplier."""
    torch.manual_seed(0)
    a = VTN(2, 1, channels=4, flow_multiplier=1.0)
    b = VTN(2, 1, channels=4, flow_multiplier=0.25)
    b.load_state_dict(a.state_dict())
    x, y = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(b(x, y), a(x, y) * 0.25)


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_losses_equal_a_direct_computation(ndim):
    """det: 0.5 (det A - 1)^2; ortho: sum over the eigenvalues mu of A^T A + eps I of
    mu + (1 + eps)^2 / mu, less 2 ndim (1 + eps); both averaged over the batch; 0 at rotations."""
    g = torch.Generator().manual_seed(0)
    a = torch.eye(ndim) + 0.2 * torch.randn(3, ndim, ndim, generator=g, dtype=torch.float64)
    det_loss, ortho_loss = affine_regularizers(a)
    eps = 1e-5
    det_ref = sum(0.5 * (float(torch.linalg.det(m)) - 1) ** 2 for m in a) / 3
    ortho_ref = 0.0
    for m in a:
        mu = torch.linalg.eigvalsh(m.T @ m + eps * torch.eye(ndim, dtype=m.dtype))
        ortho_ref += float((mu + (1 + eps) ** 2 / mu).sum()) - 2 * ndim * (1 + eps)
    assert float(det_loss) == pytest.approx(det_ref, rel=1e-10)
    assert float(ortho_loss) == pytest.approx(ortho_ref / 3, rel=1e-10)
    angle = torch.tensor(0.3, dtype=torch.float64)
    rotation = torch.eye(ndim, dtype=torch.float64)
    rotation[:2, :2] = torch.stack(
        [torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])]
    )
    det_r, ortho_r = affine_regularizers(rotation[None])
    assert abs(float(det_r)) < 1e-12 and abs(float(ortho_r)) < 1e-9


def _model(**overrides):
    torch.manual_seed(0)
    config = {"size": 32, "affine_channels": 4, "base": {"name": "vtn", "channels": 4}}
    return regzoo.create_model("rcn", **{**config, **overrides}).eval()


def _randomise(model: torch.nn.Module, seed: int = 1) -> None:
    """Give the (near-)zero-initialised flow and affine layers random weights, so that the
    untrained model outputs a real affine and real deformable fields."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.affine_stem is not None:
            for conv in (model.affine_stem.conv7_W, model.affine_stem.conv7_b):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 20.0)
        for cascade in model.cascades:
            w = cascade.net.upsamp1to0.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.05)


def test_warped_is_one_warp_of_the_original_moving_image_by_the_composed_field():
    model = _model(n_cascades=3)
    _randomise(model)
    batch = tiny_batch(2, (32, 32), batch_size=2)
    with torch.no_grad():
        out = model(batch)
    assert out.ddf.abs().max() > 1.0 and out.affine is not None
    assert torch.equal(out.warped, warp(batch["moving"], out.ddf))
    # the composed field: affine first (exactly A u + (A - I) x + b), then each cascade by B4
    flows = [out.extras[f"flow_{k}"] for k in range(3)]
    a = out.affine[:, :, :2]
    agg = torch.einsum("bij,bj...->bi...", a, flows[0]) + affine_to_ddf(out.affine, (32, 32))
    for flow in flows[1:]:
        agg = compose(agg, flow)
    torch.testing.assert_close(out.ddf, agg)
    assert model.trajectory(batch)[-1].shape == out.ddf.shape


@pytest.mark.parametrize("ndim", [2, 3])
def test_composed_warp_equals_sequential_warps_on_smooth_images(ndim):
    """warp(m, compose(u1, u2)) equals warp(warp(m, u1), u2) within 1e-2 away from the border,
    for smooth fields of a few voxels; and after the affine stem, A u + (A - I) x + b likewise."""
    shape = (48,) * ndim
    m = _smooth_image(shape, 0)
    u1, u2 = _smooth_field(shape, 3.0, 1), _smooth_field(shape, 3.0, 2)
    inner = (slice(None), slice(None)) + (slice(8, -8),) * ndim
    direct = warp(m, compose(u1, u2))[inner]
    sequential = warp(warp(m, u1), u2)[inner]
    assert float((direct - sequential).abs().max()) < 1e-2
    theta = torch.eye(ndim, ndim + 1)[None].clone()
    theta[0, 0, 1] = 0.05
    theta[0, :, ndim] = 1.5
    affine = affine_to_ddf(theta, shape)
    composed = torch.einsum("bij,bj...->bi...", theta[:, :, :ndim], u2) + affine
    sequential = warp(warp(m, affine), u2)[inner]
    assert float((warp(m, composed)[inner] - sequential).abs().max()) < 1e-2


def test_rep_applies_each_cascade_again_with_shared_weights():
    model = _model(n_cascades=2)
    _randomise(model)
    batch = tiny_batch(2, (32, 32), batch_size=1)
    with torch.no_grad():
        once = model(batch)
        model.rep = 2
        twice = model(batch)
    assert len(once.extras) == 2 and len(twice.extras) == 4
    torch.testing.assert_close(twice.extras["flow_0"], once.extras["flow_0"])
    assert not torch.allclose(twice.ddf, once.ddf)
    assert len(model.trajectory(batch)) == 1 + 4  # the affine stem, then 4 applications
    rep2 = regzoo.create_model("rcn", size=32, rep=2, affine_channels=4)
    assert len(list(rep2.cascades)) == 3  # weights of 3 cascades, applied twice each


def test_loss_terms_and_weights():
    """Similarity only on the final warp; Grad on every cascade's own field (weight 1); det and
    ortho on the affine (0.1 each)."""
    model = _model(n_cascades=2)
    _randomise(model)
    batch = tiny_batch(2, (32, 32), batch_size=2)
    with torch.no_grad():
        out = model(batch)
        terms = model.loss(batch, out)
    ncc = regzoo.build("loss", {"name": "ncc"})
    grad = regzoo.build("loss", {"name": "grad", "penalty": "l2"})
    torch.testing.assert_close(terms["similarity"], ncc(out.warped, batch["fixed"]))
    reg = grad(out.extras["flow_0"]) + grad(out.extras["flow_1"])
    torch.testing.assert_close(terms["regularizer"], reg)
    det, ortho = affine_regularizers(out.affine[:, :, :2])
    total = terms["similarity"] + reg + 0.1 * det + 0.1 * ortho
    torch.testing.assert_close(terms["loss"], total)
    assert float(det) > 0 and float(ortho) > 0


def test_affine_deformable_is_rcn_with_one_vxm_unet_cascade():
    model = regzoo.create_model("affine-deformable", size=32)
    assert model.affine_stem is not None and len(model.cascades) == 1
    assert type(model.cascades[0].net).__name__ == "VxmUnet"
    assert model.cascades[0].flow_multiplier == 1.0
    other = regzoo.create_model("affine-deformable", size=32, base={"name": "vxm-unet",
                                "enc_features": [8, 8], "dec_features": [8, 8, 8]})  # fmt: skip
    assert other.cascades[0].net.out_channels == 8


def test_bad_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="n_cascades"):
        regzoo.create_model("rcn", n_cascades=0, affine=False)
    with pytest.raises(ConfigError, match="rep"):
        regzoo.create_model("rcn", rep=0)
    with pytest.raises(ConfigError, match="model.base"):
        regzoo.create_model("rcn", base={"name": "vtn", "width": 3})
