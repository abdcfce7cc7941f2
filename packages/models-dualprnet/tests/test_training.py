"""The pyramid's claim, shown by training (slow tier): on pairs with large deformations, the full
coarse-to-fine pyramid of Dual-PRNet++ registers better than the same network predicting its field
at one level, and better than single-scale VoxelMorph, at the same seed, data and number of steps.

Data: the embedded ``synth-large`` pairs, 2D 64x64 (``synth`` with ``deform_std=12`` voxels: each
scan's velocity field draws its std in [0, 12]; identity Dice of the held-out pairs 0.325). Every model is trained
with Adam (lr 1e-3, batch 1, 1000 steps) from ``torch.manual_seed(SEED)`` on the same batches and scored by
the held-out Dice (core's ``dice`` metric, labels warped nearest) in evaluation mode. Each margin
is the README's measured figure for this seed less a stated tolerance (``CLAIMS``).
"""

from __future__ import annotations

import pytest
import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.labels import warp_labels
from regzoo.models import Optimizers

pytestmark = pytest.mark.slow

SIZE = 64
STEPS = 1000
BATCH = 1  # the official batch size
LR = 1e-3
SEED = 0
TRAIN_PAIRS, TEST_PAIRS = 200, 16
# The README's measured held-out Dice for this seed and budget.
MEASURED = {"identity": 0.325, "dual-prnet-plus": 0.455, "one-level": 0.359, "voxelmorph": 0.391}
TOLERANCE = 0.01  # trained from scratch: arithmetic drifts between machines
CLAIMS = {"over one level": 0.02, "over voxelmorph": 0.05}


def _pairs(split: str, n: int) -> dict[str, torch.Tensor]:
    ds = regzoo.build(
        "dataset",
        {
            "name": "synth-large",
            "ndim": 2,
            "size": SIZE,
            "split": split,
            "fresh": False,
            "num_subjects": n,
        },
    )
    items = [ds[i] for i in range(len(ds))]
    keys = ("moving", "fixed", "moving_label", "fixed_label")
    return {k: torch.stack([item[k] for item in items]) for k in keys}


def _dice(test: dict[str, torch.Tensor], ddf: torch.Tensor) -> float:
    metric = regzoo.build("metric", {"name": "dice"})
    warped = warp_labels(test["moving_label"], ddf)
    spacing = torch.ones(len(ddf), 2)
    return float(
        metric(warped_label=warped, fixed_label=test["fixed_label"], spacing=spacing).mean()
    )


def _train(name: str, train: dict[str, torch.Tensor], **overrides) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = regzoo.create_model(name, ndim=2, **overrides)
    optim = Optimizers({k: make_optimizer(p, lr=LR) for k, p in model.parameter_groups().items()})
    g = torch.Generator().manual_seed(SEED)
    for step in range(STEPS):
        idx = torch.randint(0, len(train["moving"]), (BATCH,), generator=g)
        model.training_step({k: v[idx] for k, v in train.items()}, optim, step)
    return model.eval()


@pytest.fixture(scope="module")
def dice():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = _pairs("train", TRAIN_PAIRS), _pairs("test", TEST_PAIRS)
        models = {
            "dual-prnet-plus": _train("dual-prnet-plus", train),
            "one-level": _train("dual-prnet-plus", train, pyramid_levels=1),
            "voxelmorph": _train("voxelmorph", train),
        }
        with torch.no_grad():
            scores = {name: _dice(test, m(test).ddf) for name, m in models.items()}
        scores["identity"] = _dice(test, torch.zeros(TEST_PAIRS, 2, SIZE, SIZE))
    finally:
        torch.set_num_threads(threads)
    return scores


def test_pyramid_beats_one_level(dice):
    gain = dice["dual-prnet-plus"] - dice["one-level"]
    assert gain >= CLAIMS["over one level"], dice
    assert gain >= MEASURED["dual-prnet-plus"] - MEASURED["one-level"] - TOLERANCE, dice


def test_pyramid_beats_voxelmorph(dice):
    gain = dice["dual-prnet-plus"] - dice["voxelmorph"]
    assert gain >= CLAIMS["over voxelmorph"], dice
    assert gain >= MEASURED["dual-prnet-plus"] - MEASURED["voxelmorph"] - TOLERANCE, dice
