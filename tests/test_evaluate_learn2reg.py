"""`regzoo evaluate --data <learn2reg folder>` aggregates as the Learn2Reg scorer does.

The identity ("before") section is checked against the scorer's recipe computed here with scipy and
the surface-distance package; comparing the trained section through `register --learn2reg` files is
still open (see the session notes).
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import surface_distance as sd
from scipy.ndimage import gaussian_filter, map_coordinates

SHAPE = (16, 16, 16)


def _regzoo(*args):
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def l2r(tmp_path_factory):
    """A tiny Learn2Reg layout: 4 training scans with 2 labels, 2 validation pairs."""
    root = tmp_path_factory.mktemp("l2r") / "TINY"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(1, 5):
        img = gaussian_filter(rng.random(SHAPE), 2.5)
        img = (img - img.min()) / (img.max() - img.min())
        lab = np.digitize(img, [0.4, 0.6]).astype(np.int16)
        name = f"TINY_{i:04d}_0000.nii.gz"
        aff = np.diag([1.5, 1.0, 2.0, 1.0])
        nib.save(
            nib.Nifti1Image((img * 100).astype(np.float32), aff), str(root / "imagesTr" / name)
        )
        nib.save(nib.Nifti1Image(lab, aff), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    pairs = [(3, 4), (4, 3)]
    meta = {
        "name": "TINY",
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(SHAPE)},
        "modality": {"0": "MR"},
        "labels": {"0": {"1": "a", "2": "b"}},
        "numTraining": 4,
        "training": training,
        "training_paired_images": [],
        "numRegistration_val": 2,
        "registration_val": [
            {
                "fixed": f"./imagesTr/TINY_{f:04d}_0000.nii.gz",
                "moving": f"./imagesTr/TINY_{m:04d}_0000.nii.gz",
            }
            for f, m in pairs
        ],
        "registration_test": [],
    }
    (root / "TINY_dataset.json").write_text(json.dumps(meta))
    return root, pairs


def _labels(root, i):
    return np.asarray(nib.load(root / "labelsTr" / f"TINY_{i:04d}_0000.nii.gz").dataobj).astype(int)


def _scorer(fixed, moving, disp, spacing):
    """The Learn2Reg scorer's way: warp labels with the submitted voxel field (order 0), then score."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"))
    warped = map_coordinates(moving, grid + disp, order=0)
    dice, hd = [], []
    for k in (1, 2):
        a, b = warped == k, fixed == k
        dice.append(2 * (a & b).sum() / (a.sum() + b.sum()))
        dist = sd.compute_surface_distances(b, a, spacing)
        hd.append(sd.compute_robust_hausdorff(dist, 95))
    return float(np.mean(dice)), float(np.mean(hd))


def test_evaluate_learn2reg_summary_equals_scorer_formulas(l2r, tmp_path):
    root, pairs = l2r
    run = tmp_path / "run"
    res = _regzoo(
        "train",
        "voxelmorph",
        "data.ndim=3",
        "data.size=16",
        "train.steps=3",
        "train.batch_size=1",
        "eval.max_pairs=1",
        "eval.overview=false",
        "--out",
        str(run),
    )
    assert res.returncode == 0, res.stderr
    ev = tmp_path / "eval"
    res = _regzoo(
        "evaluate",
        str(run / "last.pt"),
        "--data",
        str(root),
        "eval.split=val",
        "eval.max_pairs=null",
        "eval.overview=true",
        "data.pad_multiple=null",
        "--json",
        "--out",
        str(ev),
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (
        len(out["cases"]) == 2 and (ev / "cases.csv").is_file() and (ev / "overview.png").is_file()
    )

    spacing = (1.5, 1.0, 2.0)
    identity = [
        _scorer(_labels(root, f), _labels(root, m), np.zeros((3, *SHAPE)), spacing)
        for f, m in pairs
    ]
    # The identity transform's numbers by the scorer's recipe (labels sampled at x + 0, order 0).
    for section, cases in (("identity", identity),):
        dice, hd = np.array(cases).T
        assert out[section]["dice"] == pytest.approx(dice.mean(), abs=1e-6), section
        assert out[section]["hd95"] == pytest.approx(hd.mean(), abs=1e-4), section
        spread = out["spread"][section]["dice"]
        assert spread["std"] == pytest.approx(dice.std(), abs=1e-6)
        assert spread["p30"] == pytest.approx(np.quantile(dice, 0.3), abs=1e-6)
