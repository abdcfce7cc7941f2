"""One preprocessing pipeline: ``train`` (file data), ``evaluate --data`` and ``register`` feed a
network the same inputs; augmentation only in training; outputs in the fixed file's geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter

import regzoo
from regzoo.cli import main
from regzoo.data.grid import resample
from regzoo.data.io import load_ddf, load_image
from regzoo.data.preprocess import Preprocessing, build_augment
from regzoo.errors import ConfigError

TINY = [
    "model.ndim=3",
    "model.enc_features=[4,4,4,4]",
    "model.dec_features=[4,4,4,4,4,4,4]",
    "train.steps=2",
    "train.batch_size=1",
    "train.log_every=1",
    "eval.overview=false",
]


def _affine(spacing, degrees, origin) -> np.ndarray:
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rot @ np.diag(spacing) @ np.diag([-1, 1, 1])  # the first axis runs R to L
    out[:3, 3] = origin
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two CT-like scans (HU range) on different oblique, anisotropic grids, with label maps."""
    root = tmp_path_factory.mktemp("ct")
    rng = np.random.default_rng(5)
    grids = {
        "a": ((18, 16, 12), _affine((1.5, 1.2, 2.0), 15, (-10.0, 20.0, 3.0))),
        "b": ((16, 17, 11), _affine((1.6, 1.1, 2.2), 25, (-9.0, 21.5, 2.0))),
    }
    for name, (shape, affine) in grids.items():
        smooth = gaussian_filter(rng.random(shape), 2.0)
        smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
        image = (smooth * 3000 - 1000).astype(np.float32)  # -1000..2000 HU
        labels = np.digitize(smooth, [0.35, 0.65]).astype(np.int16)
        nib.save(nib.Nifti1Image(image, affine), str(root / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(root / f"{name}_seg.nii.gz"))
    return root


PREPROCESSING = [
    "data.spacing=2.0",
    "data.clip=[-500,1500]",
    "data.percentiles=[2,98]",
    "data.pairing=atlas",
    "data.atlas=a",
]


@pytest.fixture
def recorded(monkeypatch):
    """Every forward of VoxelMorph: (training mode, moving, fixed), inputs as the network got them."""
    calls: list[tuple[bool, torch.Tensor, torch.Tensor]] = []
    cls = type(regzoo.create_model("voxelmorph", ndim=2))
    forward = cls.forward

    def recording(self, batch):
        calls.append(
            (self.training, batch["moving"].detach().clone(), batch["fixed"].detach().clone())
        )
        return forward(self, batch)

    monkeypatch.setattr(cls, "forward", recording)
    return calls


def _train(folder: Path, out: Path, *extra: str) -> Path:
    code = main(
        [
            "train",
            "voxelmorph",
            "--out",
            str(out),
            "--threads",
            "2",
            f"data.root={folder}",
            "data.name=folder",
            *PREPROCESSING,
            *TINY,
            *extra,
        ]
    )
    assert code == 0
    return out / "last.pt"


def _register(model: str, folder: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "register",
            model,
            "--moving",
            str(folder / "b.nii.gz"),
            "--fixed",
            str(folder / "a.nii.gz"),
            "--moving-seg",
            str(folder / "b_seg.nii.gz"),
            "--out",
            str(out),
            "--threads",
            "2",
            *extra,
        ]
    )


def test_train_evaluate_and_register_feed_the_network_the_same_inputs(folder, tmp_path, recorded):
    ckpt = _train(folder, tmp_path / "run")
    training = [c for c in recorded if c[0]]
    assert len(training) == 2
    recorded.clear()
    assert main(["evaluate", str(ckpt), "--data", str(folder), "--threads", "2", "--json"]) == 0
    evaluated = list(recorded)
    recorded.clear()
    assert _register(str(ckpt), folder, tmp_path / "reg", "--iterations", "0") == 0
    registered = list(recorded)
    assert len(evaluated) == 1 and len(registered) == 1

    _, moving, fixed = training[0]
    # spacing 2 mm: the 27 x 19.2 x 24 mm fixed field of view is 14 x 10 x 12, padded to 16
    assert moving.shape == fixed.shape == (1, 1, 16, 16, 16)
    assert 0.0 <= float(fixed.min()) and float(fixed.max()) <= 1.0 and float(fixed.max()) > 0.99
    for _, m, f in [*training[1:], *evaluated, *registered]:
        torch.testing.assert_close(m, moving, atol=1e-6, rtol=0)
        torch.testing.assert_close(f, fixed, atol=1e-6, rtol=0)

    # the checkpoint's preprocessing is what built them (not the defaults)
    cfg = torch.load(ckpt, weights_only=False)["config"]
    prep = Preprocessing.from_config(cfg["data"])
    assert prep.spacing == (2.0,) and prep.clip == (-500.0, 1500.0) and prep.percentiles == (2, 98)
    default = Preprocessing().model_grid(load_image(folder / "a.nii.gz")[1])[0]
    assert default != tuple(fixed.shape[2:])


def test_augmentation_only_in_training(folder, tmp_path, recorded):
    noise = "data.augment=[{name: RandGaussianNoised, keys: [moving], prob: 1.0, std: 0.1, sample_std: false}]"
    # length 4: items 0..3 are the one pair, each with its own draw
    ckpt = _train(folder, tmp_path / "run", noise, "data.length=4")
    training = [c for c in recorded if c[0]]
    final_eval = [c for c in recorded if not c[0]]
    recorded.clear()
    assert main(["evaluate", str(ckpt), "--data", str(folder), "--threads", "2", "--json"]) == 0
    assert _register(str(ckpt), folder, tmp_path / "reg", "--iterations", "0") == 0
    clean = list(recorded)
    assert len(training) == 2 and len(final_eval) == 4 and len(clean) == 5
    _, moving, fixed = clean[-1]  # registration's
    for _, m, f in [*final_eval, *clean]:  # evaluation and registration: no noise
        torch.testing.assert_close(m, moving, atol=1e-6, rtol=0)
        torch.testing.assert_close(f, fixed, atol=1e-6, rtol=0)
    for _, m, f in training:  # training: noise of std 0.1 on the moving image only
        assert 0.07 < float((m - moving).std()) < 0.13
        torch.testing.assert_close(f, fixed, atol=1e-6, rtol=0)
    assert not torch.equal(training[0][1], training[1][1])  # two items, two draws


def test_ddf_on_another_spacing_reproduces_warped_in_simpleitk(folder, tmp_path, recorded):
    ckpt = _train(folder, tmp_path / "run")
    out = tmp_path / "reg"
    assert _register(str(ckpt), folder, out, "--iterations", "20", "--lr", "0.01") == 0
    fixed_img, warped_img = nib.load(folder / "a.nii.gz"), nib.load(out / "warped.nii.gz")
    assert warped_img.shape == fixed_img.shape
    np.testing.assert_allclose(warped_img.affine, fixed_img.affine, atol=1e-5)
    assert nib.load(out / "ddf.nii.gz").shape == (*fixed_img.shape, 1, 3)

    field = sitk.ReadImage(str(out / "ddf.nii.gz"), sitk.sitkVectorFloat64)
    moving = sitk.ReadImage(str(folder / "b.nii.gz"), sitk.sitkFloat64)
    fixed = sitk.ReadImage(str(folder / "a.nii.gz"), sitk.sitkFloat64)
    tx = sitk.DisplacementFieldTransform(field)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz"), sitk.sitkFloat64))

    # where x + ddf(x) falls inside the moving image (ITK and torch pad differently outside)
    ddf, finfo = load_ddf(out / "ddf.nii.gz")
    _, minfo = load_image(folder / "b.nii.gz")
    ones = torch.ones((1, *minfo.shape))
    inside = resample(
        ones, minfo.grid_affine, finfo.shape, finfo.grid_affine, ddf=torch.from_numpy(ddf)
    )
    # canonical -> the file's axes -> ITK's (z, y, x)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), finfo.ornt)
    mask = nib.orientations.apply_orientation(inside[0].numpy(), back).transpose(2, 1, 0) > 1 - 1e-6
    assert mask.mean() > 0.5
    span = float(theirs.max() - theirs.min())
    diff = float(np.abs(ours - theirs)[mask].max())
    assert diff < 1e-3 * span, diff
    # the field matters: it moves the image far more than that
    identity = sitk.GetArrayFromImage(
        sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, 0.0)
    )
    assert float(np.abs(ours - identity)[mask].max()) > 10 * diff + 1e-2 * span


def test_model_name_with_bare_weights_gets_the_defaults_said_once(folder, tmp_path, capsys):
    net = regzoo.create_model("voxelmorph", ndim=3)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    code = _register(
        "voxelmorph",
        folder,
        tmp_path / "reg",
        "--weights",
        str(tmp_path / "w.pt"),
        "--iterations",
        "0",
    )
    assert code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no preprocessing" in err[0] and "voxelmorph" in err[0], err
    assert "pad_multiple=16" in err[0]


def test_augment_entries_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="not a dictionary transform"):
        build_augment([{"name": "NoSuchTransformd", "keys": ["moving"]}])
    with pytest.raises(ConfigError, match="keys must name"):
        build_augment([{"name": "RandGaussianNoised", "keys": ["image"]}])
    with pytest.raises(ConfigError, match="RandGaussianNoised"):
        build_augment([{"name": "RandGaussianNoised", "keys": ["moving"], "sdt": 1}])
