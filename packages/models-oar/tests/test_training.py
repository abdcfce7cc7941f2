"""What makes oar-joint that pipeline, shown by training (slow tier).

:mod:`regzoo_oar.study` in a subprocess (one thread): the quick preset's model trained for
``STEPS`` steps (Adam 1e-3, batch 4) on fixed 2D 64x64 ``synth-organs`` pairs (the labelled
template registered to 200 training subjects), measured on 32 held-out subjects. "Smallest":
the two smallest organs (labels 6 and 7; template volumes 16 and 12 voxels). One seed, 2 (0 and 1
chose the design): two seeds in parallel take over 2 minutes on the shared 2-core machine; the
README's table has four. Each margin is the README's figure for seed 2 less ``TOLERANCE``: the
run repeats exactly on one machine, but another CPU's last bits send training on another path.

- The second pass (the predicted masks fed back as landmarks, refining the first field) raises
  the registration's Dice of the smallest organs (the template's labels warped) by >= 0.02
  (README: +0.117 at seed 2; +0.187, +0.119, +0.145 at seeds 0, 1, 3).
- It raises the segmentation's Dice of the smallest organs by >= 0.02 at this seed (README:
  +0.025; +0.023 at seed 3, but only +0.009 and +0.005 at seeds 0 and 1: not robust, see the
  README's Status).
- The segmentation beats the registration alone on the smallest organs by >= 0.02 (README:
  +0.162; +0.047 on another machine, whose run registers those organs better after the second
  pass, 0.660 against about 0.55: this margin follows the CPU's path, so the test asks the
  target, not the README's figure less the tolerance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SEEDS = (2,)
STEPS = 600
TARGET = 0.02
TOLERANCE = 0.03
# The README's figures for seed 2 (Measured): pass 2 - pass 1 on the smallest organs.
MEASURED = {2: {"reg_gain": 0.1166, "seg_gain": 0.0245}}


@pytest.fixture(scope="module")
def results() -> dict[int, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        seed: subprocess.Popen(
            [sys.executable, "-m", "regzoo_oar.study", "--seed", str(seed), "--steps", str(STEPS)],
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
    print(json.dumps(out))
    return out


def _gain(result: dict, what: str) -> float:
    return result["pass_2"][f"{what}_small"] - result["pass_1"][f"{what}_small"]


@pytest.mark.parametrize("seed", SEEDS)
def test_second_pass_raises_registration_dice_of_the_smallest_organs(results, seed):
    gain = _gain(results[seed], "reg")
    assert gain >= TARGET, results[seed]
    assert gain >= MEASURED[seed]["reg_gain"] - TOLERANCE, results[seed]


@pytest.mark.parametrize("seed", SEEDS)
def test_segmentation_beats_the_registration_on_the_smallest_organs(results, seed):
    final = results[seed]["pass_2"]
    margin = final["seg_small"] - final["reg_small"]
    assert margin >= TARGET, results[seed]


@pytest.mark.parametrize("seed", SEEDS)
def test_second_pass_raises_segmentation_dice_of_the_smallest_organs(results, seed):
    assert _gain(results[seed], "seg") >= TARGET, results[seed]
