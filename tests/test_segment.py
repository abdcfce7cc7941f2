"""``regzoo segment``: a model that segments writes a label map of an image, in the image's own
geometry (read back by SimpleITK), with the original label values of its training data; bad
input is one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

ONE = ["--threads", "1"]
VALUES = (0, 10, 20, 30)  # label values that are not table indices


def _regzoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three 32 x 32 images with label maps of values 0, 10, 20, 30, on an oblique grid with
    1.5 x 2 mm voxels."""
    root = tmp_path_factory.mktemp("seg")
    affine = np.diag([1.5, 2.0, 1.0, 1.0])
    affine[:3, 3] = (10.0, -5.0, 3.0)
    gen = np.random.default_rng(0)
    for i in range(3):
        coarse = torch.from_numpy(gen.random((1, 1, 5, 5)))
        image = torch.nn.functional.interpolate(
            coarse, size=(32, 32), mode="bilinear", align_corners=True
        )[0, 0].numpy()
        image = (image - image.min()) / (image.max() - image.min())
        nib.save(nib.Nifti1Image((image * 100).astype(np.float32), affine), root / f"img{i}.nii.gz")
        labels = np.asarray(VALUES, np.int16)[np.clip(image * 4, 0, 3.99).astype(int)]
        nib.save(nib.Nifti1Image(labels, affine), root / f"img{i}_seg.nii.gz")
    return root


@pytest.fixture(scope="module")
def checkpoint(folder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    res = _regzoo(
        "train",
        "sddir",
        "data.name=folder",
        f"data.root={folder}",
        "--out",
        str(run),
        "train.steps=2",
        "eval.max_pairs=1",
        "eval.overview=false",
        "model.num_labels=4",
        *ONE,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return run / "last.pt"


@pytest.mark.slow  # trains a checkpoint first
def test_segment_writes_original_label_values_in_the_image_geometry(folder, checkpoint, tmp_path):
    out = tmp_path / "seg.nii.gz"
    image = folder / "img1.nii.gz"
    res = _regzoo("segment", str(checkpoint), "--image", str(image), "--out", str(out), *ONE)
    assert res.returncode == 0, res.stderr[-3000:]
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(image))
    assert written.GetSize() == source.GetSize()
    assert np.allclose(written.GetSpacing(), source.GetSpacing())
    assert np.allclose(written.GetOrigin(), source.GetOrigin())
    assert np.allclose(written.GetDirection(), source.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= set(VALUES)
    paired = tmp_path / "paired.nii.gz"
    args = ["--image", str(image), "--pair-with", str(folder / "img0.nii.gz")]
    assert _regzoo("segment", str(checkpoint), *args, "--out", str(paired), *ONE).returncode == 0
    assert paired.is_file()


def test_segment_refuses_bad_input_in_one_line(folder, tmp_path):
    image = folder / "img1.nii.gz"
    cases = [
        (["sddir", "--image", str(tmp_path / "missing.nii.gz")], "missing.nii.gz"),
        (["voxelmorph", "--image", str(image)], "does not segment"),
        (["ddir", "--image", str(image)], "does not segment"),
    ]
    for args, message in cases:
        res = _regzoo("segment", *args, "--out", str(tmp_path / "x.nii.gz"), *ONE)
        assert res.returncode == 2, res.stderr
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.nii.gz").exists()
    existing = tmp_path / "existing.nii.gz"
    existing.write_bytes(b"mine")
    res = _regzoo("segment", "sddir", "--image", str(image), "--out", str(existing), *ONE)
    assert res.returncode == 2 and "--force" in res.stderr
    assert existing.read_bytes() == b"mine"
    res = _regzoo(
        "segment", "sddir", "--image", str(image), "--out", str(existing), "--force", *ONE
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert nib.load(existing).shape == (32, 32)
