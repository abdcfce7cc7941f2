"""DeepRS's networks, losses and schedule on tiny inputs.

What makes the method DeepRS: deep structure sampling (``alpha = 1`` is the full warp), the
alignment confidence map weighting the cross-entropy on the fixed image (ones: plain
cross-entropy on the warped labels, core's ``ce``), the deep region constraint over every class
channel, the discriminator's reference ``beta m + (1 - beta) f``, and one update of D, R and S
each per step.
"""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

import regzoo
from regzoo.cli import main
from regzoo.engine.optim import make_optimizer
from regzoo.errors import ConfigError
from regzoo.labels import warp_label_probabilities
from regzoo.models import Optimizers
from regzoo.spatial import warp
from regzoo.testing import suite_config, tiny_batch
from regzoo_deeprs.model import acm_loss, drc_loss, sample_structure

NETS = ("disc_net", "reg_net", "seg_net")


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return regzoo.create_model("deeprs", **{**suite_config("deeprs", 2), **overrides})


def _batch(moving: bool, fixed: bool) -> dict[str, torch.Tensor]:
    """A tiny batch whose flags say ``moving`` / ``fixed`` images are labelled (an unlabelled
    image's map is the zero placeholder)."""
    batch = tiny_batch(2)
    for side, flag in (("moving", moving), ("fixed", fixed)):
        batch[f"{side}_labelled"] = torch.full((2,), flag)
        if not flag:
            batch[f"{side}_label"] = torch.zeros_like(batch[f"{side}_label"])
    return batch


def _field(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A smooth non-zero displacement ``(B, 2, *S)`` of a few voxels."""
    torch.manual_seed(1)
    coarse = 3.0 * torch.randn(batch["moving"].shape[0], 2, 4, 4)
    return F.interpolate(coarse, size=batch["moving"].shape[2:], mode="bilinear")


class RecordingOptimizers(Optimizers):
    """Optimizers that record the group of every update, in order."""

    def __init__(self, model: torch.nn.Module) -> None:
        groups = model.parameter_groups().items()
        super().__init__({k: make_optimizer(p, lr=1e-3) for k, p in groups})
        self.names: list[str] = []

    def step(self, loss: torch.Tensor, name: str = "model", schedule: bool = True) -> None:
        self.names.append(name)
        super().step(loss, name, schedule)


def _changed(model, run) -> set[str]:
    before = {net: [p.detach().clone() for p in getattr(model, net).parameters()] for net in NETS}
    run()
    return {
        net
        for net in NETS
        if any(not torch.equal(a, p) for a, p in zip(before[net], getattr(model, net).parameters()))
    }


def test_structure_sampling_with_alpha_one_is_the_full_warp():
    model, batch = _model(), _batch(True, True)
    model.eval()
    with torch.no_grad():
        ddf = _field(batch)
        ones = torch.ones(batch["moving"].shape[0])
        assert torch.equal(sample_structure(ddf, ones), ddf)
        full = warp(batch["moving"], ddf)
        assert torch.allclose(warp(batch["moving"], sample_structure(ddf, ones)), full, atol=1e-6)
        labels = warp_label_probabilities(batch["moving_label"], sample_structure(ddf, 1.0), 4)
        assert torch.allclose(labels, warp_label_probabilities(batch["moving_label"], ddf, 4))
        # ... and with the model's own field: the output's warped image and labels.
        out = model(batch)
        sampled = warp(batch["moving"], sample_structure(out.ddf, ones))
        assert torch.allclose(sampled, out.warped, atol=1e-6)
        # alpha = 0 is no deformation; each sample gets its own alpha in [0, 1).
        assert torch.allclose(warp(batch["moving"], sample_structure(ddf, 0.0)), batch["moving"])
        half = sample_structure(ddf, torch.tensor([0.5, 1.0]))
        assert torch.allclose(half[0], 0.5 * ddf[0]) and torch.equal(half[1], ddf[1])
    alpha = model.draw_alpha(1000, torch.device("cpu"))
    assert alpha.shape == (1000,) and 0.0 <= float(alpha.min()) and float(alpha.max()) < 1.0
    assert 0.45 < float(alpha.mean()) < 0.55


def test_confidence_of_ones_is_plain_cross_entropy_on_the_warped_labels():
    model, batch = _model(), _batch(True, False)
    ddf, alpha = _field(batch), torch.tensor([0.3, 0.8])
    ones = torch.ones_like(batch["moving"])
    terms = model.segmentation_terms(batch, ddf, alpha, confidence=ones)
    warped = warp_label_probabilities(
        batch["moving_label"], sample_structure(ddf, alpha), model.num_labels
    )
    ce = regzoo.build("loss", {"name": "ce", "logits": True})
    expected = ce(model.seg_net(batch["fixed"]), warped)
    assert torch.allclose(terms["acm"], expected, rtol=1e-5)
    # The map weights each voxel: zero confidence silences the term, a half halves it, and D's
    # own map (the default) gives another value.
    zero = model.segmentation_terms(batch, ddf, alpha, confidence=torch.zeros_like(ones))
    assert float(zero["acm"].detach()) == 0.0
    half = model.segmentation_terms(batch, ddf, alpha, confidence=0.5 * ones)
    assert torch.allclose(half["acm"], 0.5 * expected, rtol=1e-5)
    own = model.segmentation_terms(batch, ddf, alpha)["acm"]
    assert not torch.isclose(own, expected)
    mask = torch.zeros_like(ones)
    mask[..., :8] = 1.0
    logits = model.seg_net(batch["fixed"])
    inside = acm_loss(logits[..., :8], warped[..., :8], torch.ones_like(mask[..., :8]))
    assert torch.allclose(acm_loss(logits, warped, mask), inside * 8 / mask.shape[-1], rtol=1e-5)


def test_acm_loss_trains_only_the_segmentation_network():
    model, batch = _model(), _batch(True, False)
    ddf = model.reg_net(batch["moving"], batch["fixed"])
    terms = model.segmentation_terms(batch, ddf, torch.tensor([0.5, 0.5]))
    model.zero_grad()
    terms["loss"].backward()
    reached = {
        net: any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in
                 getattr(model, net).parameters())
        for net in NETS
    }  # fmt: skip
    assert reached == {"disc_net": False, "reg_net": False, "seg_net": True}


def test_region_constraint_compares_every_class_channel():
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    expected = sum((a.softmax(1)[:, k] - b.softmax(1)[:, k]).square().mean() for k in range(4)) / 4
    assert torch.allclose(drc_loss(a, b), expected)
    assert float(drc_loss(a, a)) == 0.0
    # R's DRC reaches R through the warp m o phi_hat: it depends on alpha, unless
    # ``drc_field: full`` compares S(m o phi).
    model, batch = _model(), _batch(False, False)
    ddf = 0.3 * _field(batch).requires_grad_(True)
    low, high = torch.tensor([0.2, 0.2]), torch.tensor([0.9, 0.9])
    terms = model.registration_terms(batch, ddf, low)
    grad = torch.autograd.grad(terms["drc"], ddf)[0]
    assert float(grad.abs().sum()) > 0.0
    assert not torch.isclose(terms["drc"], model.registration_terms(batch, ddf, high)["drc"])
    full = model.registration_terms(batch, ddf, torch.ones(2))["drc"]
    model.drc_field = "full"
    assert torch.allclose(model.registration_terms(batch, ddf, low)["drc"], full)


def test_discriminator_reference_mixes_moving_and_fixed():
    model, batch = _model(beta=0.7), _batch(False, False)
    sampled = warp(batch["moving"], _field(batch))
    terms = model.discriminator_terms(batch, sampled)
    reference = 0.7 * batch["moving"] + 0.3 * batch["fixed"]
    d_real = model.confidence(reference, batch["fixed"])
    d_fake = model.confidence(sampled, batch["fixed"])
    assert torch.allclose(terms["real"], -d_real.log().mean(), rtol=1e-4)
    assert torch.allclose(terms["fake"], -(1 - d_fake).log().mean(), rtol=1e-4)
    conf = model.confidence(sampled, batch["fixed"]).detach()
    assert conf.shape == (2, 1, *batch["moving"].shape[2:])
    assert 0.0 < float(conf.min()) and float(conf.max()) < 1.0


def test_each_step_updates_d_then_r_then_s_once():
    model, batch = _model(), _batch(True, False)
    optim = RecordingOptimizers(model)
    assert _changed(model, lambda: model.training_step(batch, optim, 0)) == set(NETS)
    assert optim.names == ["discriminator", "registration", "segmentation"]
    assert model.stage(0) == model.stage(10) == "joint"
    # without any labelled image S gets no update (its loss is a constant 0)
    optim.names.clear()
    unlabelled = _batch(False, False)
    assert _changed(model, lambda: model.training_step(unlabelled, optim, 1)) == {
        "disc_net",
        "reg_net",
    }
    assert optim.names == ["discriminator", "registration"]
    assert all(p.requires_grad for p in model.parameters())


def test_bad_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="beta"):
        _model(beta=1.5)
    with pytest.raises(ConfigError, match="num_labels"):
        _model(num_labels=1)
    with pytest.raises(ConfigError, match="drc_field"):
        _model(drc_field="half")


def test_train_logs_the_three_updates(tmp_path):
    """``regzoo train deeprs``: tiny networks, 5 labelled images; every step's D, R and S
    terms in ``log.csv``."""
    args = [
        "train", "deeprs", "--out", str(tmp_path), "--threads", "1", "preset=test",
        "data.name=synth", "data.size=32", "data.num_labels=4", "data.labelled=2",
        "data.num_subjects={train: 4, val: 2, test: 2}", "data.pairing=random",
        "train.steps=3", "train.batch_size=2", "train.log_every=1", "eval.overview=false",
        "eval.max_pairs=1", "eval.metrics=[dice,seg-dice-fixed]",
    ]  # fmt: skip
    assert main(args) == 0
    with (tmp_path / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["stage"] for row in rows] == ["joint"] * 3
    assert {"disc_loss", "reg_adv", "reg_drc", "reg_similarity", "reg_grad"} <= set(rows[0])
