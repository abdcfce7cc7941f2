"""Photographs with control points, the fundus recipe of packages/models-voxelmorph/README.md:
PNG read through Pillow (green channel), control points as per-image landmark files in the
Learn2Reg layout, VoxelMorph trained and scored by control-point error and the success-rate AUC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

import regzoo
from regzoo.config import resolve_config
from regzoo.data.io import load_image
from regzoo.engine.trainer import train
from regzoo.errors import ConfigError
from regzoo.metrics import success_auc

SIZE = 64


def _vessels(rng: np.random.Generator) -> np.ndarray:
    """Thin bright ridges, as vessels in a fundus photograph's green channel, in [0, 1]."""
    base = gaussian_filter(rng.standard_normal((SIZE, SIZE)), 2.0)
    return np.exp(-4 * (base / base.std()) ** 2)


@pytest.fixture(scope="module")
def fire(tmp_path_factory) -> Path:
    """Three pairs of RGB photographs (the second of each shifted by up to 3 px) with 10 control
    points each, as the recipe's converter writes FIRE: one landmark CSV (x, y) per image."""
    root = tmp_path_factory.mktemp("photos") / "FIRE"
    (root / "imagesTr").mkdir(parents=True)
    (root / "keypointsTr").mkdir()
    rng = np.random.default_rng(0)
    training, pairs = [], []
    for p in range(3):
        fixed = _vessels(rng)
        shift = rng.uniform(-3, 3, 2)  # (row, column)
        rows, cols = np.mgrid[:SIZE, :SIZE].astype(float)
        moving = map_coordinates(fixed, [rows + shift[0], cols + shift[1]], order=1, mode="nearest")
        points = rng.uniform(8, SIZE - 8, (10, 2))  # (row, column) in the fixed photograph
        for k, (image, rc) in enumerate(((fixed, points), (moving, points - shift)), 1):
            name = f"P{p:02d}_{k}"
            rgb = np.stack([0.5 * image, image, 0.2 * image], -1)
            Image.fromarray((255 * rgb).astype(np.uint8)).save(root / "imagesTr" / f"{name}.png")
            np.savetxt(root / "keypointsTr" / f"{name}.csv", rc[:, ::-1], delimiter=",")
            training.append(
                {"image": f"./imagesTr/{name}.png", "keypoints": f"./keypointsTr/{name}.csv"}
            )
        pairs.append(
            {"fixed": f"./imagesTr/P{p:02d}_1.png", "moving": f"./imagesTr/P{p:02d}_2.png"}
        )
    meta = {
        "name": "FIRE",
        "tensorImageShape": {"0": [SIZE, SIZE]},
        "training": training,
        "training_paired_images": pairs[:2],
        "registration_val": pairs[2:],
        "registration_test": pairs[2:],
    }
    (root / "FIRE_dataset.json").write_text(json.dumps(meta))
    return root


def test_a_photograph_is_read_with_pixel_x_y_as_voxel_x_y(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)  # 20 rows, 30 columns
    rgb[5, 12] = (10, 200, 30)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    green, info = load_image(tmp_path / "photo.png", channel="green")
    assert green.shape == (30, 20) and info.ndim == 2
    assert green[12, 5] == 200 and green.sum() == 200
    gray, _ = load_image(tmp_path / "photo.png")
    assert gray[12, 5] == round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)
    with pytest.raises(ConfigError, match="photo_channel"):
        regzoo.build("dataset", {"name": "folder", "root": str(tmp_path), "photo_channel": "red"})


def test_control_points_follow_the_photographs(fire):
    data = regzoo.build(
        "dataset",
        {"name": "learn2reg", "root": str(fire), "split": "val", "photo_channel": "green"},
    )
    item = data[0]
    fixed = np.asarray(Image.open(fire / "imagesTr" / "P02_1.png"))[..., 1]
    points = np.loadtxt(fire / "keypointsTr" / "P02_1.csv", delimiter=",")
    torch.testing.assert_close(item["fixed_landmarks"], torch.tensor(points, dtype=torch.float32))
    assert item["fixed"].shape == (1, SIZE, SIZE)
    # the image sampled at a control point (x, y) is the photograph's pixel (row y, column x)
    x, y = np.round(points[0]).astype(int)
    normalised = item["fixed"][0, x, y]
    assert float(normalised) == pytest.approx(
        np.clip(
            (fixed[y, x] - np.percentile(fixed, 0.5)) / np.ptp(np.percentile(fixed, [0.5, 99.5])),
            0,
            1,
        ),
        abs=1e-5,
    )


def test_recipe_lowers_control_point_error(fire, tmp_path):
    cfg = resolve_config(
        "voxelmorph",
        overrides=[
            "data.name=learn2reg",
            f"data.root={fire}",
            "data.photo_channel=green",
            "model.regularizer.loss_mult=1",
            "train.steps=150",
            "train.batch_size=1",
            "eval.split=val",
            "eval.metrics=[tre,success-auc,folding]",
            "eval.overview=false",
        ],
    )
    metrics = train(cfg, tmp_path, device="cpu", threads=1, progress=False).metrics
    assert metrics["summary"]["tre"] < metrics["identity"]["tre"]
    errors = [c["success-auc"] for c in metrics["cases"]]
    assert metrics["summary"]["success-auc"] == pytest.approx(success_auc(errors))
    assert metrics["summary"]["folding"] < 0.01
