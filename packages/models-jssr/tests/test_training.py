"""What makes JSSR that method, shown by training (slow tier).

:mod:`regzoo_jssr.study` for two seeds, one process each, in parallel: the quick preset (2D
two-contrast synthetic pairs: moving scans in one contrast, fixed scans in another, each with
its own bias field; S supervised by the fixed labels only) trained to the end of stage 2 and
saved; from that checkpoint the engine resumes two branches for the same number of steps, the
joint stage (D steps alternating with (G, Phi, S) steps on F + lambda_seg H) and stage 2
continued (G and Phi on F alone); the registration-only baseline (Phi with mutual information,
same backbone, its quick preset) trains for the same total number of steps. Every run is seeded;
the measurements are on 32 held-out random pairs of unseen subjects.

The seeds are 2 and 3, not 0 and 1 on which the preset was chosen; each claim is the README's own
figure for that seed ("Measured" tables) less that claim's TOLERANCE. The runs are seeded and repeat
exactly on one machine, but on another CPU the arithmetic differs in the last bits and training takes
another path: on the CI machine S's Dice on the moving contrast after stage 2 came out 0.025 and 0.048
higher than in the README (seeds 2, 3), so its rise came out lower, and eta^2's margin 0.026 lower.
The tolerances cover those measured differences; the claims they leave are still the method's.

- Joint training raises registration Dice over stage 2 continued (README: +0.026, +0.041).
- S's Dice on the moving contrast (S(G(x, y)) against moving labels that no loss ever saw) is
  above chance and rises with joint training (README: +0.075, +0.078 over stage 2).
- G keeps x's geometry: where the moving and fixed labels disagree, G(x, y) is explained by the
  moving labels and S(G(x, y)) agrees with them, clearly more than with the fixed ones.
- JSSR's registration Dice is above the MI baseline's (README: +0.010, +0.016), both folding next
  to nothing (the same smoothness weight).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from regzoo_jssr.study import seed_spread

pytestmark = pytest.mark.slow

SEEDS = (2, 3)  # not used to choose the preset
# The README's figures for these seeds: registration Dice gains (joint - continued, joint - mi),
# S's Dice rise on the moving contrast (joint - after stage 2), and the geometry margins (eta^2 and
# agreement of S(G(x, y)), moving over fixed labels).
CLAIMS = {
    2: {"over_continued": 0.026, "over_mi": 0.010, "seg_rise": 0.075, "eta": 0.147, "agree": 0.244,
        "continued_over_stage2": 0.032, "mi_over_identity": 0.056},
    3: {"over_continued": 0.041, "over_mi": 0.016, "seg_rise": 0.078, "eta": 0.115, "agree": 0.216,
        "continued_over_stage2": 0.034, "mi_over_identity": 0.068},
}  # fmt: skip
CHANCE_FACTOR = 6.5 - 1.5  # S on the moving contrast: "about 6.5 times chance", less a tolerance
# How far each figure may come out below the README's on another machine (see the docstring).
TOLERANCE = {
    "over_continued": 0.015, "over_mi": 0.01, "seg_rise": 0.05, "eta": 0.04, "agree": 0.04,
    "continued_over_stage2": 0.015, "mi_over_identity": 0.015,
}  # fmt: skip
FOLDING_LIMIT = 0.005  # fraction of folded voxels, both methods (smoothness weight 1)


@pytest.fixture(scope="module")
def results() -> dict[int, dict[str, dict[str, float]]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        seed: subprocess.Popen(
            [sys.executable, "-m", "regzoo_jssr.study", "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in SEEDS
    }
    out = {}
    for seed, run in runs.items():
        stdout, stderr = run.communicate()
        assert run.returncode == 0, stderr[-3000:]
        out[seed] = json.loads(stdout.strip().splitlines()[-1])
    print(json.dumps({"seeds": out, "spread": seed_spread(out)}))
    return out


def _claim(seed: int, key: str) -> float:
    return CLAIMS[seed][key] - TOLERANCE[key]


@pytest.mark.parametrize("seed", SEEDS)
def test_joint_training_raises_registration_dice_over_stage_2_continued(results, seed):
    r = results[seed]
    assert r["joint"]["dice"] >= r["continued"]["dice"] + _claim(seed, "over_continued"), r
    # stage 2 still learns
    assert r["continued"]["dice"] >= r["stage2"]["dice"] + _claim(seed, "continued_over_stage2"), r


@pytest.mark.parametrize("seed", SEEDS)
def test_segmentor_on_the_moving_contrast_is_above_chance_and_rises(results, seed):
    joint, before = results[seed]["joint"], results[seed]["stage2"]
    assert joint["seg_dice_moving"] >= CHANCE_FACTOR * joint["seg_chance_moving"], joint
    rise = _claim(seed, "seg_rise")
    assert joint["seg_dice_moving"] >= before["seg_dice_moving"] + rise, results[seed]


@pytest.mark.parametrize("seed", SEEDS)
def test_synthesis_keeps_the_moving_geometry(results, seed):
    r = results[seed]["joint"]
    assert r["geometry_moving"] >= r["geometry_fixed"] + _claim(seed, "eta"), r
    assert r["synth_agrees_moving"] >= r["synth_agrees_fixed"] + _claim(seed, "agree"), r


@pytest.mark.parametrize("seed", SEEDS)
def test_jssr_registers_better_than_the_mi_baseline(results, seed):
    r = results[seed]
    assert r["joint"]["dice"] >= r["mi"]["dice"] + _claim(seed, "over_mi"), r
    # the baseline learns too
    assert r["mi"]["dice"] >= r["mi"]["dice_identity"] + _claim(seed, "mi_over_identity"), r
    assert max(r["joint"]["folding"], r["mi"]["folding"]) <= FOLDING_LIMIT, r
