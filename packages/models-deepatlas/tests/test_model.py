"""DeepAtlas's networks, losses and schedule on tiny inputs.

What makes the method DeepAtlas: which network each loss reaches (the anatomy loss trains only
F_R on pairs with two manual labels; a batch without labels gives F_S no update while F_R still
uses F_S's predictions), the 1:20 alternation, Semi-DeepAtlas's stages, and the official F_S.
"""

from __future__ import annotations

import csv

import pytest
import torch

import regzoo
from regzoo.cli import main
from regzoo.engine.optim import make_optimizer
from regzoo.errors import ConfigError
from regzoo.models import Optimizers
from regzoo.testing import suite_config, tiny_batch
from regzoo_deepatlas.model import STAGES, SegmentationUNet

NETS = ("reg_net", "seg_net")


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return regzoo.create_model("deepatlas", **{**suite_config("deepatlas", 2), **overrides})


def _batch(moving: bool, fixed: bool) -> dict[str, torch.Tensor]:
    """A tiny batch whose label flags say ``moving`` / ``fixed`` images are labelled (an
    unlabelled image's map is the zero placeholder)."""
    batch = tiny_batch(2)
    for side, flag in (("moving", moving), ("fixed", fixed)):
        batch[f"{side}_labelled"] = torch.full((2,), flag)
        if not flag:
            batch[f"{side}_label"] = torch.zeros_like(batch[f"{side}_label"])
    return batch


def _grads(model, loss) -> dict[str, bool]:
    """Which networks ``loss`` reaches (a non-zero gradient)."""
    model.zero_grad()
    loss.backward()
    return {
        net: any(
            p.grad is not None and bool(p.grad.abs().sum() > 0)
            for p in getattr(model, net).parameters()
        )
        for net in NETS
    }


def _optim(model) -> Optimizers:
    return Optimizers({k: make_optimizer(p, lr=1e-3) for k, p in model.parameter_groups().items()})


def _changed(model, run) -> set[str]:
    before = {net: [p.detach().clone() for p in getattr(model, net).parameters()] for net in NETS}
    run()
    return {
        net
        for net in NETS
        if any(not torch.equal(a, p) for a, p in zip(before[net], getattr(model, net).parameters()))
    }


def test_both_labelled_anatomy_loss_trains_only_the_registration_network():
    model, batch = _model(), _batch(True, True)
    ddf = model.reg_net(batch["moving"], batch["fixed"])
    terms = model.registration_terms(batch, ddf, anatomy=True)
    assert _grads(model, terms["anatomy"]) == {"reg_net": True, "seg_net": False}
    assert "anatomy" not in model.segmentation_terms(batch, ddf.detach())


def test_unlabelled_pairs_give_no_segmentation_update_but_feed_registration():
    model, batch = _model(), _batch(False, False)
    ddf = model.reg_net(batch["moving"], batch["fixed"])
    seg = model.segmentation_terms(batch, ddf)
    assert float(seg["loss"]) == 0.0 and not seg["loss"].requires_grad
    joint_seg = model.pretrain_steps  # the first joint step is a segmentation step
    assert model.stage(joint_seg) == "joint-seg"
    assert _changed(model, lambda: model.training_step(batch, _optim(model), joint_seg)) == set()
    # F_R's anatomy loss compares F_S's predictions of both images.
    anatomy = model.registration_terms(batch, ddf, anatomy=True)["anatomy"]
    assert _grads(model, anatomy) == {"reg_net": True, "seg_net": False}
    with torch.no_grad():
        for p in model.seg_net.parameters():
            p.add_(torch.randn_like(p))
    ddf = model.reg_net(batch["moving"], batch["fixed"])
    moved = model.registration_terms(batch, ddf, anatomy=True)["anatomy"]
    assert not torch.isclose(moved, anatomy.detach())


def test_one_labelled_image_trains_the_segmentation_network_through_the_anatomy_loss():
    model, batch = _model(), _batch(False, True)
    ddf = model.reg_net(batch["moving"], batch["fixed"])
    terms = model.segmentation_terms(batch, ddf)
    assert {"supervised", "anatomy"} <= set(terms)
    assert _grads(model, terms["anatomy"]) == {"reg_net": False, "seg_net": True}


def test_each_stage_updates_its_network():
    model, batch = _model(), _batch(True, False)
    optim = _optim(model)
    start = model.pretrain_steps
    assert _changed(model, lambda: model.training_step(batch, optim, 0)) == set(NETS)
    assert _changed(model, lambda: model.training_step(batch, optim, start)) == {"seg_net"}
    assert _changed(model, lambda: model.training_step(batch, optim, start + 1)) == {"reg_net"}


def test_joint_phase_alternates_one_segmentation_step_per_twenty_registration_steps():
    model = _model(reg_per_seg=20, pretrain_steps=5)
    stages = [model.stage(s) for s in range(5 + 3 * 21)]
    assert stages[:5] == ["pretrain"] * 5
    joint = stages[5:]
    assert [i for i, s in enumerate(joint) if s == "joint-seg"] == [0, 21, 42]
    assert joint.count("joint-reg") == 60
    assert set(stages) <= set(STAGES)


def test_one_shot_pretrains_registration_then_segmentation_from_scratch():
    model = _model(one_shot=True, pretrain_steps=3, seg_steps=2, reg_per_seg=2)
    assert [model.stage(s) for s in range(8)] == [
        "pretrain-reg",
        "pretrain-reg",
        "pretrain-reg",
        "train-seg",
        "train-seg",
        "joint-seg",
        "joint-reg",
        "joint-reg",
    ]
    batch, optim = _batch(True, False), _optim(model)
    assert _changed(model, lambda: model.training_step(batch, optim, 0)) == {"reg_net"}
    assert _changed(model, lambda: model.training_step(batch, optim, 3)) == {"seg_net"}


def test_segmentation_network_is_the_official_unet():
    """The official 3D U-Net (no biases): 32-64-64-128-128-256-256-512, three transposed
    convolutions, 1x1 output; its weights counted layer by layer."""
    widths = [32, 64, 64, 128, 128, 256, 256, 512]
    convs = [(1, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    convs += [(768, 256), (256, 256), (384, 128), (128, 128), (192, 64), (64, 64)]
    expected = sum(27 * a * b for a, b in convs) + 8 * (512**2 + 256**2 + 128**2) + 64 * 5
    net = SegmentationUNet(3, 1, 5, widths)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net(torch.zeros(1, 1, 12, 10, 8)).shape == (1, 5, 12, 10, 8)


def test_bad_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="seg_features"):
        _model(seg_features=[4, 8])
    with pytest.raises(ConfigError, match="reg_per_seg"):
        _model(reg_per_seg=0)


def test_train_logs_the_stage_of_every_step(tmp_path):
    """``regzoo train deepatlas``: Semi-DeepAtlas's stages and the alternation in ``log.csv``
    (tiny networks, 1 + 1 steps of pre-training, then one F_S step per 2 F_R steps)."""
    args = [
        "train", "deepatlas", "--out", str(tmp_path), "--threads", "1", "preset=test",
        "data.name=synth", "data.size=32", "data.num_labels=4", "data.labelled=1",
        "data.num_subjects={train: 4, val: 2, test: 2}", "data.pairing=atlas",
        "model.one_shot=true", "model.pretrain_steps=1", "model.seg_steps=1",
        "train.steps=8", "train.batch_size=2", "train.log_every=1", "eval.overview=false",
        "eval.max_pairs=1", "eval.metrics=[dice,seg-dice-fixed]",
    ]  # fmt: skip
    assert main(args) == 0
    with (tmp_path / "log.csv").open() as fh:
        stages = [row["stage"] for row in csv.DictReader(fh)]
    assert stages == ["pretrain-reg", "train-seg"] + ["joint-seg", "joint-reg", "joint-reg"] * 2
