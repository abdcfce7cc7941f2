"""What makes JSSR that method, shown by training (slow tier; METHODS.md J30 "done means").

The quick preset (2D two-contrast synthetic pairs: moving scans in one contrast, fixed scans in
another, each with its own bias field; S supervised by the fixed labels only) run to the end of
stage 2 and saved as a checkpoint; from it the engine resumes two branches for the same number of
steps: the joint stage (D steps alternating with (G, Phi, S) steps on F + lambda_seg H), and stage
2 continued (G and Phi on F alone). The registration-only baseline (Phi with mutual information,
same backbone, its quick preset) trains for the same total number of steps. Everything is seeded
(train.seed 0); the held-out pairs are the test split's (32 random pairs of unseen subjects).

- Joint training raises registration Dice over stage 2 continued (by ``DIRECTION_MARGIN``; the
  issue's 0.02 too: +0.046 with the channels-last U-Net of this commit).
- S's Dice on the moving contrast (S(G(x, y)) against moving labels that no loss ever saw) is
  above chance and rises with joint training.
- G keeps x's geometry: where the moving and fixed labels disagree, G(x, y) is explained by the
  moving labels and S(G(x, y)) agrees with them, clearly more than with the fixed ones.
- JSSR's registration Dice is not below the MI baseline's.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import default_collate

import regzoo
from regzoo.config import resolve_config
from regzoo.engine.trainer import Trainer
from regzoo_jssr import PRESETS
from regzoo_jssr.evaluation import evaluate_jssr

pytestmark = pytest.mark.slow

STAGE_STEPS = tuple(PRESETS["quick"]["model"]["stage_steps"])
ISSUE_MARGIN = 0.02  # registration Dice, joint over stage 2 continued (the issue's figure)
DIRECTION_MARGIN = 0.005  # what the quick preset shows (+0.017, README "Measured")
SEG_RISE = 0.02
GEOMETRY_MARGIN = 0.1
TEST_PAIRS = 32
# Cheap final evaluations inside fit(): the measurements below use evaluate_jssr on the test set.
RUN = ["eval.metrics=[dice]", "eval.max_pairs=1", "eval.overview=false"]


def _test_set(cfg) -> torch.utils.data.Dataset:
    data = {**dict(cfg.data), "split": "test", "num_subjects": TEST_PAIRS}
    return regzoo.build("dataset", data)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("jssr-training")
    try:
        cfg = resolve_config("jssr", None, RUN)
        test = _test_set(cfg)
        # Stages 1 and 2 with the engine's own pieces, then a checkpoint to branch from.
        first = Trainer(cfg, root / "joint", progress=False)
        for step in range(STAGE_STEPS[0] + STAGE_STEPS[1]):
            items = [first.train_set[i] for i in first.sampler.indices(step)]
            first.model.training_step(default_collate(items), first.optim, step)
        first.step = STAGE_STEPS[0] + STAGE_STEPS[1]
        first.save()
        out = {"stage2": evaluate_jssr(first.model, test)}
        shutil.copytree(root / "joint", root / "continued")
        # Joint stage, resumed from the stage-2 checkpoint.
        joint = Trainer(cfg, root / "joint", progress=False)
        joint.fit(resume=True)
        out["joint"] = evaluate_jssr(joint.model, test)
        # Stage 2 continued for as many steps, from the same checkpoint.
        s1, s2, s3 = STAGE_STEPS
        continued_cfg = resolve_config(
            "jssr", None, [*RUN, f"model.stage_steps=[{s1},{s2 + s3},0]"]
        )
        continued = Trainer(continued_cfg, root / "continued", progress=False)
        continued.fit(resume=True)
        out["continued"] = evaluate_jssr(continued.model, test)
        # Registration-only baseline with MI, the same total number of steps.
        baseline = Trainer(
            resolve_config("jssr-mi-baseline", None, RUN), root / "mi", progress=False
        )
        baseline.fit()
        out["mi"] = evaluate_jssr(baseline.model, test)
    finally:
        torch.set_num_threads(threads)
    print({k: {m: round(v, 3) for m, v in r.items()} for k, r in out.items()})
    return out


def test_joint_training_raises_registration_dice_over_stage_2_continued(results):
    assert results["joint"]["dice"] >= results["continued"]["dice"] + DIRECTION_MARGIN, results
    assert results["continued"]["dice"] > results["stage2"]["dice"]  # stage 2 still learns


def test_joint_training_gain_reaches_the_issue_margin(results):
    assert results["joint"]["dice"] >= results["continued"]["dice"] + ISSUE_MARGIN, results


def test_segmentor_on_the_moving_contrast_is_above_chance_and_rises(results):
    joint, before = results["joint"], results["stage2"]
    assert joint["seg_dice_moving"] > 2 * joint["seg_chance_moving"], joint
    assert joint["seg_dice_moving"] >= before["seg_dice_moving"] + SEG_RISE, results


def test_synthesis_keeps_the_moving_geometry(results):
    r = results["joint"]
    assert r["geometry_moving"] >= r["geometry_fixed"] + GEOMETRY_MARGIN, r
    assert r["synth_agrees_moving"] >= r["synth_agrees_fixed"] + GEOMETRY_MARGIN, r


def test_jssr_registers_at_least_as_well_as_the_mi_baseline(results):
    assert results["joint"]["dice"] >= results["mi"]["dice"], results
    assert results["mi"]["dice"] > results["mi"]["dice_identity"]  # the baseline learns too

