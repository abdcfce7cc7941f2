"""The ISTN model: registry entries, losses per variant, structures, refinement, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import regzoo
from regzoo.engine.instance import instance_optimise
from regzoo.engine.optim import make_optimizer
from regzoo.errors import ConfigError, UserError
from regzoo.models import Optimizers
from regzoo.spatial import affine_from_normalised, affine_to_ddf
from regzoo_istn import MODELS
from regzoo_istn.structures import label_structure, landmark_heatmap

SIZE = 40  # smallest size the STN trunk takes with an ITN (>= 36, divisible by 4)


def _batch(ndim: int = 2, size: int = SIZE, b: int = 2, seed: int = 0, labels: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = (size,) * ndim
    batch = {
        "moving": torch.rand(b, 1, *shape, generator=g),
        "fixed": torch.rand(b, 1, *shape, generator=g),
    }
    if labels:
        batch["moving_label"] = torch.randint(0, 4, (b, 1, *shape), generator=g)
        batch["fixed_label"] = torch.randint(0, 4, (b, 1, *shape), generator=g)
    return batch


def test_the_eight_models_are_configs_of_one_class():
    assert sorted(MODELS) == sorted(regzoo.list_models("*stn-*"))
    assert len(MODELS) == 8
    for name in MODELS:
        prefix, variant, transformer = name.split("-")
        entry = regzoo.get_entry("model", name)
        assert entry.paper.year == 2019 and "1907.09200" in entry.paper.url
        assert {"quick", "paper"} <= set(entry.presets)
        model = regzoo.create_model(name, size=SIZE)
        assert type(model).__name__ == "ISTN"
        assert (model.variant, model.transformer) == (variant, transformer)
        assert (model.itn is None) == (prefix == "stn")


def test_paper_defaults():
    model = regzoo.create_model("istn-e-bspline")
    assert model.size == (128, 128) and model.stn.spacing == [10, 10]
    assert model.stn.max_displacement == 0.2
    assert model.io_iterations == 50 and model.io_lr == 1e-3
    assert model.itn.activation == "leaky_relu"
    affine = regzoo.create_model("istn-e-affine", size=SIZE)
    assert affine.stn.bounds == (0.1, math.pi / 4, 0.2, math.pi / 4)
    assert regzoo.create_model("istn-i-bspline", ndim=3, size=36).io_lr == 5e-4
    with pytest.raises(ConfigError):
        regzoo.create_model("istn-e-affine", size=38)  # the ITN halves the size twice
    with pytest.raises(ConfigError):
        regzoo.create_model("istn-e-affine", variant="x")


def test_translation_bound_is_in_normalised_units():
    """``max_translation`` bounds the translation applied before rotation and scaling, in
    ``[-1, 1]`` units: 0.1 (official) is 5% of the image, 0.2 covers 10% of the size."""
    for bound in (0.1, 0.2):
        model = regzoo.create_model("stn-u-affine", size=SIZE, max_translation=bound)
        with torch.no_grad():
            model.stn.translation.bias.fill_(50.0)  # saturated: tanh = 1 on both axes
        ddf = model(_batch(labels=False)).ddf
        torch.testing.assert_close(ddf, torch.full_like(ddf, bound * (SIZE - 1) / 2))


@pytest.mark.parametrize(
    "name", ["istn-e-affine", "istn-i-bspline", "stn-u-affine", "stn-s-bspline"]
)
def test_forward_outputs(name):
    model = regzoo.create_model(name, size=SIZE)
    batch = _batch()
    out = model(batch)
    assert out.warped.shape == batch["moving"].shape
    assert out.ddf.shape == (2, 2, SIZE, SIZE)
    assert out.warped_label.shape == (2, 4, SIZE, SIZE)
    assert (out.affine is not None) == name.endswith("affine")
    assert ("itn_moving" in out.extras) == name.startswith("istn")


def test_affine_models_start_at_identity():
    for ndim in (2, 3):
        model = regzoo.create_model("istn-e-affine", ndim=ndim, size=SIZE)
        batch = _batch(ndim, b=1)
        out = model(batch)
        assert out.ddf.abs().max() < 1e-4
        torch.testing.assert_close(out.warped, batch["moving"], atol=1e-4, rtol=0)


def test_loss_terms_per_variant():
    batch = _batch()
    expected = {"e": {"itn", "stn_s"}, "i": {"stn_i", "stn_s"}, "s": {"stn_s"}, "u": {"stn_u"}}
    for variant, keys in expected.items():
        model = regzoo.create_model("istn-e-affine", variant=variant, size=SIZE)
        terms = model.loss(batch, model(batch))
        assert set(terms) == keys | {"loss"}
        torch.testing.assert_close(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))


def test_explicit_loss_is_the_official_sum_of_mses():
    model = regzoo.create_model("istn-e-affine", size=SIZE)
    batch = _batch()
    out = model(batch)
    s_m = (batch["moving_label"] > 0).float()
    s_f = (batch["fixed_label"] > 0).float()
    m_p, f_p = out.extras["itn_moving"], out.extras["itn_fixed"]
    itn = ((m_p - s_m) ** 2).mean() + ((f_p - s_f) ** 2).mean()
    # Identity transform at initialisation: S_M∘θ is S_M up to float rounding.
    stn_s = ((s_m - s_f) ** 2).mean()
    terms = model.loss(batch, out)
    torch.testing.assert_close(terms["itn"], itn)
    torch.testing.assert_close(terms["stn_s"], stn_s, atol=1e-4, rtol=0)


def test_structure_variants_need_structures_and_u_does_not():
    batch = _batch(labels=False)
    for name in ("istn-e-affine", "istn-i-affine", "stn-s-affine"):
        model = regzoo.create_model(name, size=SIZE)
        with pytest.raises(UserError, match="structures of interest"):
            model.loss(batch, model(batch))
    model = regzoo.create_model("stn-u-affine", size=SIZE)
    assert torch.isfinite(model.loss(batch, model(batch))["loss"])


def test_label_structure_maps():
    labels = torch.tensor([[[[0, 1, 2], [3, 0, 2]]]])
    assert label_structure(labels).tolist() == [[[[0, 1, 1], [1, 0, 1]]]]
    assert label_structure(labels, [2]).tolist() == [[[[0, 0, 1], [0, 0, 1]]]]
    model = regzoo.create_model("istn-e-affine", size=SIZE, structure_labels=[1, 3])
    batch = _batch()
    s_m, _ = model.structure_maps(batch)
    torch.testing.assert_close(s_m, torch.isin(batch["moving_label"], torch.tensor([1, 3])).float())


def test_landmark_heatmaps_against_scipy_gaussian():
    sigma = 2.0
    shape = (21, 24)
    points = torch.tensor([[[5.0, 7.0], [15.0, 16.0], [float("nan"), 3.0]]])
    heat = landmark_heatmap(points, shape, sigma)[0, 0].numpy()
    reference = np.zeros(shape)
    for p in ([5, 7], [15, 16]):
        delta = np.zeros(shape)
        delta[tuple(p)] = 1.0
        blurred = ndimage.gaussian_filter(delta, sigma, mode="constant", truncate=8.0)
        reference = np.maximum(reference, blurred / blurred.max())
    np.testing.assert_allclose(heat, reference, atol=1e-6)


def test_landmarks_as_structures():
    model = regzoo.create_model("istn-i-affine", size=SIZE, heatmap_sigma=3.0)
    batch = _batch(labels=False)
    batch["moving_landmarks"] = torch.tensor([[[10.0, 12.0], [30.0, 20.0]]] * 2)
    batch["fixed_landmarks"] = batch["moving_landmarks"] + 2.0
    s_m, s_f = model.structure_maps(batch)
    assert s_m[0, 0, 10, 12] == 1.0 and s_f[0, 0, 12, 14] == 1.0
    terms = model.loss(batch, model(batch))
    assert torch.isfinite(terms["loss"])


def test_other_image_sizes_are_resampled_to_the_network_size():
    model = regzoo.create_model("istn-e-affine", size=SIZE)
    with torch.no_grad():
        for head in (model.stn.translation, model.stn.rotation):
            head.bias.fill_(0.3)
    small, big = _batch(size=SIZE), _batch(size=72)
    out = model(big)
    assert out.ddf.shape == (2, 2, 72, 72)
    theta_n = model.stn(
        torch.cat(
            [model.itn(model._to_size(big["moving"])), model.itn(model._to_size(big["fixed"]))], 1
        )
    )
    # The same normalised transform, expressed on the big images' voxel grid.
    torch.testing.assert_close(
        out.ddf, affine_to_ddf(affine_from_normalised(theta_n, (72, 72)), (72, 72))
    )
    assert out.extras["stn_ddf"].shape == (2, 2, SIZE, SIZE)
    assert torch.isfinite(model.loss(big, out)["loss"]) and model(small).ddf.shape[2:] == (
        SIZE,
        SIZE,
    )


def test_refinement_objective_reads_no_labels():
    model = regzoo.create_model("istn-e-affine", size=SIZE)
    batch = _batch()
    unlabelled = {k: v for k, v in batch.items() if k in ("moving", "fixed")}
    shuffled = dict(
        batch, moving_label=batch["moving_label"].flip(-1), fixed_label=batch["fixed_label"] * 0
    )
    values = [model.objective(b, model(b)) for b in (batch, unlabelled, shuffled)]
    assert values[0] == values[1] == values[2]
    # At initialisation θ is the identity, so the objective is ‖M' − F'‖².
    out = model(batch)
    expected = ((out.extras["itn_moving"] - out.extras["itn_fixed"]) ** 2).mean()
    torch.testing.assert_close(values[0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["istn-e-affine", "istn-i-bspline"])
def test_refinement_updates_the_stn_only(name):
    torch.manual_seed(0)
    model = regzoo.create_model(name, size=SIZE)
    assert {id(p) for p in model.io_parameters()} == {id(p) for p in model.stn.parameters()}
    # Move off the zero-initialised heads so that the objective has a gradient everywhere.
    optim = Optimizers({k: make_optimizer(p, lr=1e-2) for k, p in model.parameter_groups().items()})
    batch = _batch()
    for step in range(3):
        model.training_step(batch, optim, step)
    itn_before = {k: v.clone() for k, v in model.itn.state_dict().items()}
    stn_before = {k: v.clone() for k, v in model.stn.state_dict().items()}
    unlabelled = {"moving": batch["moving"], "fixed": batch["fixed"]}
    # The lead's `regzoo register --iterations N` loop, done by hand on the model itself.
    opt = make_optimizer(model.io_parameters(), lr=model.io_lr)
    for _ in range(3):
        loss = model.objective(unlabelled, model(unlabelled))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.itn.state_dict().items():
        assert torch.equal(v, itn_before[k]), k
    assert any(not torch.equal(v, stn_before[k]) for k, v in model.stn.state_dict().items())
    # The engine's instance optimisation leaves the model untouched and refines a copy.
    out, history = instance_optimise(model, batch, iterations=3)
    assert len(history) == 4 and out.warped_label is not None


def test_checkpoint_holds_both_networks_and_round_trips():
    model = regzoo.create_model("istn-i-affine", size=SIZE)
    state = model.state_dict()
    assert any(k.startswith("itn.") for k in state) and any(k.startswith("stn.") for k in state)
    clone = regzoo.create_model("istn-i-affine", **model.config)
    clone.load_state_dict(state, strict=True)
    batch = _batch()
    torch.testing.assert_close(clone(batch).ddf, model(batch).ddf)
