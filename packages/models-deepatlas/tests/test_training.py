"""What DeepAtlas claims, shown by short training runs with one labelled image (slow tier).

2D 64x64 images of core's ``synth`` data, a contrast per image, 20 training subjects of which only
the first carries a label map (Semi-DeepAtlas's setting), pairs drawn at random. Each seed trains
the narrow networks twice from the same initialisation, batch 4, Adam lr 1e-3:

- joint: ``deepatlas`` with ``one_shot`` (F_R pre-trained unsupervised, then F_S from scratch
  with F_R frozen, then the 1:20 alternation), through the model's own ``training_step``;
- separate: the same networks, F_R unsupervised (``L_i + lambda_r L_r``) and F_S supervised on
  the labelled images (``L_sp``), each for as many optimiser updates as the joint run gave it.

The training pairs register every subject to the labelled one (``pairing: atlas``, the
Semi-DeepAtlas set-up: with random pairs only one batch in three holds the labelled image and
F_S, 86 updates in 1230 steps, stayed near chance in both runs). The runs share F_R's
unsupervised pre-training (copied at its end, with the optimiser state). Scored on 16 held-out
labelled random pairs: F_S's Dice (its arg-max on both images against their
labels) and F_R's Dice (the moving labels warped, nearest, against the fixed labels), labels
1-5. Seeds run as parallel processes.
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

PRETRAIN, SEG_STEPS, JOINT = 300, 300, 630
LR, BATCH, POOL, LABELS = 1e-3, 4, 400, [1, 2, 3, 4, 5]
DATA = {"name": "synth", "ndim": 2, "size": 64, "multimodal": True}
TRAIN_PAIRING = "atlas"
MODEL = {
    "num_labels": 6,
    "seg_features": [8, 16, 16, 32, 32, 64, 64, 128],
    "one_shot": True,
    "pretrain_steps": PRETRAIN,
    "seg_steps": SEG_STEPS,
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
            "labelled": 1,
            "pairing": TRAIN_PAIRING,
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
    joint = regzoo.create_model("deepatlas", **MODEL).train()
    optim = CountingOptimizers(joint)
    steps = PRETRAIN + SEG_STEPS + JOINT
    batches = Batches(pool, seed, 2 * steps)
    for step in range(steps):
        if step == PRETRAIN:
            # Both runs share the unsupervised pre-training of F_R; F_S is still untouched.
            separate, base = copy.deepcopy((joint, optim))
        joint.training_step(batches[step], optim, step)

    index = PRETRAIN
    while base.updates["registration"] < optim.updates["registration"]:
        batch, index = batches[index], index + 1
        ddf = separate.reg_net(batch["moving"], batch["fixed"])
        base.step(separate.registration_terms(batch, ddf, anatomy=False)["loss"], "registration")
    while base.updates["segmentation"] < optim.updates["segmentation"]:
        batch, index = batches[index], index + 1
        logits = [separate.seg_net(batch[side]) for side in ("moving", "fixed")]
        supervised = separate.supervised(batch, *logits)
        if supervised is not None:
            base.step(separate.sup_weight * supervised, "segmentation")
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
def test_joint_training_raises_both_dice(results, seed):
    """Measured (seeds 0 / 1), joint against separate: F_S Dice 0.409 / 0.363 against
    0.226 / 0.233; F_R Dice 0.441 / 0.426 against 0.417 / 0.404 (900 F_R and 330 F_S updates
    in both)."""
    joint, separate = results[seed]["joint"], results[seed]["separate"]
    assert joint["registration_updates"] == 900 and joint["segmentation_updates"] == 330
    assert joint["seg_dice"] >= separate["seg_dice"] + 0.02
    assert joint["reg_dice"] >= separate["reg_dice"] + 0.02


@pytest.mark.xfail(
    strict=True,
    reason="measured F_R Dice 0.441 / 0.426 (joint) and 0.417 / 0.404 (separate) against 0.491 "
    "without registration (seeds 0 / 1): within 900 updates on images of random contrasts F_R "
    "does not yet beat the identity on held-out pairs",
)
@pytest.mark.parametrize("seed", [0, 1])
def test_joint_registration_beats_the_identity(results, seed):
    joint = results[seed]["joint"]
    assert joint["reg_dice"] > joint["identity_dice"]
