"""``regzoo train jssr`` / ``regzoo evaluate`` on tiny runs: the stage in the progress display and
the log, resuming mid-schedule, and the evaluation report (registration and segmentation Dice)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from regzoo.cli import main
from regzoo.engine.checkpoint import load_checkpoint
from regzoo_jssr.model import STAGES

# The test preset's tiny networks on 32x32 two-contrast pairs; stages of 2 steps each.
TINY = [
    "preset=test",
    "data.name=synth-two-contrast",
    "data.multimodal=true",
    "data.pairing=random",
    "data.size=32",
    "data.num_labels=4",
    "data.num_subjects={test: 3}",
    "model.stage_steps=[2,2,2]",
    "train.lr=1e-3",
    "train.log_every=1",
    "eval.overview=false",
    "eval.metrics=[dice,seg-dice-moving,seg-dice-fixed]",
]


def _train(out, *extra: str) -> int:
    return main(["train", "jssr", "--out", str(out), "--threads", "1", *TINY, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A full 6-step run (two steps per stage)."""
    out = tmp_path_factory.mktemp("jssr") / "full"
    assert _train(out, "train.steps=6") == 0
    return out


def test_log_names_the_stage_of_every_step(run):
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in rows] == [STAGES[0]] * 2 + [STAGES[1]] * 2 + [STAGES[2]] * 2
    assert rows[0]["seg_supervised"] and not rows[0].get("disc")
    assert rows[-1]["seg_consistency"] and rows[-1]["disc"]


def test_progress_display_names_the_stage(tmp_path, capsys):
    assert _train(tmp_path / "run", "train.steps=6", "eval.max_pairs=1") == 0
    err = capsys.readouterr().err
    for stage in STAGES:
        assert f"[{stage}] step" in err


def test_a_run_resumed_mid_schedule_ends_where_an_uninterrupted_one_does(run, tmp_path):
    """Stopped after step 3 (inside stage 2) and resumed to step 6, the weights equal the
    uninterrupted run's: the stage is a function of the step, the optimisers' states resume."""
    out = tmp_path / "resumed"
    assert _train(out, "train.steps=3") == 0
    assert (
        main(["train", "jssr", "--out", str(out), "--resume", "--threads", "1", "train.steps=6"])
        == 0
    )
    with (out / "log.csv").open() as fh:
        stages = [r["stage"] for r in csv.DictReader(fh)]
    assert stages == [STAGES[0]] * 2 + [STAGES[1]] * 2 + [STAGES[2]] * 2
    resumed, full = load_checkpoint(out / "last.pt"), load_checkpoint(run / "last.pt")
    assert resumed["step"] == full["step"] == 6
    for key, value in full["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key], value, atol=1e-7), key


def _evaluate(run, capsys) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(run / "last.pt"), "--threads", "1", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_reports_registration_dice(run, capsys):
    report = _evaluate(run, capsys)
    assert 0.0 < report["summary"]["dice"] <= 1.0
    assert 0.0 < report["identity"]["dice"] <= 1.0
    assert len(report["cases"]) == 3


def test_evaluate_reports_segmentation_dice(run, capsys):
    report = _evaluate(run, capsys)
    for key in ("seg-dice-moving", "seg-dice-fixed"):
        assert 0.0 <= report["summary"][key] <= 1.0
        assert all(key in case for case in report["cases"])
    assert main(["evaluate", str(run / "last.pt"), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for key in ("seg-dice-moving", "seg-dice-fixed"):  # the summary a person reads, too
        assert f"  {key}: {report['summary'][key]:.4g}" in lines


def test_register_writes_synthesis_and_both_segmentations(run, tmp_path):
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for name in ("moving", "fixed"):
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(rng.random((32, 32, 1)).astype(np.float32), np.eye(4)), paths[-1])
    out = tmp_path / "out"
    args = ["register", str(run / "last.pt"), "--moving", str(paths[0]), "--fixed", str(paths[1])]
    assert main([*args, "--out", str(out), "--threads", "1"]) == 0
    fixed = nib.load(paths[1])
    for name in ("warped", "ddf", "synthesized", "moving_seg_pred", "fixed_seg_pred"):
        assert (out / f"{name}.nii.gz").is_file(), name
    for name in ("synthesized", "moving_seg_pred", "fixed_seg_pred"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape[:2] == fixed.shape[:2]
        np.testing.assert_allclose(img.affine, fixed.affine)
    seg = np.asarray(nib.load(out / "fixed_seg_pred.nii.gz").dataobj)
    assert np.issubdtype(seg.dtype, np.integer) and seg.min() >= 0 and seg.max() < 4


@pytest.mark.parametrize(
    ("override", "named"), [("model.nope=1", "'nope'"), ("model.seg_ce_weight=-1", "seg_ce_weight")]
)
def test_study_refuses_a_bad_override_in_one_line(override, named):
    res = subprocess.run(
        [sys.executable, "-m", "regzoo_jssr.study", override], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and named in res.stderr, res.stderr


def test_study_spread_over_seeds_has_the_claimed_gains():
    from regzoo_jssr.study import seed_spread

    def run(joint, continued, mi):
        return {
            "stage2": {"dice": 0.6},
            "joint": {"dice": joint},
            "continued": {"dice": continued},
            "mi": {"dice": mi},
        }

    spread = seed_spread({2: run(0.73, 0.70, 0.72), 3: run(0.75, 0.70, 0.73)})
    gain = spread["gain"]["joint - continued"]
    assert gain["mean"] == pytest.approx(0.04) and gain["std"] == pytest.approx(0.01)
    assert gain["min"] == pytest.approx(0.03) and gain["max"] == pytest.approx(0.05)
    assert gain["n"] == 2
    assert spread["gain"]["joint - mi"]["min"] == pytest.approx(0.01)
    assert spread["joint"]["dice"]["max"] == pytest.approx(0.75)
