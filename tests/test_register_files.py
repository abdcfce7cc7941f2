"""`regzoo register` / `regzoo apply` on NIfTI files: outputs other tools read and apply."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from regzoo.data.io import load_image
from regzoo.spatial import integrate_velocity


def _regzoo(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def _oblique_affine(spacing=(1.2, 0.8, 2.0), degrees=20.0, origin=(-12.0, 30.0, 5.5)):
    """A voxel-to-RAS affine with a rotation, anisotropic spacing, an axis flip and an origin."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing) @ np.diag([-1, 1, 1])  # first axis runs right-to-left
    aff[:3, 3] = origin
    return aff


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Blobs (fixed) and a smoothly deformed copy (moving) on an oblique anisotropic grid, + labels."""
    root = tmp_path_factory.mktemp("pair")
    g = torch.Generator().manual_seed(3)
    shape = (30, 26, 18)
    noise = torch.nn.functional.avg_pool3d(torch.rand(1, 1, *shape, generator=g), 7, 1, 3)
    fixed = (noise - noise.min()) / (noise.max() - noise.min())
    labels = (fixed * 3).floor().clamp(0, 2).long()
    v = torch.nn.functional.avg_pool3d(torch.randn(1, 3, *shape, generator=g) * 12, 9, 1, 4)
    ddf = integrate_velocity(v)
    from regzoo.labels import warp_labels
    from regzoo.spatial import warp

    moving = warp(fixed, -ddf, padding="border")
    moving_labels = warp_labels(labels, -ddf)
    aff = _oblique_affine()
    files = {}
    for name, arr in {
        "fixed": fixed * 200 + 10,
        "moving": moving * 200 + 10,
        "fixed_seg": labels,
        "moving_seg": moving_labels,
    }.items():
        data = arr[0, 0].numpy().astype(np.int16 if "seg" in name else np.float32)
        files[name] = root / f"case_{0 if 'fixed' in name else 1:04d}_{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), str(files[name]))
    return files


def _sitk_array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat64))


def test_register_writes_fields_that_simpleitk_applies(pair, tmp_path):
    out = tmp_path / "out"
    res = _regzoo(
        "register",
        "voxelmorph",
        "--moving",
        str(pair["moving"]),
        "--fixed",
        str(pair["fixed"]),
        "--moving-seg",
        str(pair["moving_seg"]),
        "--out",
        str(out),
        "--iterations",
        "25",
        "--json",
        "--threads",
        "2",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report[0]["objective"]["after"] < report[0]["objective"]["before"]
    for name in ("warped.nii.gz", "ddf.nii.gz", "warped_seg.nii.gz"):
        assert (out / name).is_file(), name

    # Outputs carry the fixed image's geometry.
    fixed_img, warped_img = nib.load(pair["fixed"]), nib.load(out / "warped.nii.gz")
    np.testing.assert_allclose(warped_img.affine, fixed_img.affine, atol=1e-5)
    assert warped_img.shape == fixed_img.shape
    seg = np.asarray(nib.load(out / "warped_seg.nii.gz").dataobj)
    assert np.issubdtype(seg.dtype, np.integer) and set(np.unique(seg)) <= {0, 1, 2}

    # The field, applied by SimpleITK, reproduces regzoo's warped image.
    field = sitk.ReadImage(str(out / "ddf.nii.gz"), sitk.sitkVectorFloat64)
    moving = sitk.ReadImage(str(pair["moving"]), sitk.sitkFloat64)
    fixed = sitk.ReadImage(str(pair["fixed"]), sitk.sitkFloat64)
    resampled = sitk.Resample(
        moving, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0
    )
    ours, theirs = _sitk_array(out / "warped.nii.gz"), sitk.GetArrayFromImage(resampled)
    inner = (slice(2, -2),) * 3
    span = float(ours.max() - ours.min())
    diff = np.abs(ours - theirs)[inner].max()
    assert diff < 1e-3 * span, diff
    # ... and the field matters: warping changed the moving image far more than that.
    assert np.abs(ours - _sitk_array(pair["moving"]))[inner].max() > 10 * diff + 1e-3 * span

    # `regzoo apply` puts the same field on the label map again.
    res = _regzoo(
        "apply",
        str(out / "ddf.nii.gz"),
        str(pair["moving_seg"]),
        "--labels",
        "--out",
        str(tmp_path / "a.nii.gz"),
    )
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj), seg)


def test_pairs_csv_and_learn2reg_names(pair, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        f"moving,fixed\n{pair['moving']},{pair['fixed']}\n{pair['fixed']},{pair['moving']}\n"
    )
    out = tmp_path / "sub"
    res = _regzoo(
        "register",
        "voxelmorph",
        "--pairs",
        str(csv),
        "--learn2reg",
        "--iterations",
        "0",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["disp_0000_0001.nii.gz", "disp_0001_0000.nii.gz"]
    disp = nib.load(out / names[0])
    assert disp.shape == (*nib.load(pair["fixed"]).shape, 3)


def test_bad_inputs_are_one_line_errors(pair, tmp_path):
    cases = [
        (
            [
                "register",
                "voxelmorph",
                "--moving",
                str(tmp_path / "nope.nii.gz"),
                "--fixed",
                str(pair["fixed"]),
            ],
            "nope.nii.gz",
        ),
        (["register", "voxelmorph", "--fixed", str(pair["fixed"])], "--moving"),
        (["apply", str(pair["fixed"]), str(pair["moving"])], str(pair["fixed"].name)),
    ]
    bad = tmp_path / "nan.nii.gz"
    data = np.zeros((8, 8, 8), np.float32)
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(bad))
    cases.append(
        (["register", "voxelmorph", "--moving", str(bad), "--fixed", str(pair["fixed"])], "NaN")
    )
    for args, needle in cases:
        res = _regzoo(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr


def test_loaded_pair_is_canonical(pair):
    array, info = load_image(pair["fixed"])
    assert info.shape == array.shape and info.ndim == 3
    np.testing.assert_allclose(sorted(info.spacing), sorted([1.2, 0.8, 2.0]), rtol=1e-5)
