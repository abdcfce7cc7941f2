"""`regzoo evaluate --data <learn2reg folder>` aggregates as the Learn2Reg scorer does.

Both sections of the summary are checked against the challenge scorer's recipe computed here with
scipy and the surface-distance package: the identity ("before") on the label maps as they are, the
trained model on the `disp_XXXX_YYYY.nii.gz` files `regzoo register --learn2reg` writes for it.
The scans have a background margin, as real ones do: scipy's order-0 `map_coordinates` drops
samples even a fraction of a voxel beyond the last voxel, where regzoo rounds to it first.
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
        lab = np.zeros(SHAPE, np.int16)  # a background margin, as scans have
        lab[2:-2, 2:-2, 2:-2] = np.digitize(img, [0.4, 0.6])[2:-2, 2:-2, 2:-2]
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
        "train.steps=40",
        "train.lr=3e-3",
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

    pair_csv = tmp_path / "pairs.csv"
    image = str(root / "imagesTr" / "TINY_{:04d}_0000.nii.gz")
    pair_csv.write_text("".join(f"{image.format(m)},{image.format(f)}\n" for f, m in pairs))
    subs = tmp_path / "submission"
    res = _regzoo(
        "register",
        str(run / "last.pt"),
        "--pairs",
        str(pair_csv),
        "--learn2reg",
        "--out",
        str(subs),
    )
    assert res.returncode == 0, res.stderr

    spacing = (1.5, 1.0, 2.0)
    identity, trained = [], []
    for f, m in pairs:
        fixed, moving = _labels(root, f), _labels(root, m)
        identity.append(_scorer(fixed, moving, np.zeros((3, *SHAPE)), spacing))
        disp = np.asarray(nib.load(subs / f"disp_{f:04d}_{m:04d}.nii.gz").dataobj)
        trained.append(_scorer(fixed, moving, np.moveaxis(disp, -1, 0), spacing))
    assert np.abs(np.array(trained) - np.array(identity)).max() > 0.01  # the model moved labels
    by_pair = {(c["fixed_path"], c["moving_path"]): c for c in out["cases"]}
    for (f, m), (dice, hd) in zip(pairs, trained, strict=True):
        case = by_pair[(image.format(f), image.format(m))]
        assert case["dice"] == pytest.approx(dice, abs=1e-6)
        assert case["hd95"] == pytest.approx(hd, abs=1e-4)
    for section, cases in (("identity", identity), ("summary", trained)):
        dice, hd = np.array(cases).T
        assert out[section]["dice"] == pytest.approx(dice.mean(), abs=1e-6), section
        assert out[section]["hd95"] == pytest.approx(hd.mean(), abs=1e-4), section
        spread = out["spread"][section]["dice"]
        assert spread["std"] == pytest.approx(dice.std(), abs=1e-6), section
        assert spread["p30"] == pytest.approx(np.quantile(dice, 0.3), abs=1e-6), section
