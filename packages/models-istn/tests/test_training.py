"""What makes ISTN that method, shown by training (slow tier).

On synthetic 2D pairs related by a random affine (core ``synth`` dataset, ``deformation="affine"``:
rotation up to 30 degrees, scale 0.8-1.2 per axis, translation up to 10% of the size) with a
structure of interest (two of the label classes), ISTN-e and ISTN-i align the structure better than
STN-u trained on image MSE alone, at the same seed and number of steps; the explicit ITN output
approaches the structure map; label-free test-time refinement of the STN raises Dice. Each margin is
the README's measured figure for the test's seed less a stated tolerance (``CLAIMS``).

The label maps are drawn at Perlin scales 12 and 24 (the dataset's default, 4 and 8, gives blobs of
a few voxels, smaller than the misalignment, on which no structure-overlap loss can tell the
direction of alignment), and the affine STN's translation bound is 0.2 in normalised units, which
is the data's 10% of the size (the official 0.1 covers 5%). See the plugin README's Status.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.spatial.distance import dice as dice_dissimilarity

import regzoo
from regzoo.engine.instance import instance_optimise
from regzoo.engine.optim import make_optimizer
from regzoo.models import Optimizers
from regzoo.spatial import warp

pytestmark = pytest.mark.slow

SIZE = 64
STRUCTURE = [1, 2]  # the structure of interest: label classes 1 and 2 of the synthetic maps
LABEL_SCALES = [12, 24]  # Perlin scales of the label maps (the dataset default is 4, 8)
MAX_TRANSLATION = 0.2  # the STN's bound, normalised units: the data's 10% of the size
STEPS = 1200
BATCH = 10  # the official batch size
LR = 1e-3  # the official 2D learning rate
SEED = 0
# The README's Status table for this seed (held-out structure Dice): identity 0.403, STN-u 0.638,
# ISTN-e 0.740, ISTN-i 0.743; 50 label-free refinement steps: ISTN-e +0.067, ISTN-i +0.025.
# Each comparison asserts that figure less its tolerance.
CLAIMS = {
    "stn-u over identity": 0.638 - 0.403,
    "istn-e-affine over stn-u": 0.740 - 0.638,
    "istn-i-affine over stn-u": 0.743 - 0.638,
    "istn-e-affine refinement": 0.067,
    "istn-i-affine refinement": 0.025,
}
TRAINING_TOLERANCE = 0.03  # trained from scratch: 1,200 steps of arithmetic to drift
REFINEMENT_TOLERANCE = 0.01  # 50 steps on fixed weights
TRAIN_PAIRS, TEST_PAIRS = 200, 16


def _pairs(split: str, n: int) -> dict[str, torch.Tensor]:
    ds = regzoo.build(
        "dataset",
        {
            "name": "synth",
            "ndim": 2,
            "size": SIZE,
            "deformation": "affine",
            "split": split,
            "fresh": False,
            "num_subjects": n,
            "max_rotation": 30.0,
            "scale_range": [0.8, 1.2],
            "max_translation": 0.1,
            "label_scales": LABEL_SCALES,
        },
    )
    items = [ds[i] for i in range(len(ds))]
    keys = ("moving", "fixed", "moving_label", "fixed_label")
    return {k: torch.stack([item[k] for item in items]) for k in keys}


def _train(name: str, train: dict[str, torch.Tensor], test: dict[str, torch.Tensor]):
    torch.manual_seed(SEED)
    model = regzoo.create_model(
        name, size=SIZE, structure_labels=STRUCTURE, max_translation=MAX_TRANSLATION
    )
    optim = Optimizers({k: make_optimizer(p, lr=LR) for k, p in model.parameter_groups().items()})
    g = torch.Generator().manual_seed(SEED)
    itn_mse = []
    for step in range(STEPS):
        if model.itn is not None and step % (STEPS // 4) == 0:
            itn_mse.append(_itn_mse(model, test))
        idx = torch.randint(0, len(train["moving"]), (BATCH,), generator=g)
        model.training_step({k: v[idx] for k, v in train.items()}, optim, step)
    if model.itn is not None:
        itn_mse.append(_itn_mse(model, test))
    return model.eval(), itn_mse


@torch.no_grad()
def _itn_mse(model, batch) -> float:
    s_m, _ = model.structure_maps(batch)
    return float(((model.itn(batch["moving"]) - s_m) ** 2).mean())


def _structure_dice(model, batch, ddf: torch.Tensor) -> np.ndarray:
    """Dice of the warped moving structure map and the fixed one, both thresholded at 0.5 (the
    official metric), per pair, computed by scipy."""
    s_m, s_f = model.structure_maps(batch)
    warped = (warp(s_m, ddf) > 0.5).flatten(1).numpy()
    fixed = (s_f > 0.5).flatten(1).numpy()
    return np.array([1.0 - dice_dissimilarity(w, f) for w, f in zip(warped, fixed)])


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = _pairs("train", TRAIN_PAIRS), _pairs("test", TEST_PAIRS)
        models = {
            name: _train(name, train, test)
            for name in ("stn-u-affine", "istn-e-affine", "istn-i-affine")
        }
    finally:
        torch.set_num_threads(threads)
    return models, test


def _held_out_dice(trained) -> dict[str, float]:
    models, test = trained
    dice = {}
    with torch.no_grad():
        for name, (model, _) in models.items():
            dice[name] = float(_structure_dice(model, test, model(test).ddf).mean())
    identity = _structure_dice(
        models["stn-u-affine"][0], test, torch.zeros(len(test["moving"]), 2, SIZE, SIZE)
    )
    # the baseline learns something too
    gain = dice["stn-u-affine"] - float(identity.mean())
    assert gain >= CLAIMS["stn-u over identity"] - TRAINING_TOLERANCE, (
        dice,
        float(identity.mean()),
    )
    return dice


def test_istn_e_aligns_structures_better_than_stn_u(trained):
    dice = _held_out_dice(trained)
    margin = CLAIMS["istn-e-affine over stn-u"] - TRAINING_TOLERANCE
    assert dice["istn-e-affine"] >= dice["stn-u-affine"] + margin, dice


def test_istn_i_aligns_structures_better_than_stn_u(trained):
    dice = _held_out_dice(trained)
    margin = CLAIMS["istn-i-affine over stn-u"] - TRAINING_TOLERANCE
    assert dice["istn-i-affine"] >= dice["stn-u-affine"] + margin, dice


def test_explicit_itn_output_approaches_the_structure_map(trained):
    models, test = trained
    _, itn_mse = models["istn-e-affine"]
    s_m, _ = models["istn-e-affine"][0].structure_maps(test)
    assert all(b < a for a, b in zip(itn_mse, itn_mse[1:])), itn_mse
    # Below the error of the best constant map: the ITN has found the structure.
    assert itn_mse[-1] < 0.7 * float(s_m.var())


@pytest.mark.parametrize("name", ["istn-e-affine", "istn-i-affine"])
def test_refinement_uses_no_labels_and_keeps_dice(trained, name):
    models, test = trained
    model = models[name][0]
    itn_state = copy.deepcopy(model.itn.state_dict())
    before, after = [], []
    for i in range(len(test["moving"])):
        pair = {k: v[i : i + 1] for k, v in test.items()}
        with torch.no_grad():
            before.append(_structure_dice(model, pair, model(pair).ddf)[0])
        # As `regzoo register --iterations N`: the labels are removed before every update.
        out, history = instance_optimise(model, pair, iterations=model.io_iterations)
        assert history[-1] <= history[0]
        after.append(_structure_dice(model, pair, out.ddf)[0])
    rise = CLAIMS[f"{name} refinement"] - REFINEMENT_TOLERANCE
    assert np.mean(after) >= np.mean(before) + rise, (np.mean(before), np.mean(after))
    for k, v in model.itn.state_dict().items():
        assert torch.equal(v, itn_state[k])


@pytest.mark.parametrize("name", ["istn-e-affine", "istn-i-bspline", "stn-u-bspline"])
def test_3d_models_train_at_64_cubed(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = regzoo.build(
            "dataset",
            {
                "name": "synth",
                "ndim": 3,
                "size": 64,
                "deformation": "affine",
                "split": "val",
                "fresh": False,
                "num_subjects": 1,
            },
        )
        item = ds[0]
        batch = {k: item[k][None] for k in ("moving", "fixed", "moving_label", "fixed_label")}
        torch.manual_seed(SEED)
        model = regzoo.create_model(name, ndim=3, structure_labels=STRUCTURE)
        assert model.size == (64, 64, 64)
        optim = Optimizers(
            {k: make_optimizer(p, lr=LR) for k, p in model.parameter_groups().items()}
        )
        losses = [
            float(model.training_step(batch, optim, step)["loss"].detach()) for step in range(8)
        ]
    finally:
        torch.set_num_threads(threads)
    assert all(np.isfinite(losses))
    assert min(losses[-3:]) < losses[0], losses
