"""Bad inputs to `regzoo register` / `evaluate`: one line on stderr naming the culprit, exit code 2.

One case per kind of bad input the command line meets: a missing file, a corrupt NIfTI, NaN and
Inf voxels, a 4D image, a moving and fixed image of different dimensionality, labels with
non-integer values, a checkpoint of another model and a truncated checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import regzoo
from regzoo.engine.checkpoint import save_checkpoint


def _image(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 2.0, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    good = rng.random((16, 16, 16)).astype(np.float32)
    nan, inf = good.copy(), good.copy()
    nan[3, 4, 5], inf[5, 4, 3] = np.nan, np.inf
    labels = np.zeros((16, 16, 16), np.float32)
    labels[4:8, 4:8, 4:8] = 1.5
    (root / "corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    checkpoint = root / "voxelmorph.pt"
    config = {"model": {"name": "voxelmorph", "ndim": 3}, "data": {"normalize": "percentile"}}
    state = regzoo.create_model("voxelmorph", ndim=3).state_dict()
    save_checkpoint(checkpoint, {"model": "voxelmorph", "config": config, "state_dict": state})
    truncated = root / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    other = root / "other-model.pt"
    torch.save({"state_dict": regzoo.create_model("voxelmorph-1", ndim=3).state_dict()}, other)
    return {
        "fixed": _image(root / "fixed.nii.gz", good),
        "moving": _image(root / "moving.nii.gz", good[::-1].copy()),
        "corrupt": root / "corrupt.nii.gz",
        "nan": _image(root / "nan.nii.gz", nan),
        "inf": _image(root / "inf.nii.gz", inf),
        "4d": _image(root / "four_d.nii.gz", np.stack([good] * 3, -1)),
        "2d": _image(root / "slice.nii.gz", good[:, :, 0]),
        "float_labels": _image(root / "float_seg.nii.gz", labels),
        "checkpoint": checkpoint,
        "truncated": truncated,
        "other": other,
    }


def _register(files: dict[str, Path], model: str = "voxelmorph", **kw: str) -> list[str]:
    paths = {"moving": str(files["moving"]), "fixed": str(files["fixed"]), **kw}
    args = ["register", model, "--out", str(files["fixed"].parent / "out")]
    for key, value in paths.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


CASES = {
    "missing file": (lambda f: _register(f, moving=str(f["fixed"].parent / "absent.nii.gz")), "absent.nii.gz"),
    "corrupt NIfTI": (lambda f: _register(f, fixed=str(f["corrupt"])), "corrupt.nii.gz"),
    "NaN voxels": (lambda f: _register(f, moving=str(f["nan"])), "nan.nii.gz"),
    "Inf voxels": (lambda f: _register(f, fixed=str(f["inf"])), "inf.nii.gz"),
    "4D image": (lambda f: _register(f, moving=str(f["4d"])), "four_d.nii.gz"),
    "2D moving, 3D fixed": (lambda f: _register(f, moving=str(f["2d"])), "slice.nii.gz"),
    "non-integer labels": (lambda f: _register(f, moving_seg=str(f["float_labels"])), "float_seg.nii.gz"),
    "checkpoint of another model": (lambda f: _register(f, weights=str(f["other"])), "other-model.pt"),
    "truncated checkpoint": (lambda f: _register(f, model=str(f["truncated"])), "truncated.pt"),
    "truncated checkpoint (evaluate)": (lambda f: ["evaluate", str(f["truncated"])], "truncated.pt"),
    "another model's weights (evaluate)": (
        lambda f: ["evaluate", "voxelmorph", "--weights", str(f["other"]), "data.ndim=3"],
        "other-model.pt",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_with_exit_code_2(files, case):
    make_args, culprit = CASES[case]
    res = subprocess.run(
        [sys.executable, "-m", "regzoo", *make_args(files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("regzoo: error: "), res.stderr
    assert culprit in lines[0], lines[0]
