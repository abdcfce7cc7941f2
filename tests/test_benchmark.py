"""``regzoo benchmark``: a VoxelMorph checkpoint and the network-free ``iterative`` on one folder.

The table must hold what ``regzoo evaluate`` reports for each model, the files must all be
there, and a benchmark killed half-way must resume without redoing the pairs it finished.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import regzoo

pytestmark = pytest.mark.slow
METRICS = ("dice", "hd95", "sdlogj", "folding")


def _regzoo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "regzoo", *args, "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Six labelled 2D scans of the embedded data as a NIfTI folder, and a briefly trained
    VoxelMorph checkpoint."""
    root = tmp_path_factory.mktemp("benchmark")
    data = root / "data"
    data.mkdir()
    scans = regzoo.build("dataset", {"name": "synth", "ndim": 2, "size": 64, "split": "test"})
    for i in range(3):
        item = scans[i]
        for side in ("moving", "fixed"):
            image = np.asarray(item[side][0], np.float32)
            labels = np.asarray(item[f"{side}_label"][0], np.int16)
            nib.save(nib.Nifti1Image(image, np.eye(4)), data / f"s{i}{side[0]}.nii.gz")
            nib.save(nib.Nifti1Image(labels, np.eye(4)), data / f"s{i}{side[0]}_seg.nii.gz")
    run = root / "vxm"
    _regzoo("train", "voxelmorph", "train.steps=100", "eval.overview=false", "--out", str(run))
    return {"data": data, "checkpoint": run / "last.pt", "root": root}


def _table(path: Path) -> dict[tuple[str, str], float]:
    with path.open() as fh:
        return {(r["model"], r["metric"]): float(r["mean"]) for r in csv.DictReader(fh)}


def test_benchmark_writes_the_table_of_what_evaluate_reports(setup) -> None:
    out = setup["root"] / "out"
    models = [str(setup["checkpoint"]), "iterative"]
    _regzoo("benchmark", *models, "--data", str(setup["data"]), "--out", str(out))
    names = ["table.md", "table.csv", "cases.csv", "wilcoxon.csv", "environment.json"]
    names += [f"box_{m}.png" for m in METRICS] + ["overview_iterative.png"]
    for name in names:
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("overview_*.png"))) == 2
    table = _table(out / "table.csv")
    for model in models:
        res = _regzoo("evaluate", model, "--data", str(setup["data"]), "--json")
        summary = json.loads(res.stdout)["summary"]
        for metric in METRICS:
            assert table[(model, metric)] == pytest.approx(summary[metric], rel=1e-6, abs=1e-9)
    assert table[("iterative", "dice")] > table[("identity", "dice")] + 0.1
    with (out / "wilcoxon.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["metric"] for r in rows} == {*METRICS, "runtime_s"}
    assert all(r["pairs"] == "6" for r in rows)
    environment = json.loads((out / "environment.json").read_text())
    assert {"device", "threads", "torch", "regzoo"} <= set(environment)
    assert environment["threads"] == 1
    markdown = (out / "table.md").read_text()
    assert "| iterative |" in markdown and "Wilcoxon" in markdown

    again = _regzoo(
        "benchmark", *models, "--data", str(setup["data"]), "--out", str(out), check=False
    )
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"regzoo: error: --out {out}: a benchmark is there; --resume to finish it, --force to "
        "replace it"
    ]


def test_an_interrupted_benchmark_resumes_without_redoing_finished_pairs(setup) -> None:
    """Killed (SIGKILL) once ``iterative`` has finished two pairs: ``--resume`` keeps those
    records as they are (their runtimes too) and measures the rest."""
    out = setup["root"] / "killed"
    args = ["iterative", str(setup["checkpoint"]), "--data", str(setup["data"]), "--out", str(out)]
    command = [sys.executable, "-m", "regzoo", "benchmark", *args, "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "cases" / "iterative"
    deadline = time.monotonic() + 300
    while not (records / "00001.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no record appeared"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name: p.read_text() for p in records.glob("*.json")}
    assert 2 <= len(finished) < 6 and not (out / "table.md").exists()

    resumed = _regzoo("benchmark", *args, "--resume")
    assert "6 pairs, 2 models" in resumed.stdout
    for name, text in finished.items():
        assert (records / name).read_text() == text, f"{name} was measured again"
    assert len(list(records.glob("*.json"))) == 6
    table = _table(out / "table.csv")
    assert table[("iterative", "dice")] > table[("identity", "dice")] + 0.1

    other = [str(setup["checkpoint"]), "iterative", "--data", str(setup["data"])]
    changed = _regzoo("benchmark", *other, "--out", str(out), "--resume", check=False)
    assert changed.returncode == 2 and "give the same models" in changed.stderr


def test_benchmark_arguments_are_one_line_errors(tmp_path) -> None:
    for args, message in [
        (["iterative", "--data", str(tmp_path), "--out", str(tmp_path / "o")], "two or more"),
        (["iterative", "iterative", "--data", str(tmp_path), "--out", "o"], "given twice"),
        (["a", "b", "--data", str(tmp_path / "none"), "--out", "o"], "--data: not found"),
    ]:
        res = _regzoo("benchmark", *args, check=False)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.stderr
