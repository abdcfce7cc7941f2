"""JRSS's networks, targets, losses and schedule on tiny inputs.

What makes the method JRSS: the EMA teacher (a direct EMA of the student's weights, renewed at
each round), confident pseudo-labels (threshold tau, manual labels kept), the student's three
terms and its inputs (moving, fixed and registration-warped moving images), and which network
each update reaches.
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

NETS = ("reg_net", "seg_net", "ema_net", "teacher_net")


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return regzoo.create_model("jrss", **{**suite_config("jrss", 2), **overrides})


def _batch(moving: bool, fixed: bool) -> dict[str, torch.Tensor]:
    """A tiny batch whose flags say ``moving`` / ``fixed`` images are labelled (an unlabelled
    image's map is the zero placeholder)."""
    batch = tiny_batch(2)
    for side, flag in (("moving", moving), ("fixed", fixed)):
        batch[f"{side}_labelled"] = torch.full((2,), flag)
        if not flag:
            batch[f"{side}_label"] = torch.zeros_like(batch[f"{side}_label"])
    return batch


def _optim(model) -> Optimizers:
    return Optimizers({k: make_optimizer(p, lr=1e-3) for k, p in model.parameter_groups().items()})


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _changed(model, run) -> set[str]:
    before = {net: _weights(getattr(model, net)) for net in NETS}
    run()
    return {
        net
        for net in NETS
        if any(
            not torch.equal(before[net][k], p) for k, p in getattr(model, net).named_parameters()
        )
    }


def test_ema_teacher_is_a_direct_ema_of_the_student():
    """Through ``training_step``: the EMA after n round steps equals
    ``decay^n s_0 + sum_i (1 - decay) decay^(n-i) s_i`` computed from the student's weights
    after each update; the next round's teacher is that EMA."""
    decay = 0.9
    model = _model(teacher_steps=1, round_steps=3, rounds=2, ema_decay=decay)
    optim, batch = _optim(model), _batch(True, False)
    model.training_step(batch, optim, 0)  # the teacher stage
    students = [_weights(model.seg_net)]  # round 1 starts from the student
    for step in (1, 2, 3):
        model.training_step(batch, optim, step)
        students.append(_weights(model.seg_net))
    assert torch.equal(model.teacher_round, torch.tensor(1))
    for key, value in model.teacher_net.named_parameters():
        assert torch.equal(value, students[0][key])  # round 1's teacher: the first student
    expected = {}
    for key in students[0]:
        n = len(students) - 1
        direct = decay**n * students[0][key]
        for i in range(1, n + 1):
            direct = direct + (1 - decay) * decay ** (n - i) * students[i][key]
        expected[key] = direct
    for key, value in model.ema_net.named_parameters():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, students[-1][key])
    model.training_step(batch, optim, 4)  # round 2: the teacher is the EMA of round 1
    assert torch.equal(model.teacher_round, torch.tensor(2))
    for key, value in model.teacher_net.named_parameters():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)


def test_pseudo_labels_keep_confident_voxels_and_manual_labels():
    model = _model(threshold=0.9)
    batch = _batch(True, False)
    batch["fixed_labelled"] = torch.tensor([True, False])
    probs = torch.zeros(2, 4, 32, 32)
    probs[:, 2] = 0.95
    probs[:, 0] = 0.05
    probs[:, :, :16] = torch.tensor([0.5, 0.3, 0.1, 0.1]).view(1, 4, 1, 1)
    fixed = model.targets(batch, "fixed", probs)
    # the labelled image: its manual labels, every voxel
    assert torch.equal(fixed.y[0].argmax(0, keepdim=True), batch["fixed_label"][0])
    assert bool(fixed.w[0].all())
    # the unlabelled one: the teacher's arg-max, kept only where its probability is >= 0.9
    assert bool((fixed.y[1, 2, 16:] == 1).all()) and bool((fixed.y[1, 0, :16] == 1).all())
    assert bool(fixed.w[1, :, 16:].all()) and not bool(fixed.w[1, :, :16].any())
    # no teacher yet: an unlabelled image keeps nothing
    assert not bool(model.targets(batch, "fixed", None).w[1].any())


def test_student_terms_are_cross_entropy_kl_and_dice():
    model = _model()
    images = torch.rand(3, 1, 32, 32)
    labels = torch.randint(0, 4, (3, 1, 32, 32))
    y = torch.nn.functional.one_hot(labels[:, 0], 4).permute(0, 3, 1, 2).float()
    q = torch.rand(3, 4, 32, 32).softmax(1)
    from regzoo_jrss.model import Targets

    terms = model.student_terms(images, Targets(y, torch.ones(3, 1, 32, 32), q), noise=False)
    log_p = model.seg_net(images).log_softmax(1)
    ce = torch.nn.functional.nll_loss(log_p, labels[:, 0])
    kl = torch.nn.functional.kl_div(log_p, q, reduction="sum") / (3 * 32 * 32)
    torch.testing.assert_close(terms["ce"], ce)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["dice"], model.dice(log_p.exp(), y))
    torch.testing.assert_close(terms["loss"], ce + kl + terms["dice"])
    # dropout noise: the same images give another loss
    noisy = model.student_terms(images, Targets(y, torch.ones(3, 1, 32, 32), q), noise=True)
    assert not torch.isclose(noisy["loss"], terms["loss"])


def test_each_stage_updates_its_networks():
    model = _model(teacher_steps=1, round_steps=2, rounds=3)
    assert [model.stage(s) for s in range(9)] == ["teacher"] + ["round-1"] * 2 + ["round-2"] * 2 + [
        "round-3"
    ] * 4
    optim = _optim(model)
    assert _changed(model, lambda: model.training_step(_batch(True, True), optim, 0)) == {
        "reg_net",
        "seg_net",
    }
    # no labelled image in the teacher stage: only the registration network learns
    assert _changed(model, lambda: model.training_step(_batch(False, False), optim, 0)) == {
        "reg_net"
    }
    changed = _changed(model, lambda: model.training_step(_batch(False, False), optim, 1))
    assert changed == {"reg_net", "seg_net", "ema_net", "teacher_net"}  # teacher renewed
    changed = _changed(model, lambda: model.training_step(_batch(False, False), optim, 2))
    assert changed == {"reg_net", "seg_net", "ema_net"}


@pytest.mark.parametrize("fresh", [True, False])
def test_each_round_starts_the_student_optimiser_afresh(fresh):
    """With ``fresh_optimizer`` the student's Adam state restarts at each teacher renewal (the
    loss changes from soft Dice to ``L_c + L_u + L_d``); the registration's does not."""
    model = _model(teacher_steps=2, round_steps=2, fresh_optimizer=fresh)
    optim, batch = _optim(model), _batch(True, True)
    for step in range(3):
        model.training_step(batch, optim, step)

    def count(name: str) -> int:
        return int(next(iter(optim[name].state.values()))["step"])

    assert count("segmentation") == (1 if fresh else 3)
    assert count("registration") == 3


def test_registration_dice_uses_pseudo_labels():
    """In a round, pairs without manual labels still give the registration a Dice term (the
    teacher's pseudo-labels); in the teacher stage they do not."""
    model = _model(threshold=0.0)
    batch = _batch(False, False)
    ddf = model.reg_net(batch["moving"], batch["fixed"])
    none = model.registration_terms(
        batch, ddf, model.targets(batch, "moving", None), model.targets(batch, "fixed", None)
    )
    assert "dice" not in none
    probs = {s: model.teacher_probs(batch[s]) for s in ("moving", "fixed")}
    terms = model.registration_terms(
        batch,
        ddf,
        model.targets(batch, "moving", probs["moving"]),
        model.targets(batch, "fixed", probs["fixed"]),
    )
    model.zero_grad()
    terms["dice"].backward()
    assert any(
        p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.reg_net.parameters()
    )
    assert all(p.grad is None for p in model.seg_net.parameters())


def test_label_free_objective_is_similarity_and_smoothness():
    """Instance optimisation's objective (labels removed, their flags kept) has no label term."""
    model, batch = _model(), _batch(True, True)
    out = model(batch)
    unlabelled = {k: v for k, v in batch.items() if k not in ("moving_label", "fixed_label")}
    terms = model.loss(unlabelled, out)
    assert set(terms) == {"similarity", "smoothness", "loss"}
    torch.testing.assert_close(model.objective(batch, out), terms["loss"])
    assert {"dice", "supervised"} <= set(model.loss(batch, out))


def test_bad_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="ema_decay"):
        _model(ema_decay=1.5)
    with pytest.raises(ConfigError, match="rounds"):
        _model(rounds=0)


def test_train_logs_the_rounds(tmp_path):
    """``regzoo train jrss``: the teacher stage and the rounds in ``log.csv``."""
    args = [
        "train", "jrss", "--out", str(tmp_path), "--threads", "1", "preset=test",
        "data.name=synth", "data.size=32", "data.num_labels=4", "data.labelled=2",
        "data.num_subjects={train: 4, val: 2, test: 2}", "data.pairing=random",
        "model.teacher_steps=2", "model.round_steps=1", "model.rounds=2",
        "train.steps=5", "train.batch_size=2", "train.log_every=1", "eval.overview=false",
        "eval.max_pairs=1", "eval.metrics=[dice,seg-dice-fixed]",
    ]  # fmt: skip
    assert main(args) == 0
    with (tmp_path / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["stage"] for row in rows] == ["teacher"] * 2 + ["round-1", "round-2", "round-2"]
    assert rows[-1]["kept"] != ""
