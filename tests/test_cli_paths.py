"""Public command-line paths the other tests do not take, one test each, on tiny 2D NIfTI files.

``train --nproc 2``, ``train --config FILE``, ``train --weights FILE``, ``register --samples``,
``register --fixed-seg``, ``apply`` on an image, ``evaluate --data`` on a NIfTI folder and
``list --kind``. Every training run is a few steps on 32 x 32 pairs; the point is the path, not
the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ONE = ["--threads", "1"]  # tiny shapes gain nothing from more threads on a shared machine
TRAIN = ["train.steps=2", "eval.max_pairs=2", "eval.overview=false", *ONE]
LABELS = (1, 2)


def _regzoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args], capture_output=True, text=True, timeout=900
    )


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three 32 x 32 smooth images (``imgN.nii.gz``) with 3-class label maps (``imgN_seg``)."""
    root = tmp_path_factory.mktemp("nifti")
    gen = np.random.default_rng(0)
    for i in range(3):
        coarse = torch.from_numpy(gen.random((1, 1, 6, 6)))
        image = torch.nn.functional.interpolate(
            coarse, size=(32, 32), mode="bilinear", align_corners=True
        )[0, 0].numpy()
        image = (image - image.min()) / (image.max() - image.min())
        nib.save(
            nib.Nifti1Image((image * 100).astype(np.float32), np.eye(4)), root / f"img{i}.nii.gz"
        )
        labels = np.clip(image * 3, 0, 2.99).astype(np.int16)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / f"img{i}_seg.nii.gz")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """``last.pt`` of a two-step VoxelMorph run on the embedded 2D data."""
    run = tmp_path_factory.mktemp("run")
    _ok(_regzoo("train", "voxelmorph", *TRAIN, "--out", str(run)))
    return run / "last.pt"


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=False)["state_dict"]


def test_train_nproc_2_is_one_process_with_the_global_batch(tmp_path):
    """Two processes of batch 1 average their gradients: the weights of one process of batch 2."""
    two, one = tmp_path / "two", tmp_path / "one"
    common = ["train", "voxelmorph", *TRAIN]
    out = _ok(_regzoo(*common, "train.batch_size=1", "--nproc", "2", "--out", str(two)))
    assert "Dice (2 held-out pairs)" in out
    _ok(_regzoo(*common, "train.batch_size=2", "--out", str(one)))
    single, ddp = _state(one), _state(two)
    for key, value in single.items():
        assert torch.allclose(ddp[key], value, atol=1e-6, rtol=1e-4), key


def test_train_config_file_then_overrides(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("model:\n  reg_weight: 0.5\ntrain:\n  steps: 3\n  lr: 0.002\n")
    run = tmp_path / "run"
    _ok(
        _regzoo(
            "train",
            "voxelmorph",
            *TRAIN[1:],
            "train.steps=1",
            "--config",
            str(config),
            "--out",
            str(run),
        )
    )
    resolved = (run / "config.yaml").read_text()
    assert "reg_weight: 0.5" in resolved and "lr: 0.002" in resolved  # from the file
    assert "steps: 1\n" in resolved  # key=value after the file wins


def test_train_weights_file_sets_the_initial_weights(checkpoint, tmp_path):
    state = _state(checkpoint.parent)
    gen = torch.Generator().manual_seed(5)
    start = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    weights = tmp_path / "start.pt"
    torch.save(start, weights)  # a bare state dict, as authors release weights
    run = tmp_path / "run"
    _ok(
        _regzoo(
            "train",
            "voxelmorph",
            *TRAIN[1:],
            "train.steps=1",
            "train.lr=1e-12",
            "--weights",
            str(weights),
            "--out",
            str(run),
        )
    )
    trained = _state(run)
    for key, value in start.items():  # one step at lr 1e-12 leaves the loaded weights
        assert torch.allclose(trained[key], value, atol=1e-8), key


def test_register_samples_writes_the_mean_field_and_its_uncertainty(folder, tmp_path):
    args = ["--moving", str(folder / "img0.nii.gz"), "--fixed", str(folder / "img1.nii.gz"), *ONE]
    _ok(
        _regzoo(
            "register", "transmorph-bayes", *args, "--samples", "3", "--out", str(tmp_path), *ONE
        )
    )
    uncertainty = _array(tmp_path / "uncertainty.nii.gz")
    assert uncertainty.shape[:2] == (32, 32) and np.isfinite(uncertainty).all()
    assert uncertainty.max() > 0  # Monte-Carlo dropout samples differ
    res = _regzoo("register", "voxelmorph", *args, "--samples", "3", "--out", str(tmp_path / "v"))
    assert res.returncode == 2 and "does not sample" in res.stderr


def test_register_fixed_seg_is_read_and_checked(folder, tmp_path):
    args = [
        "--moving",
        str(folder / "img0.nii.gz"),
        "--fixed",
        str(folder / "img1.nii.gz"),
        "--moving-seg",
        str(folder / "img0_seg.nii.gz"),
        *ONE,
    ]
    fixed_seg = folder / "img1_seg.nii.gz"
    _ok(
        _regzoo(
            "register",
            "voxelmorph",
            *args,
            "--fixed-seg",
            str(fixed_seg),
            "--out",
            str(tmp_path / "a"),
        )
    )
    assert (tmp_path / "a" / "warped_seg.nii.gz").is_file()
    wrong = tmp_path / "wrong_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), wrong)
    res = _regzoo(
        "register", "voxelmorph", *args, "--fixed-seg", str(wrong), "--out", str(tmp_path / "b")
    )
    assert res.returncode == 2, res.stderr
    assert "wrong_seg.nii.gz" in res.stderr and "does not match" in res.stderr


def test_apply_warps_an_image_as_register_did(checkpoint, folder, tmp_path):
    moving = folder / "img0.nii.gz"
    _ok(
        _regzoo(
            "register",
            str(checkpoint),
            "--moving",
            str(moving),
            "--fixed",
            str(folder / "img1.nii.gz"),
            "--iterations",
            "20",
            "--lr",
            "1e-2",
            *ONE,
            "--out",
            str(tmp_path),
        )
    )
    applied = tmp_path / "applied.nii.gz"
    _ok(_regzoo("apply", str(tmp_path / "ddf.nii.gz"), str(moving), "--out", str(applied)))
    ours, theirs = _array(applied), _array(tmp_path / "warped.nii.gz")
    assert np.abs(ours - theirs).max() < 1e-3 * np.ptp(theirs)
    assert np.abs(ours - _array(moving)).max() > 1e-2 * np.ptp(theirs)  # the field moved it


def _dice(moving: Path, fixed: Path) -> float:
    a, b = (_array(Path(str(p).replace(".nii", "_seg.nii"))) for p in (moving, fixed))
    return float(
        np.mean(
            [2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in LABELS]
        )
    )


def test_evaluate_data_on_a_nifti_folder(checkpoint, folder):
    out = json.loads(
        _ok(
            _regzoo(
                "evaluate",
                str(checkpoint),
                "--data",
                str(folder),
                "--json",
                "eval.overview=false",
                *ONE,
            )
        )
    )
    assert out["cases"], out
    for case in out["cases"]:
        moving, fixed = Path(case["moving_path"]), Path(case["fixed_path"])
        assert moving.parent == folder and fixed.parent == folder and moving != fixed
        assert case["before_dice"] == pytest.approx(_dice(moving, fixed), abs=1e-5)


def test_list_kind_lists_that_kind_only():
    losses = _ok(_regzoo("list", "--kind", "loss")).split()
    assert "lncc" in losses and "voxelmorph" not in losses
    transformers = _ok(_regzoo("list", "--kind", "transformer")).split()
    assert {"dense", "svf", "affine", "bspline"} <= set(transformers) and "lncc" not in transformers
