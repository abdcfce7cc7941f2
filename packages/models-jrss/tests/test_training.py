"""What JRSS claims, shown by short training runs with five labelled images (slow tier).

2D 64x64 images of core's ``synth`` data, a contrast per image, 20 training subjects of which the
first 5 carry label maps, random pairs. Each seed trains narrow networks, batch 4, Adam lr 1e-3:

- joint: ``jrss`` through the model's own ``training_step``: ``TEACHER`` steps training the
  first teacher on the labelled images (the registration network on ``L_i + L_r`` and, on pairs
  of two labelled images, ``L_d``), then 3 self-training rounds of ``ROUND`` steps;
- separate: the same networks from the end of the teacher stage (which trains them separately),
  the student on soft Dice over the labelled images and the registration network on
  ``L_i + L_r + L_d`` with manual labels only, each for as many optimiser updates as the joint
  run gave it (the teacher stage included).

Scored on 16 held-out labelled random pairs: the student's Dice (its arg-max on both images
against their labels) and the registration's Dice (the moving labels warped, nearest, against the
fixed labels), labels 1-5, at the end of the teacher stage and of each round. Seeds run as
parallel processes.
"""

from __future__ import annotations

import copy
import multiprocessing
from collections import Counter
from typing import Any

import pytest
import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.labels import warp_labels
from regzoo.metrics.overlap import dice_per_label
from regzoo.models import Optimizers

pytestmark = pytest.mark.slow

TEACHER, ROUND, ROUNDS = 200, 60, 3
LR, BATCH, POOL, LABELS = 1e-3, 4, 300, [1, 2, 3, 4, 5]
DATA = {"name": "synth", "ndim": 2, "size": 64, "multimodal": True}
MODEL = {
    "num_labels": 6,
    "reg_enc_features": [8, 16, 16, 16],
    "reg_dec_features": [16, 16, 16, 16, 16, 8, 8],
    "seg_enc_features": [8, 16, 16, 16],
    "seg_dec_features": [16, 16, 16, 16, 16, 8, 8],
    "teacher_steps": TEACHER,
    "round_steps": ROUND,
    "rounds": ROUNDS,
}
KEYS = ("moving", "fixed", "moving_label", "fixed_label", "moving_labelled", "fixed_labelled")


class CountingOptimizers(Optimizers):
    """Optimizers that count the updates of each group."""

    def __init__(self, model: torch.nn.Module) -> None:
        groups = model.parameter_groups().items()
        super().__init__({k: make_optimizer(p, lr=LR) for k, p in groups})
        self.updates: Counter[str] = Counter()

    def step(self, loss: torch.Tensor, name: str = "model", schedule: bool = True) -> None:
        self.updates[name] += 1
        super().step(loss, name, schedule)


def _stack(items: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in keys}


def _data() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    train = regzoo.build(
        "dataset",
        {
            **DATA,
            "split": "train",
            "num_subjects": {"train": 20},
            "labelled": 5,
            "pairing": "random",
            "length": POOL,
        },
    )
    test = regzoo.build(
        "dataset", {**DATA, "split": "test", "num_subjects": {"test": 16}, "pairing": "random"}
    )
    return (
        _stack([train[i] for i in range(POOL)], KEYS),
        _stack([test[i] for i in range(len(test))], KEYS[:4]),
    )


class Batches:
    """Batches of random pool rows, drawn once per seed: ``batches[i]`` is the i-th batch."""

    def __init__(self, pool: dict[str, torch.Tensor], seed: int, count: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.pool, self.rows = pool, torch.randint(0, POOL, (count, BATCH), generator=g)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[self.rows[i]] for k, v in self.pool.items()}


def _scores(model: Any, test: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = model(test)
    model.train()
    seg = torch.cat([out.moving_seg, out.fixed_seg]).argmax(1, keepdim=True)
    labels = torch.cat([test["moving_label"], test["fixed_label"]])
    warped = warp_labels(test["moving_label"], out.ddf)
    return {
        "seg_dice": float(dice_per_label(seg, labels, LABELS).nanmean()),
        "reg_dice": float(dice_per_label(warped, test["fixed_label"], LABELS).nanmean()),
    }


def _run(seed: int) -> tuple[int, dict[str, Any]]:
    torch.set_num_threads(1)
    pool, test = _data()
    torch.manual_seed(seed)
    joint = regzoo.create_model("jrss", **MODEL).train()
    optim = CountingOptimizers(joint)
    steps = TEACHER + ROUNDS * ROUND
    batches = Batches(pool, seed, 3 * steps)
    rounds = []
    for step in range(steps):
        if step == TEACHER:
            separate, base = copy.deepcopy((joint, optim))
            rounds.append(_scores(joint, test))  # the teacher trained on the labelled images
        joint.training_step(batches[step], optim, step)
        if step >= TEACHER and (step + 1 - TEACHER) % ROUND == 0:
            rounds.append(_scores(joint, test))

    index = TEACHER
    while base.updates["registration"] < optim.updates["registration"]:
        batch, index = batches[index], index + 1
        moving = separate.targets(batch, "moving", None)
        fixed = separate.targets(batch, "fixed", None)
        ddf = separate.reg_net(batch["moving"], batch["fixed"])
        base.step(separate.registration_terms(batch, ddf, moving, fixed)["loss"], "registration")
    while base.updates["segmentation"] < optim.updates["segmentation"]:
        batch, index = batches[index], index + 1
        supervised = separate.supervised(batch)
        if supervised is not None:
            base.step(separate.seg_dice_weight * supervised, "segmentation")
    counts = {f"{k}_updates": float(v) for k, v in optim.updates.items()}
    return seed, {"rounds": rounds, "counts": counts, "separate": _scores(separate, test)}


@pytest.fixture(scope="module")
def results() -> dict[int, dict[str, Any]]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        found = dict(pool.map(_run, [0, 1]))
    print(found)  # the figures the README reports (pytest -s)
    return found


@pytest.mark.parametrize("seed", [0, 1])
def test_rounds_do_not_lose_dice(results, seed):
    """Round k + 1 is not below round k by more than 0.01, either task. Measured (seeds 0 / 1),
    rounds 1, 2, 3: student Dice 0.267, 0.323, 0.324 / 0.212, 0.308, 0.303; registration Dice
    0.492, 0.488, 0.483 / 0.491, 0.490, 0.492."""
    rounds = results[seed]["rounds"]
    assert len(rounds) == ROUNDS + 1
    for task in ("seg_dice", "reg_dice"):
        for before, after in zip(rounds[1:], rounds[2:]):
            assert after[task] >= before[task] - 0.01, (task, rounds)


@pytest.mark.xfail(
    strict=True,
    reason="measured student Dice after round 3 0.324 / 0.303 against 0.383 / 0.338 for the "
    "teacher trained on the labelled images only (seeds 0 / 1): the teacher's pseudo-labels on "
    "new contrasts are mostly wrong (README)",
)
@pytest.mark.parametrize("seed", [0, 1])
def test_last_student_beats_the_labelled_only_teacher(results, seed):
    rounds = results[seed]["rounds"]
    assert rounds[-1]["seg_dice"] >= rounds[0]["seg_dice"] + 0.02, rounds


@pytest.mark.xfail(
    strict=True,
    reason="measured student Dice 0.324 / 0.303 (joint) against 0.425 / 0.392 (separate, the "
    "same updates on the labelled images only), seeds 0 / 1",
)
@pytest.mark.parametrize("seed", [0, 1])
def test_joint_training_raises_segmentation_dice(results, seed):
    joint, separate = results[seed]["rounds"][-1], results[seed]["separate"]
    assert joint["seg_dice"] >= separate["seg_dice"] + 0.02, (joint, separate)


@pytest.mark.xfail(
    strict=True,
    reason="measured registration Dice 0.483 / 0.492 (joint) against 0.492 / 0.494 (separate), "
    "seeds 0 / 1: LNCC registration across random contrasts stays near the identity",
)
@pytest.mark.parametrize("seed", [0, 1])
def test_joint_training_raises_registration_dice(results, seed):
    joint, separate = results[seed]["rounds"][-1], results[seed]["separate"]
    assert joint["reg_dice"] >= separate["reg_dice"] + 0.02, (joint, separate)
