"""What DeepRS claims, shown by short training runs with five labelled images (slow tier).

2D 64x64 images of core's ``synth`` data, a contrast per image, 20 training subjects of which the
first 5 carry label maps, random pairs. Each seed trains the quick preset's networks twice from the
same initialisation, batch 4, Adam lr 1e-3:

- joint: ``deeprs`` through its own ``training_step`` (D, R, S one update each per step);
- separate: the same R unsupervised (``-LNCC + Grad``) and the same S supervised on the labelled
  images only (cross-entropy), each for as many optimiser updates as the joint run gave it.

Scored on 16 held-out labelled random pairs: S's Dice (its arg-max on both images against their
labels) and R's Dice (the moving labels warped, nearest, against the fixed labels), labels 1-5.
Seeds run as parallel processes.
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
from regzoo.spatial import warp
from regzoo_deeprs import PRESETS

pytestmark = pytest.mark.slow

STEPS, LR, BATCH, POOL, LABELS = 200, 1e-3, 4, 400, [1, 2, 3, 4, 5]
DATA = {"name": "synth", "ndim": 2, "size": 64, "multimodal": True}
MODEL = {"num_labels": 6, **PRESETS["quick"]["model"]}
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
    seg = torch.cat([out.moving_seg, out.fixed_seg]).argmax(1, keepdim=True)
    labels = torch.cat([test["moving_label"], test["fixed_label"]])
    warped = warp_labels(test["moving_label"], out.ddf)
    return {
        "seg_dice": float(dice_per_label(seg, labels, LABELS).nanmean()),
        "reg_dice": float(dice_per_label(warped, test["fixed_label"], LABELS).nanmean()),
    }


def _run(seed: int) -> tuple[int, dict[str, dict[str, float]]]:
    torch.set_num_threads(1)
    pool, test = _data()
    torch.manual_seed(seed)
    joint = regzoo.create_model("deeprs", **MODEL).train()
    separate = copy.deepcopy(joint)
    optim, base = CountingOptimizers(joint), CountingOptimizers(separate)
    batches = Batches(pool, seed, 3 * STEPS)
    for step in range(STEPS):
        joint.training_step(batches[step], optim, step)

    index = 0
    while base.updates["registration"] < optim.updates["registration"]:
        batch, index = batches[index], index + 1
        ddf = separate.reg_net(batch["moving"], batch["fixed"])
        loss = separate.cc_weight * separate.similarity(warp(batch["moving"], ddf), batch["fixed"])
        base.step(loss + separate.grad_weight * separate.regularizer(ddf), "registration")
    index = 0
    while base.updates["segmentation"] < optim.updates["segmentation"]:
        batch, index = batches[index], index + 1
        supervised = separate.supervised_terms(batch)
        if supervised is not None:
            base.step(supervised, "segmentation")
    counts = {f"{k}_updates": float(v) for k, v in optim.updates.items()}
    identity = dice_per_label(test["moving_label"], test["fixed_label"], LABELS).nanmean()
    return seed, {
        "joint": {**_scores(joint, test), **counts, "identity_dice": float(identity)},
        "separate": _scores(separate, test),
    }


@pytest.fixture(scope="module")
def results() -> dict[int, dict[str, dict[str, float]]]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return dict(pool.map(_run, [0, 1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_updates(results, seed):
    joint = results[seed]["joint"]
    assert joint["registration_updates"] == STEPS == joint["discriminator_updates"]
    assert 0 < joint["segmentation_updates"] <= STEPS


@pytest.mark.parametrize(
    "seed",
    [
        0,
        pytest.param(
            1,
            marks=pytest.mark.xfail(
                strict=True,
                reason="measured S Dice 0.433 joint against 0.476 separate (seed 1, 200 steps; "
                "seed 0: 0.485 against 0.456): R does not yet beat the identity (0.491), so the "
                "warped labels of the ACM loss are misaligned with the fixed images",
            ),
        ),
    ],
)
def test_joint_training_raises_segmentation_dice(results, seed):
    joint, separate = results[seed]["joint"], results[seed]["separate"]
    assert joint["seg_dice"] >= separate["seg_dice"] + 0.02


@pytest.mark.xfail(
    strict=True,
    reason="measured R Dice (seeds 0 / 1) 0.443 / 0.448 joint against 0.493 / 0.491 separate "
    "after 200 steps; the adversarial term costs R (with lambda_adv = 0 it was level with the "
    "separate R, 300 steps, measured once)",
)
@pytest.mark.parametrize("seed", [0, 1])
def test_joint_training_raises_registration_dice(results, seed):
    joint, separate = results[seed]["joint"], results[seed]["separate"]
    assert joint["reg_dice"] >= separate["reg_dice"] + 0.02
