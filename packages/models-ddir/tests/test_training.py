"""What DDIR and SDDIR claim, shown by short training runs on sliding regions (slow tier).

2D 64x64 pairs of core's ``synth-sliding`` (four labels, each a region moving by its own random
diffeomorphism, then one smooth warp of the whole): the true field is smooth inside each region
and torn at region boundaries. Every model trains 400 steps (Adam lr 2e-3, batch 4, fixed seeds)
on 200 training pairs with the official loss and is scored on 32 held-out pairs: Dice of the moving
labels warped (nearest) by its field, ``region-folding`` and ``boundary-error`` (core metrics).
The baseline is a single network of the same kind trained with the same loss and steps: DDIR with
one region holding every label, i.e. one VoxelMorph-diff on the whole images. Seeds run as
parallel processes. Where a target does not hold within this CPU budget the test is a strict
xfail naming the measured figures (the README's Status).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping
from typing import Any

import pytest
import torch

import regzoo
from regzoo.labels import warp_labels
from regzoo.metrics.overlap import dice_per_label
from regzoo.metrics.regions import boundary_error, region_folding

pytestmark = pytest.mark.slow

STEPS, LR, BATCH = 400, 2e-3, 4
TRAIN_PAIRS, TEST_PAIRS = 200, 32
KEYS = ("moving", "fixed", "moving_label", "fixed_label", "true_ddf")
MODELS: dict[str, dict[str, Any]] = {
    "ddir": {"name": "ddir"},
    "single": {"name": "ddir", "num_regions": 1, "regions": [[0, 1, 2, 3]]},
    "sddir": {"name": "sddir"},
}


def _pairs(split: str, n: int) -> dict[str, torch.Tensor]:
    ds = regzoo.build(
        "dataset", {"name": "synth-sliding", "split": split, "fresh": False, "num_subjects": n}
    )
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([item[k] for item in items]) for k in KEYS}


def _scores(out: Any, test: Mapping[str, torch.Tensor]) -> dict[str, float]:
    warped = warp_labels(test["moving_label"], out.ddf)
    return {
        "dice": float(dice_per_label(warped, test["fixed_label"], [1, 2, 3]).nanmean()),
        "boundary_error": float(
            boundary_error(out.ddf, test["true_ddf"], test["fixed_label"]).nanmean()
        ),
        "region_folding": float(region_folding(out.ddf, test["fixed_label"]).nanmean()),
    }


def _run(job: tuple[str, int]) -> tuple[tuple[str, int], dict[str, float]]:
    """Train one model on one seed; its scores (SDDIR: with the label maps' regions and with
    its predicted ones)."""
    name, seed = job
    torch.set_num_threads(1)
    train, test = _pairs("train", TRAIN_PAIRS), _pairs("test", TEST_PAIRS)
    torch.manual_seed(seed)
    model = regzoo.build("model", MODELS[name]).train()
    optim = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        idx = torch.randint(0, TRAIN_PAIRS, (BATCH,), generator=g)
        batch = {k: train[k][idx] for k in KEYS[:4]}
        loss = model.loss(batch, model(batch))["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()
    inputs = {k: test[k] for k in KEYS[:4]}
    with torch.no_grad():
        scores = _scores(model(inputs), test)
        if name == "sddir":
            model.label_masks = True
            labelled = _scores(model(inputs), test)
            scores["dice_label_masks"] = labelled["dice"]
    return job, scores


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, int], dict[str, float]]:
    jobs = [("sddir", 0), ("ddir", 0), ("single", 0), ("ddir", 1), ("single", 1)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return dict(pool.map(_run, jobs))


@pytest.mark.parametrize("seed", [0, 1])
def test_ddir_does_not_fold_inside_regions_and_keeps_dice(results, seed):
    """Measured: region-folding 0 / 0; Dice 0.989 / 0.988 against the single network's
    0.868 / 0.866 (seeds 0 / 1; DDIR's Dice term and region masks match the label maps)."""
    ddir, single = results[("ddir", seed)], results[("single", seed)]
    assert ddir["region_folding"] < 0.001
    assert ddir["dice"] >= single["dice"] - 0.01


@pytest.mark.xfail(
    strict=True,
    reason="measured boundary error 3.11 / 3.37 voxels against the single network's 2.28 / 2.29 "
    "(seeds 0 / 1): within 400 steps the region networks match the region shapes (Dice 0.989) "
    "with fields that drift inside uniform regions, away from the true motion",
)
@pytest.mark.parametrize("seed", [0, 1])
def test_ddir_boundary_error_is_a_fifth_lower(results, seed):
    ddir, single = results[("ddir", seed)], results[("single", seed)]
    assert ddir["boundary_error"] <= 0.8 * single["boundary_error"]


def test_sddir_with_the_label_maps_gives_ddir_s_result(results):
    """Measured: 0.987 against DDIR's 0.989 (seed 0)."""
    assert abs(results[("sddir", 0)]["dice_label_masks"] - results[("ddir", 0)]["dice"]) < 0.01


@pytest.mark.xfail(
    strict=True,
    reason="measured Dice 0.910 with the predicted regions against 0.987 with the label maps' "
    "(drop 0.077 after 400 steps; 0.069 after 600)",
)
def test_sddir_with_its_predicted_regions_loses_less_than_005_dice(results):
    sddir = results[("sddir", 0)]
    assert sddir["dice_label_masks"] - sddir["dice"] < 0.05
