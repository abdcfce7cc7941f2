"""What makes RCN that method, shown by short training runs (slow tier).

2D 64x64 synthetic pairs (core ``synth-large`` and ``synth-unaligned``), fixed seeds, one thread; held-out Dice of the moving
label maps warped (nearest) by the model's field, background excluded. Each margin is the README's
measured figure for these seeds less a stated tolerance (``MEASURED``, ``TOLERANCE``). Where a
target margin does not hold within the CPU budget, the test of that target is a strict xfail naming the
measured figure (see the README's Status).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.labels import warp_labels
from regzoo.metrics.overlap import dice_per_label
from regzoo.models import Optimizers
from regzoo.spatial import affine_to_ddf
from regzoo_rcn import SYNTH_LARGE, SYNTH_UNALIGNED

pytestmark = pytest.mark.slow

SIZE = 64
KEYS = ("moving", "fixed", "moving_label", "fixed_label", "true_ddf", "true_affine")


def pairs(data: Mapping[str, Any], split: str, n: int) -> dict[str, torch.Tensor]:
    """``n`` fixed pairs of the split, stacked into one batch."""
    config = {**data, "split": split, "fresh": False, "num_subjects": n}
    ds = regzoo.build("dataset", config)
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([item[k] for item in items]) for k in KEYS if k in items[0]}


def train(
    model: torch.nn.Module,
    data: Mapping[str, torch.Tensor],
    steps: int,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
) -> torch.nn.Module:
    """Adam on random batches of ``data`` (drawn from ``seed``); returns the model in eval mode."""
    optim = Optimizers({k: make_optimizer(p, lr=lr) for k, p in model.parameter_groups().items()})
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(data["moving"]), (batch_size,), generator=g)
        batch = {k: data[k][idx] for k in ("moving", "fixed")}
        model.training_step(batch, optim, step)
    return model.eval()


def dice(ddf: torch.Tensor, data: Mapping[str, torch.Tensor]) -> float:
    """Mean Dice (labels 1.., background 0 excluded) of the moving labels warped by ``ddf``
    (nearest) and the fixed labels, over the pairs."""
    warped = warp_labels(data["moving_label"], ddf)
    labels = sorted(set(data["fixed_label"].unique().tolist()) - {0})
    return float(torch.nanmean(dice_per_label(warped, data["fixed_label"], labels)))


@torch.no_grad()
def model_dice(model: torch.nn.Module, data: Mapping[str, torch.Tensor]) -> float:
    """:func:`dice` of the model's ``ddf`` on every pair of ``data``."""
    out = model({"moving": data["moving"], "fixed": data["fixed"]})
    return dice(out.ddf, data)


SEED = 0
TRAIN_PAIRS, TEST_PAIRS = 200, 32
# Narrower networks than the paper's so that the runs fit a CPU test (VTN c = 8, stem c = 8).
CASCADE_STEPS = 300
AFFINE_STEPS = 600
STEM_STEPS = 300
VTN = {"name": "vtn", "channels": 8}
# Measured with these seeds and steps (README, Status): held-out Dice.
MEASURED = {
    "rcn-1": 0.4331,
    "rcn-3": 0.4975,
    "rcn-1 r=2": 0.4695,
    "rcn-3 r=2": 0.5312,
    "affine-deformable": 0.4806,
    "deformable only": 0.4546,
    "identity rms": 7.1682,
    "stem rms": 6.9879,
}
TOLERANCE = 0.01  # the same arithmetic on another CPU may drift slightly


def _create(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return regzoo.create_model(name, size=SIZE, **overrides)


@pytest.fixture(scope="module")
def cascades():
    """1- and 3-cascade VTN RCNs trained alike on the large-deformation pairs."""
    train_pairs, test_pairs = (
        pairs(SYNTH_LARGE, "train", TRAIN_PAIRS),
        pairs(SYNTH_LARGE, "test", TEST_PAIRS),
    )
    dice = {}
    for n in (1, 3):
        model = _create("rcn", n_cascades=n, affine=False, base=VTN)
        train(model, train_pairs, CASCADE_STEPS, seed=SEED)
        dice[f"rcn-{n}"] = model_dice(model, test_pairs)
        model.rep = 2
        dice[f"rcn-{n} r=2"] = model_dice(model, test_pairs)
    return dice


def test_three_cascades_beat_one(cascades):
    """>= 0.03 held-out Dice at equal steps (measured: 0.4975 vs 0.4331)."""
    assert cascades["rcn-3"] - cascades["rcn-1"] >= 0.03, cascades


@pytest.mark.parametrize("n", [1, 3])
def test_repetition_does_not_lower_dice(cascades, n):
    """Each trained cascade applied twice at test time keeps the Dice (measured: +0.036, +0.034)."""
    assert cascades[f"rcn-{n} r=2"] >= cascades[f"rcn-{n}"] - 0.005, cascades


def _rms_to_true_affine(theta: torch.Tensor, data: Mapping[str, torch.Tensor]) -> float:
    """RMS (voxels) over the foreground (fixed label != 0) of the difference between the
    displacements of ``theta`` and of the data's true affine."""
    shape = data["moving"].shape[2:]
    diff = affine_to_ddf(theta, shape) - affine_to_ddf(data["true_affine"], shape)
    foreground = (data["fixed_label"] != 0).to(diff.dtype)
    return float(
        ((diff.square().sum(1, keepdim=True) * foreground).sum() / foreground.sum()).sqrt()
    )


@pytest.fixture(scope="module")
def unaligned():
    """On pairs that are not pre-aligned: affine-deformable and the same model without the affine
    stem, trained alike; the affine stem alone (``rcn`` with no deformable cascade)."""
    train_pairs = pairs(SYNTH_UNALIGNED, "train", TRAIN_PAIRS)
    test_pairs = pairs(SYNTH_UNALIGNED, "test", TEST_PAIRS)
    results = {}
    for key, overrides in (("affine-deformable", {}), ("deformable only", {"affine": False})):
        model = train(_create("affine-deformable", **overrides), train_pairs, AFFINE_STEPS)
        results[key] = model_dice(model, test_pairs)
    stem = train(_create("rcn", n_cascades=0), train_pairs, STEM_STEPS)
    with torch.no_grad():
        theta = stem({"moving": test_pairs["moving"], "fixed": test_pairs["fixed"]}).affine
    identity = torch.eye(2, 3).expand(len(theta), -1, -1)
    results["stem rms"] = _rms_to_true_affine(theta, test_pairs)
    results["identity rms"] = _rms_to_true_affine(identity, test_pairs)
    return results


def test_affine_stem_helps_on_unaligned_pairs(unaligned):
    """affine-deformable over the deformable model alone (measured: 0.4806 vs 0.4546), less the
    tolerance."""
    margin = MEASURED["affine-deformable"] - MEASURED["deformable only"]
    gain = unaligned["affine-deformable"] - unaligned["deformable only"]
    assert gain >= margin - TOLERANCE, unaligned


@pytest.mark.xfail(
    strict=True,
    reason="not reached: measured +0.026 Dice in 600 steps, the stem barely moving; see the "
    "README's Status",
)
def test_affine_stem_gains_005_dice(unaligned):
    assert unaligned["affine-deformable"] - unaligned["deformable only"] >= 0.05, unaligned


def test_affine_stem_alone_moves_towards_the_true_affine(unaligned):
    """The trained stem's foreground RMS to the true affine drops below the identity's (measured:
    7.17 -> 6.99 voxels in 300 steps)."""
    drop = unaligned["identity rms"] - unaligned["stem rms"]
    assert drop >= MEASURED["identity rms"] - MEASURED["stem rms"] - TOLERANCE, unaligned


@pytest.mark.xfail(
    strict=True,
    reason="not reached: measured 6.99 voxels after 300 steps (identity 7.17), 4.30 after 2000 "
    "steps at lr 1e-4; see the README's Status",
)
def test_affine_stem_alone_recovers_the_true_affine_within_one_voxel(unaligned):
    assert unaligned["stem rms"] <= 1.0, unaligned
