"""`regzoo register --trajectory N`: the model's intermediate states as files.

One ITK-readable field per state (``ddf_stepNN.nii.gz``) and the moving image warped by each as one
4D series (``warped_trajectory.nii.gz``), written with the pair's other outputs (atomically, never
over an existing result without ``--force``). Commands run in-process through `regzoo.cli.main`
on 16 x 16 NIfTI images with seeded VoxelMorph checkpoints (dense and SVF).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import regzoo
from regzoo.cli import main
from regzoo.engine.checkpoint import save_checkpoint

SHAPE = (16, 16)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``moving.nii.gz``, ``fixed.nii.gz`` (2D) and checkpoints ``dense.pt``, ``svf.pt``."""
    root = tmp_path_factory.mktemp("trajectory")
    rng = np.random.default_rng(0)
    for name in ("moving", "fixed"):
        image = rng.random(SHAPE).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / f"{name}.nii.gz"))
    for transformer in ("dense", "svf"):
        torch.manual_seed(0)
        model = regzoo.create_model("voxelmorph", ndim=2, transformer=transformer)
        with torch.no_grad():  # a visible field from an untrained network
            model.flow.weight.normal_(0.0, 0.05)
        model_cfg = {"name": "voxelmorph", "ndim": 2, "transformer": transformer}
        config = {"model": model_cfg, "data": {"ndim": 2}}
        save_checkpoint(
            root / f"{transformer}.pt",
            {"model": "voxelmorph", "config": config, "state_dict": model.state_dict()},
        )
    return root


def _register(data: Path, model: str, out: Path, *extra: object) -> list[str]:
    args = ["register", data / model, "--moving", data / "moving.nii.gz",
            "--fixed", data / "fixed.nii.gz", "--threads", 1, "--out", out, *extra]  # fmt: skip
    return [str(a) for a in args]


def _run(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _field(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_a_bad_number_of_steps_is_one_line(data, tmp_path, capsys, steps):
    code, err = _run(capsys, _register(data, "svf.pt", tmp_path / "out", "--trajectory", steps))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--trajectory" in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        (["--learn2reg"], "--learn2reg"),
        (["--samples", "2"], "--samples"),
        (["--iterations", "3"], "--iterations 0"),
    ],  # fmt: skip
)
def test_trajectory_with_an_option_it_cannot_follow(data, tmp_path, capsys, extra, word):
    args = _register(data, "svf.pt", tmp_path / "out", "--trajectory", "3", *extra)
    code, err = _run(capsys, args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and word in err, err
    assert not (tmp_path / "out").exists()


def test_velocity_model_writes_exp_of_scaled_velocity_and_a_4d_series(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(capsys, _register(data, "svf.pt", out, "--trajectory", "4"))
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    steps = [f"ddf_step0{i}.nii.gz" for i in range(1, 5)]
    assert set(steps) | {"warped_trajectory.nii.gz", "warped.nii.gz", "ddf.nii.gz"} == set(names)
    fields = [_field(out / s) for s in steps]
    assert fields[0].shape == (16, 16, 1, 1, 2)  # ITK: (X, Y, Z, t, vector)
    assert np.abs(fields[0]).max() < 1e-6  # gamma = 0: the identity
    np.testing.assert_allclose(fields[-1], _field(out / "ddf.nii.gz"), atol=1e-6)
    sizes = [np.abs(f).mean() for f in fields]
    assert sizes == sorted(sizes) and sizes[-1] > 0
    series = _field(out / "warped_trajectory.nii.gz")
    assert series.shape == (16, 16, 1, 4)
    np.testing.assert_allclose(series[..., 0, 3], _field(out / "warped.nii.gz"), atol=1e-5)
    np.testing.assert_allclose(series[..., 0, 0], _field(data / "moving.nii.gz"), atol=1e-5)
    sitk = pytest.importorskip("SimpleITK")
    itk = sitk.ReadImage(str(out / "ddf_step03.nii.gz"), sitk.sitkVectorFloat64)
    assert itk.GetNumberOfComponentsPerPixel() in (2, 3)
    sitk.DisplacementFieldTransform(itk)  # ITK takes it as a displacement field


def test_trajectory_never_overwrites_without_force(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, _register(data, "svf.pt", out, "--trajectory", "3"))[0] == 0
    before = (out / "ddf_step02.nii.gz").read_bytes()
    code, err = _run(capsys, _register(data, "svf.pt", out, "--trajectory", "3"))
    assert code == 2 and "--force" in err
    assert (out / "ddf_step02.nii.gz").read_bytes() == before
    code, err = _run(capsys, _register(data, "svf.pt", out, "--trajectory", "2", "--force"))
    assert code == 0, err
    assert not (out / "ddf_step03.nii.gz").exists()  # the earlier result is replaced as a whole
    assert (out / "ddf_step02.nii.gz").is_file()


def test_a_model_without_states_writes_its_one_field(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, _register(data, "dense.pt", out, "--trajectory", "5"))[0] == 0
    assert sorted(p.name for p in out.glob("ddf_step*")) == ["ddf_step01.nii.gz"]
    np.testing.assert_allclose(
        _field(out / "ddf_step01.nii.gz"), _field(out / "ddf.nii.gz"), atol=1e-6
    )
    assert _field(out / "warped_trajectory.nii.gz").shape == (16, 16, 1, 1)
