"""The embedded template-to-subject set with small organs, ``synth-organs``."""

from __future__ import annotations

import time

import pytest
import torch

import regzoo
from regzoo.data import SynthOrgansDataset
from regzoo.errors import ConfigError
from regzoo.labels import warp_labels
from regzoo.metrics.overlap import dice_per_label


def _organs(**kw) -> SynthOrgansDataset:
    return regzoo.build("dataset", {"name": "synth-organs", **kw})


def test_items_pair_the_template_with_subject_scans():
    """Every item's moving image and labels are the one template; fixed scans differ; the
    labels hold 4 large structures and 4 small organs of a few voxels each."""
    ds = _organs(split="test", num_subjects=4)
    assert isinstance(ds, SynthOrgansDataset) and len(ds) == 4 and ds.organ_labels == [4, 5, 6, 7]
    a, b = ds[0], ds[1]
    assert a["moving"].shape == (1, 64, 64) and a["true_ddf"].shape == (2, 64, 64)
    assert torch.equal(a["moving"], b["moving"]) and torch.equal(
        a["moving_label"], b["moving_label"]
    )
    assert not torch.equal(a["fixed"], b["fixed"])
    for item in (a, b):
        counts = torch.bincount(item["fixed_label"].flatten(), minlength=8)
        assert len(counts) == 8 and all(3 <= int(c) <= 40 for c in counts[4:]), counts
        assert all(int(c) > 400 for c in counts[:4]), counts
    again = _organs(split="test", num_subjects=4)[1]
    assert all(torch.equal(b[k], again[k]) for k in b)
    assert ds.label_table.num_classes == 8


def test_organs_move_with_the_anatomy():
    """The true field maps the template's labels onto the scan's (organs included) much better
    than no warp: Dice of the small organs."""
    ds = _organs(split="test", num_subjects=8)
    items = [ds[i] for i in range(8)]
    moving = torch.stack([it["moving_label"] for it in items])
    fixed = torch.stack([it["fixed_label"] for it in items])
    ddf = torch.stack([it["true_ddf"] for it in items])
    true = dice_per_label(warp_labels(moving, ddf), fixed, [4, 5, 6, 7]).nanmean()
    none = dice_per_label(moving, fixed, [4, 5, 6, 7]).nanmean()
    assert true > 0.8 and none < 0.6, (float(true), float(none))


def test_3d_and_fresh_items_and_speed():
    ds = _organs(ndim=3, size=24, split="train", length=3)
    assert ds.fresh and ds[0]["fixed"].shape == (1, 24, 24, 24)
    assert not torch.equal(ds[0]["fixed"], ds[1]["fixed"])
    fast = _organs(split="train")
    fast[0]
    start = time.perf_counter()
    for i in range(20):
        fast[i]
    assert (time.perf_counter() - start) / 20 < 0.05


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="centres"):
        _organs(radii=[0.05])
    with pytest.raises(ConfigError, match="num_structures"):
        _organs(num_structures=1)
