"""Affine pre-alignment: ``affine_align`` recovers known affines; ``register --affine`` checks."""

from __future__ import annotations

import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import regzoo
from regzoo.engine.affine import affine_align
from regzoo.errors import ConfigError
from regzoo.spatial import affine_inverse, affine_to_ddf, warp
from regzoo.testing import one_thread as _one_thread

one_thread = pytest.fixture(autouse=True)(_one_thread)


def _random_affine(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Rotation up to 20 degrees, scaling 0.9-1.1 per axis, translation up to 10% of the size,
    ``(1, 2, 3)`` on centred voxel coordinates."""
    rng = np.random.default_rng(seed)
    angle = math.radians(rng.uniform(-20, 20))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rotation @ np.diag(rng.uniform(0.9, 1.1, 2))
    shift = rng.uniform(-0.1, 0.1, 2) * np.array(shape)
    return torch.tensor(np.concatenate([matrix, shift[:, None]], 1), dtype=torch.float32)[None]


def _scan(contrast_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2D 64x64 scan of the embedded data with a contrast of its own, and its foreground."""
    data = regzoo.build(
        "dataset", {"name": "synth", "ndim": 2, "size": 64, "split": "test", "seed": contrast_seed}
    )
    item = data[0]
    # a head in air: the scan inside a disc, so the image has an outline to align
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    inside = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 26**2).float()
    return (item["moving"] * inside)[None], inside.bool()


@pytest.mark.parametrize("similarity", ["ncc", "mi"])
def test_affine_align_recovers_a_known_affine(similarity: str) -> None:
    """Within 0.5 voxel RMS over the foreground (the real-image test asks 1 voxel); MI on two
    contrasts of one anatomy."""
    fixed, inside = _scan(0)
    source = fixed if similarity == "ncc" else fixed.clamp_min(1e-3).pow(0.3) * (fixed > 0)
    for seed in (0, 1):
        theta = _random_affine((64, 64), seed)
        moving = warp(source, affine_to_ddf(affine_inverse(theta), (64, 64)))
        found = affine_align(moving, fixed, similarity)
        error = (affine_to_ddf(found, (64, 64)) - affine_to_ddf(theta, (64, 64))).norm(dim=1)[0]
        assert error[inside].pow(2).mean().sqrt() < 0.5, (seed, found, theta)


def test_affine_align_settings_are_checked() -> None:
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(ConfigError, match="one of ncc, mi"):
        affine_align(image, image, "lncc")
    with pytest.raises(ConfigError, match="differ"):
        affine_align(image, image, levels=[2, 1], iterations=[5])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--affine", "--affine-similarity", "cc"], "--affine-similarity must be one of ncc, mi"),
        (["--affine", "--trajectory", "3"], "--trajectory shows the network's own states"),
    ],
)
def test_register_affine_options_are_one_line_exit_2(tmp_path, extra, message) -> None:
    for name in ("m", "f"):
        nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)),
                 tmp_path / f"{name}.nii.gz")  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "regzoo", "register", "iterative", "--moving",
         str(tmp_path / "m.nii.gz"), "--fixed", str(tmp_path / "f.nii.gz"), "--out",
         str(tmp_path / "out"), *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "out").exists()
