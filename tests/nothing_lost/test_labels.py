"""Label maps of any values: each test is named for the user's label map that used to fail.

Before the label table, one-hot maps had ``max label + 1`` channels: label 20000 added 800 MB on a
small 2D pair, FreeSurfer's aparc (labels up to 2035) on 128^3 would have needed 17 GB, and labels
beyond float32's integers came back changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from regzoo.labels import BUDGET_ENV

# 40 labels of FreeSurfer's aseg + aparc (cortical parcels 1002..1035 and 2002..2035)
FREESURFER = [0, 2, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 30, 31, 41, 43]
FREESURFER += [44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60, 62, 63, 1035, 2002, 2034, 2035, 85]


def _regzoo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def _blocks(shape: tuple[int, ...], values: list[int], block: int, seed: int) -> np.ndarray:
    """A label map of ``block``-sized cubes drawing from ``values``, each value present."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), tuple(s // block for s in shape))
    index.flat[: len(values)] = np.arange(len(values))
    index = np.kron(index, np.ones((block,) * len(shape), dtype=np.int64))
    return np.asarray(values, dtype=np.int64)[index]


def _save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4), dtype=data.dtype), str(path))
    return path


def _folder(root: Path, values: list[int], shape=(32, 32), subjects: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(subjects):
        labels = _blocks(shape, values, 4, seed=i)
        image = (labels % 7).astype(np.float32) + 0.1 * rng.random(shape, dtype=np.float32)
        _save(root / f"s{i}.nii.gz", image)
        _save(root / f"s{i}_seg.nii.gz", labels.astype(np.int32))
    return root


_TRAIN = (
    "train",
    "voxelmorph",
    "model.enc_features=[4,8]",
    "model.dec_features=[8,8,4]",
    "model.seg_weight=0.1",
    "train.steps=2",
    "train.batch_size=1",
    "eval.max_pairs=2",
    "eval.overview=false",
    "eval.label_warp=linear",
)


def test_label_20000_on_a_small_2d_pair_trains_with_the_memory_of_its_labels(tmp_path):
    """4 labels present: a 1 MB one-hot budget is plenty (20001 maps would take 82 MB)."""
    data = _folder(tmp_path / "data", [0, 1, 2, 20000])
    run = tmp_path / "run"
    res = _regzoo(
        *_TRAIN,
        "data.name=folder",
        f"data.root={data}",
        "--out",
        str(run),
        env={BUDGET_ENV: "0.001"},
    )
    assert res.returncode == 0, res.stderr
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["labels"] == [0, 1, 2, 20000]
    report = json.loads((run / "metrics.json").read_text())
    assert list(report["dice_per_label"]) == ["1", "2", "20000"]  # named by the original values


def test_a_label_map_too_large_for_memory_is_one_line_naming_its_labels(tmp_path):
    data = _folder(tmp_path / "data", [0, 1, 2, 20000])
    res = _regzoo(
        *_TRAIN,
        "data.name=folder",
        f"data.root={data}",
        "--out",
        str(tmp_path / "run"),
        env={BUDGET_ENV: "0.00001"},  # 10 kB: 4 maps of 32x32 need 16 kB
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "4 labels" in lines[0] and BUDGET_ENV in lines[0]


def test_a_label_missing_from_the_dataset_json_is_one_line_naming_file_and_value(tmp_path):
    root = tmp_path / "L2R"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(1, 4):
        labels = _blocks((16, 16, 16), [0, 1, 2] + ([7] if i == 2 else []), 4, seed=i)
        name = f"L2R_{i:04d}_0000.nii.gz"
        _save(root / "imagesTr" / name, labels.astype(np.float32))
        _save(root / "labelsTr" / name, labels.astype(np.int16))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    pair = {"fixed": training[0]["image"], "moving": training[1]["image"]}
    meta = {"labels": {"0": {"1": "a", "2": "b"}}, "training": training, "registration_val": [pair]}
    (root / "L2R_dataset.json").write_text(json.dumps(meta))
    res = _regzoo(
        "evaluate", "voxelmorph", "--data", str(root), "model.ndim=3", "eval.split=val",
        "eval.overview=false",
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "L2R_0002_0000.nii.gz" in lines[0] and "7" in lines[0]


@pytest.mark.parametrize("big", [2**24 + 1, 10**10], ids=["2^24+1", "1e10"])
def test_label_values_beyond_float32_integers_come_back_exactly(tmp_path, big):
    """2^24 + 1 is no float32, 1e10 no int32; warped_seg must still hold them exactly."""
    values = [0, 5, 2035, big]
    labels = _blocks((16, 16, 16), values, 4, seed=0).astype(np.int32 if big < 2**31 else np.int64)
    image = (labels % 11).astype(np.float32)
    files = {
        name: _save(tmp_path / f"{name}.nii.gz", data)
        for name, data in (("fixed", image), ("moving", image), ("moving_seg", labels))
    }
    out = tmp_path / "out"
    res = _regzoo(
        "register", "voxelmorph", "--moving", str(files["moving"]), "--fixed",
        str(files["fixed"]), "--moving-seg", str(files["moving_seg"]), "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    warped = np.asarray(nib.load(out / "warped_seg.nii.gz").dataobj)
    assert np.array_equal(warped, labels)  # an untrained network moves less than half a voxel


_CHILD = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path

    # a wrong one-hot of 2036 maps (17 GB) fails here instead of exhausting the machine
    resource.setrlimit(resource.RLIMIT_AS, (12 * 2**30, 12 * 2**30))
    import torch
    import regzoo
    from regzoo.engine.register import PairFiles, load_pair, register_pair, write_outputs

    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    net = regzoo.create_model(
        "voxelmorph", ndim=3, enc_features=[4, 8], dec_features=[8, 8, 4]
    ).eval()
    names = ("moving", "fixed", "moving_seg", "fixed_seg")
    pair = load_pair(PairFiles(*(folder / f"{n}.nii.gz" for n in names)))
    result, _ = register_pair(net, pair)
    write_outputs(out, pair, result, label_table=net.label_table)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def _peak_rss_kb(folder: Path, out: Path) -> int:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split()[-1])


def test_freesurfer_labels_up_to_2035_register_in_the_memory_of_labels_0_to_40(tmp_path):
    shape = (128, 128, 128)
    peaks = {}
    for name, values in (("freesurfer", sorted(FREESURFER)), ("dense", list(range(40)))):
        folder = tmp_path / name
        folder.mkdir()
        for i, role in enumerate(("moving", "fixed")):
            labels = _blocks(shape, values, 8, seed=i)
            _save(folder / f"{role}.nii.gz", (labels % 13).astype(np.float32))
            _save(folder / f"{role}_seg.nii.gz", labels.astype(np.int16))
        peaks[name] = _peak_rss_kb(folder, tmp_path / f"out_{name}")
        warped = np.asarray(nib.load(tmp_path / f"out_{name}" / "warped_seg.nii.gz").dataobj)
        assert set(np.unique(warped).tolist()) <= set(values)
    assert max(FREESURFER) == 2035 and len(set(FREESURFER)) == 40
    assert peaks["freesurfer"] <= 1.5 * peaks["dense"], peaks


@pytest.mark.parametrize("value", [2035, 20000])
def test_a_checkpoint_keeps_the_original_label_values(tmp_path, value):
    """Segmentation predictions are written as original values: the table travels in last.pt."""
    from regzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint

    data = _folder(tmp_path / "data", [0, 3, value])
    run = tmp_path / "run"
    res = _regzoo(*_TRAIN, "data.name=folder", f"data.root={data}", "--out", str(run))
    assert res.returncode == 0, res.stderr
    model = model_from_checkpoint(load_checkpoint(run / "last.pt"))
    assert model.label_table.values == (0, 3, value)
