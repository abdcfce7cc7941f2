"""DiffuseMorph's training draw, one-pass inference and trajectory (Kim, Han, Ye, ECCV 2022)."""

from __future__ import annotations

import pytest
import torch

import regzoo
from regzoo.errors import ConfigError
from regzoo.spatial import warp
from regzoo.testing import check_model, parametrize_models, tiny_batch
from regzoo_diffusemorph.model import scale_intensities


@parametrize_models("diffusemorph*", slow_dims=(3,))
def test_diffusemorph_conformance(name, ndim):
    check_model(name, ndim)


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return regzoo.create_model("diffusemorph", ndim=2, **kw)


def _spy(module: torch.nn.Module) -> list[tuple[torch.Tensor, ...]]:
    calls: list[tuple[torch.Tensor, ...]] = []
    module.register_forward_pre_hook(lambda _, args: calls.append(tuple(a.clone() for a in args)))
    return calls


def test_intensities_are_scaled_to_minus_one_one():
    image = torch.rand(2, 1, 16, 16) * 300 + 40
    scaled = scale_intensities(image)
    assert torch.allclose(scaled.flatten(1).amin(1), torch.tensor(-1.0))
    assert torch.allclose(scaled.flatten(1).amax(1), torch.tensor(1.0))


def test_training_draws_a_step_and_noises_the_fixed_image():
    """In training the U-Net sees ``(m, f, q(f, t))`` at a random ``t``, and the loss is
    ``MSE(eps_hat, eps) + lambda (LNCC + Grad)``."""
    model = _model().train()
    batch = tiny_batch(2, (32, 32))
    calls = _spy(model.denoise_fn)
    out = model(batch)
    x, t = calls[0]
    m, f = scale_intensities(batch["moving"]), scale_intensities(batch["fixed"])
    torch.testing.assert_close(x[:, :2], torch.cat([m, f], 1))
    expected = model.schedule.q_sample(f, t, out.extras["noise"])
    torch.testing.assert_close(x[:, 2:], expected)
    terms = model.loss(batch, out)
    mse = ((out.extras["latent"] - out.extras["noise"]) ** 2).mean()
    torch.testing.assert_close(terms["noise"], mse)
    torch.testing.assert_close(
        terms["loss"], mse + 20.0 * (terms["similarity"] + terms["regularizer"])
    )
    # the similarity compares the warped moving image mapped to [0, 1] with (f + 1) / 2
    lncc = regzoo.build("loss", {"name": "lncc", "window": 9})
    torch.testing.assert_close(terms["similarity"], lncc(warp((m + 1) / 2, out.ddf), (f + 1) / 2))
    assert "anchor" not in terms  # the authors' loss has no anchor term


def test_identity_anchor_pulls_the_zero_latent_field_to_the_identity():
    """With ``identity_anchor`` w, training adds ``w * mean |G(m, 0)|^2``; inference is unchanged."""
    model = _model(identity_anchor=0.5).train()
    batch = tiny_batch(2, (32, 32))
    calls = _spy(model.field_fn)
    out = model(batch)
    m = scale_intensities(batch["moving"])
    (anchor_input,) = calls[1]
    torch.testing.assert_close(anchor_input, torch.cat([m, torch.zeros_like(m)], 1))
    terms = model.loss(batch, out)
    zero_field = model.field_fn(anchor_input)
    torch.testing.assert_close(terms["anchor"], zero_field.pow(2).sum(1).mean())
    expected = terms["noise"] + 20.0 * (terms["similarity"] + terms["regularizer"])
    torch.testing.assert_close(terms["loss"], expected + 0.5 * terms["anchor"])
    calls.clear()
    model.eval()(batch)
    assert len(calls) == 1
    with pytest.raises(ConfigError, match="identity_anchor"):
        _model(identity_anchor=-1.0)


def test_inference_is_one_pass_at_t0_with_the_fixed_image():
    model = _model().eval()
    batch = tiny_batch(2, (32, 32))
    calls = _spy(model.denoise_fn)
    with torch.no_grad():
        out = model(batch)
    ((x, t),) = calls
    assert (t == 0).all()
    torch.testing.assert_close(x[:, 2:], x[:, 1:2])
    assert "noise" not in out.extras and set(model.loss(batch, out)) == {
        "similarity",
        "regularizer",
        "loss",
    }


def test_lambda_is_2_in_the_2d_configuration():
    cfg = regzoo.get_entry("model", "diffusemorph-2d").default_config()
    assert cfg["loss_lambda"] == 2.0 and cfg["padding"] == "border"
    assert regzoo.get_entry("model", "diffusemorph").default_config()["loss_lambda"] == 20.0


@pytest.mark.parametrize("steps", [None, 4])
def test_trajectory_feeds_gamma_times_the_latent_to_the_deformation_network(steps):
    """The spy sees ``concat(m, gamma * eps_hat)`` for every ``gamma`` in ``linspace(0, 1, n)``:
    the states come from the network, not from scaling the final field."""
    model = _model().eval()
    batch = tiny_batch(2, (32, 32), batch_size=1)
    with torch.no_grad():
        one_pass = model(batch)
        calls = _spy(model.field_fn)
        fields = model.trajectory(batch, steps)
    n = steps or 7
    assert len(fields) == len(calls) == n
    m = scale_intensities(batch["moving"])
    latent = one_pass.extras["latent"]
    for gamma, (x,) in zip(torch.linspace(0, 1, n).tolist(), calls):
        torch.testing.assert_close(x[:, :1], m)
        torch.testing.assert_close(x[:, 1:], gamma * latent)
    torch.testing.assert_close(fields[-1], one_pass.ddf)
    assert not torch.allclose(fields[n // 2], fields[-1] * 0.5, atol=1e-6)


def test_trajectory_keeps_training_mode_and_rejects_bad_steps():
    model = _model().train()
    model.trajectory(tiny_batch(2, (32, 32), batch_size=1), 2)
    assert model.training
    with pytest.raises(ValueError, match="at least 1"):
        model.trajectory(tiny_batch(2, (32, 32), batch_size=1), 0)


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="padding"):
        _model(padding="reflect")
    with pytest.raises(ConfigError, match="encoder_nc"):
        _model(encoder_nc=[8, 8])


def test_presets_are_the_official_schedules():
    from regzoo.config import resolve_config

    three = resolve_config("diffusemorph", overrides=["preset=paper"])
    assert (three.train.lr, three.train.batch_size) == (2e-4, 1)
    two = resolve_config("diffusemorph-2d", overrides=["preset=paper"])
    assert (two.train.lr, two.train.batch_size, two.model.loss_lambda) == (5e-6, 1, 2.0)
    quick = resolve_config("diffusemorph")
    assert quick.train.steps == 600 and quick.data.ndim == 2 and quick.model.ndim == 2
