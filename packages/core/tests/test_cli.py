"""The command line: listing, info, one-line errors with exit code 2, train/evaluate round trip."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def regzoo(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_list_json_is_keyed_by_kind():
    res = regzoo("list", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert set(data) == {"backbone", "transformer", "loss", "metric", "model", "dataset"}
    assert {"dense", "svf", "affine", "bspline"} <= set(data["transformer"])
    assert data["transformer"]["svf"]["config"] == {"steps": 7, "downsize": 2}


def test_list_shows_models_with_summaries():
    res = regzoo("list")
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    assert "voxelmorph" in lines and "voxelmorph-diff" in lines
    assert "VoxelMorph" in lines["voxelmorph"]


def test_info_json_has_parameter_counts():
    res = regzoo("info", "voxelmorph", "--params", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["parameters"] == {"2d": 109_170, "3d": 327_331}
    assert info["paper"]["year"] == 2019


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "no-such-model"], "unknown model 'no-such-model'"),
        (["train", "voxelmorph", "train.stpes=3"], "stpes"),
        (["train", "voxelmorph", "model.not_a_key=1"], "not_a_key"),
        (["train", "voxelmorph", "train.steps"], "malformed override"),
        (["info", "nope"], "unknown model 'nope'"),
        (["list", "--kind", "bogus"], "unknown kind 'bogus'"),
        (["evaluate", "missing.pt"], "checkpoint not found: missing.pt"),
        (["train"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, needle, tmp_path):
    res = regzoo(*args, cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert lines[0].startswith("regzoo: error: ")


def test_debug_shows_traceback(tmp_path):
    res = regzoo("train", "no-such-model", "--debug", cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" in res.stderr


def test_train_then_evaluate_json(tmp_path):
    run = tmp_path / "run"
    res = regzoo(
        "train",
        "voxelmorph",
        "train.steps=4",
        "train.batch_size=2",
        "eval.max_pairs=2",
        "--out",
        str(run),
        "--threads",
        "1",
    )
    assert res.returncode == 0, res.stderr
    assert "identity" in res.stdout and "trained" in res.stdout
    for name in ("config.yaml", "last.pt", "log.csv", "metrics.json"):
        assert (run / name).is_file()
    res = regzoo(
        "evaluate",
        str(run / "last.pt"),
        "eval.max_pairs=2",
        "--json",
        "--out",
        str(tmp_path / "ev"),
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for section in ("summary", "identity"):
        for key in ("dice", "hd95", "sdlogj", "folding", "runtime_s"):
            assert isinstance(out[section][key], float), (section, key)
    # The same weights given to the registered name (its default preset: the same data).
    weights = ["--weights", str(run / "last.pt")]
    res = regzoo("evaluate", "voxelmorph", *weights, "eval.max_pairs=2", "--json")
    assert res.returncode == 0, res.stderr
    dice = json.loads(res.stdout)["summary"]["dice"]
    assert dice == pytest.approx(out["summary"]["dice"], abs=1e-6)
    assert len(out["cases"]) == 2
    assert (tmp_path / "ev" / "metrics.json").is_file() and (
        tmp_path / "ev" / "cases.csv"
    ).is_file()
