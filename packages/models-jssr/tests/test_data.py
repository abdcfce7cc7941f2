"""JSSR's multimodal data: the two-contrast synthetic pairs and folders with a modality per file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import regzoo
from regzoo.config import resolve_config
from regzoo.engine.trainer import train
from regzoo.errors import ConfigError, DataError


def _synth(name: str, **kw) -> torch.utils.data.Dataset:
    cfg = {"name": name, "ndim": 2, "size": 32, "split": "test", "pairing": "random", **kw}
    return regzoo.build("dataset", cfg)


def _label_means(image: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([image[labels == i].mean() for i in range(k)])


def test_two_contrast_pairs_have_one_contrast_per_role():
    """Moving scans share one contrast and fixed scans another: the mean intensity of every label
    agrees across moving scans of different pairs (up to noise and bias) and not with the fixed
    scans'. Core's multimodal synth draws a contrast per scan, so its moving scans disagree."""
    k = 6

    def spread(dataset, role):
        means = []
        for i in range(4):
            item = dataset[i]
            means.append(_label_means(item[role], item[f"{role}_label"], k))
        return torch.stack(means).std(0).mean()

    ours = _synth("synth-two-contrast", multimodal=True, num_labels=k)
    core = _synth("synth", multimodal=True, num_labels=k)
    item = ours[0]
    between = (
        (
            _label_means(item["moving"], item["moving_label"], k)
            - _label_means(item["fixed"], item["fixed_label"], k)
        )
        .abs()
        .mean()
    )
    assert spread(ours, "moving") < 0.3 * between
    assert spread(ours, "fixed") < 0.3 * between
    assert spread(core, "moving") > 2 * spread(ours, "moving")


def test_two_contrast_without_multimodal_is_synth():
    ours, core = _synth("synth-two-contrast"), _synth("synth")
    for key, value in core[3].items():
        assert torch.equal(ours[3][key], value), key


def _write(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


@pytest.fixture
def modality_folder(tmp_path):
    """Three subjects in two modalities (art, ven); label maps for ven only, 2D slices 32x32.

    Every subject has its own square; art and ven render it with different intensities."""
    rng = np.random.default_rng(0)
    for s in range(3):
        labels = np.zeros((32, 32, 1), dtype=np.int16)
        labels[4 + 3 * s : 20 + 3 * s, 6 : 22 + s] = 1
        labels[22:28, 10 + s : 18 + s] = 2
        for modality, levels in (("art", (0.2, 1.0, 0.5)), ("ven", (0.7, 0.1, 0.9))):
            image = np.take(levels, labels) + 0.05 * rng.standard_normal(labels.shape)
            _write(tmp_path / f"case{s}_{modality}.nii.gz", image.astype(np.float32))
        _write(tmp_path / f"case{s}_ven_seg.nii.gz", labels)
    return tmp_path


def _folder(root, **kw):
    cfg = {"name": "folder-multimodal", "root": str(root), "moving_modality": "art"}
    return regzoo.build("dataset", {**cfg, "fixed_modality": "ven", **kw})


def test_modality_folder_pairs_moving_modality_to_fixed_modality(modality_folder):
    paired = _folder(modality_folder)
    assert len(paired) == 3
    for i in range(3):
        item = paired[i]
        assert item["moving_path"].endswith(f"case{i}_art.nii.gz")
        assert item["fixed_path"].endswith(f"case{i}_ven.nii.gz")
        fixed_labels = np.asarray(
            nib.load(modality_folder / f"case{i}_ven_seg.nii.gz").dataobj
        ).squeeze()
        assert int(item["fixed_label"].count_nonzero()) == int(np.count_nonzero(fixed_labels))
        assert int(item["moving_label"].count_nonzero()) == 0  # art has no label maps
    everything = _folder(modality_folder, pairing="all")
    pairs = {(everything[i]["moving_path"], everything[i]["fixed_path"]) for i in range(9)}
    assert len(everything) == 9 and len(pairs) == 9
    assert all("_art" in m and "_ven" in f for m, f in pairs)
    reverse = _folder(modality_folder, moving_modality="ven", fixed_modality="art")
    assert reverse[0]["moving_path"].endswith("case0_ven.nii.gz")


def test_modality_folder_errors_name_the_problem(modality_folder):
    with pytest.raises(DataError, match="modalities found: art, ven"):
        _folder(modality_folder, fixed_modality="pv")
    with pytest.raises(ConfigError, match="pairing"):
        _folder(modality_folder, pairing="random")
    with pytest.raises(ConfigError, match="both modalities"):
        _folder(modality_folder, fixed_modality="art")
    _write(modality_folder / "nomodality.nii.gz", np.zeros((32, 32, 1), dtype=np.float32))
    with pytest.raises(DataError, match="<subject>_<modality>"):
        _folder(modality_folder)


def test_jssr_trains_on_a_modality_folder(modality_folder, tmp_path):
    """All three stages run on files whose moving modality has no label maps: S is supervised by
    the fixed (ven) maps, the moving maps (zeros) are never needed."""
    cfg = resolve_config(
        "jssr",
        None,
        [
            "preset=test",
            "data.name=folder-multimodal",
            f"data.root={modality_folder}",
            "data.moving_modality=art",
            "data.fixed_modality=ven",
            "model.ndim=2",
            "model.num_classes=3",
            "model.stage_steps=[2,2,2]",
            "train.steps=6",
            "train.lr=1e-3",
            "eval.overview=false",
            "eval.metrics=[dice]",
        ],
    )
    result = train(cfg, tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "log.csv").read_text()
    assert "seg_supervised" in log and "joint" in log
    assert len(result.metrics["cases"]) == 3
