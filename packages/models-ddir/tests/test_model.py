"""DDIR and SDDIR: the official network sizes, the region-wise field, the official loss, the
need for label maps, and SDDIR = DDIR when it registers with the label maps."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import regzoo
from regzoo.errors import UserError
from regzoo.testing import tiny_batch


def _official_network(ndim: int) -> int:
    """Parameters of one network of the official ``DDIR`` (``DDIR/networks.py``): the Keras
    ``multi_channel_unet`` with ``full_size=False`` (encoder 2->16, 16->32, 32->32, 32->32 at
    stride 2; decoder 32->32, 64->32, 64->32, 48->32, 32->16) and the ``flow{k}`` and
    ``log_sigma{k}`` heads (16 -> ndim), all 3x3(x3) with bias."""
    k = 3**ndim
    convs = [
        (2, 16),
        (16, 32),
        (32, 32),
        (32, 32),
        (32, 32),
        (64, 32),
        (64, 32),
        (48, 32),
        (32, 16),
    ]
    convs += [(16, ndim), (16, ndim)]
    return sum(k * cin * cout + cout for cin, cout in convs)


@pytest.mark.parametrize("ndim", [2, 3])
def test_parameter_count_is_four_official_networks(ndim):
    """3D: 4 x 266,374 = 1,065,496 parameters, the official model's for its 128x128x32 input."""
    model = regzoo.build("model", {"name": "ddir", "ndim": ndim})
    assert sum(p.numel() for p in model.parameters()) == 4 * _official_network(ndim)
    if ndim == 3:
        assert 4 * _official_network(3) == 1_065_496


def _perturbed(name: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = regzoo.build("model", {"name": name, **config}).eval()
    with torch.no_grad():
        for network in model.networks:
            network.flow.weight.normal_(0, 0.05)
    return model


def test_field_is_the_region_masked_sum_of_the_networks_fields():
    """Inside fixed region k the field is network k's; network k sees only region k of each
    image, so changing either image outside its region k leaves network k's field unchanged."""
    model = _perturbed("ddir")
    batch = tiny_batch(2, (32, 32))
    with torch.no_grad():
        out = model(batch)
        regions = out.extras["fixed_regions"]
        assert torch.allclose(out.ddf, (regions.unsqueeze(2) * out.extras["region_ddf"]).sum(1))
        k = 1
        inside = regions[:, k : k + 1].bool().expand_as(out.ddf)
        assert torch.equal(out.ddf[inside], out.extras["region_ddf"][:, k][inside])
        changed = dict(batch)
        for side in ("moving", "fixed"):
            outside = batch[f"{side}_label"] != k
            changed[side] = torch.where(outside, torch.rand_like(batch[side]), batch[side])
        again = model(changed)
    assert torch.allclose(again.extras["region_ddf"][:, k], out.extras["region_ddf"][:, k])
    assert not torch.allclose(again.extras["region_ddf"][:, 0], out.extras["region_ddf"][:, 0])


def test_regions_group_labels_and_every_label_needs_a_region():
    model = _perturbed("ddir", num_regions=2, regions=[[0, 1], [2, 3]])
    batch = tiny_batch(2, (32, 32))
    with torch.no_grad():
        regions = model(batch).extras["fixed_regions"]
    assert torch.equal(regions[:, 1:2].bool(), batch["fixed_label"] >= 2)
    with pytest.raises(UserError, match="label index 3 has no region"):
        _perturbed("ddir", num_regions=3)(batch)
    with pytest.raises(UserError, match="label maps of both images"):
        model({"moving": batch["moving"], "fixed": batch["fixed"]})
    with pytest.raises(regzoo.errors.ConfigError, match="leave out"):
        regzoo.build("model", {"name": "ddir", "num_regions": 2, "regions": [[0, 2], [3]]})


def test_loss_is_the_official_weighted_sum():
    """20 (1 - clip(LNCC)) + 200 (1 - soft Dice) + 0.025 sum_k KL_k."""
    model = _perturbed("ddir").train()
    batch = tiny_batch(2, (32, 32))
    out = model(batch)
    terms = model.loss(batch, out)
    expected = 20 * terms["similarity"] + 200 * terms["segmentation"] + 0.025 * terms["kl"]
    assert torch.allclose(terms["loss"], expected)
    lncc = regzoo.build("loss", {"name": "lncc", "window": 9})(out.warped, batch["fixed"])
    assert torch.allclose(terms["similarity"], 1 + lncc)
    kl = regzoo.build("loss", {"name": "kl-prior", "prior_lambda": 100.0})
    means, log_sigmas = out.extras["flow_mean"], out.extras["flow_log_sigma"]
    assert torch.allclose(terms["kl"], sum(kl(means[:, k], log_sigmas[:, k]) for k in range(4)))


def test_sddir_with_the_label_maps_is_ddir():
    """Built from one seed, SDDIR's registration networks are DDIR's; registering with the
    label maps (``label_masks``) gives DDIR's field, with its predicted maps another one."""
    torch.manual_seed(0)
    ddir = regzoo.build("model", {"name": "ddir"}).eval()
    torch.manual_seed(0)
    sddir = regzoo.build("model", {"name": "sddir", "label_masks": True}).eval()
    with torch.no_grad():
        for a, b in zip(ddir.networks, sddir.networks):
            a.flow.weight.normal_(0, 0.05)
            b.flow.weight.copy_(a.flow.weight)
        batch = tiny_batch(2, (32, 32))
        out = sddir(batch)
        assert torch.equal(out.ddf, ddir(batch).ddf)
        assert out.moving_seg.shape == (2, 4, 32, 32) == out.fixed_seg.shape
        sddir.label_masks = False
        predicted = sddir(batch)
        unlabelled = sddir({"moving": batch["moving"], "fixed": batch["fixed"]})
    assert not torch.equal(predicted.ddf, out.ddf)
    assert torch.equal(unlabelled.ddf, predicted.ddf)


def test_sddir_trains_its_segmenter_with_cross_entropy():
    model = regzoo.build("model", {"name": "sddir"}).train()
    batch = tiny_batch(2, (32, 32))
    terms = model.loss(batch, model(batch))
    assert {"seg_moving", "seg_fixed"} <= set(terms)
    terms["loss"].backward()
    assert model.segmenter.head.weight.grad.abs().sum() > 0


def _regzoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args], capture_output=True, text=True, timeout=600
    )


def test_register_needs_both_label_maps(tmp_path):
    """``regzoo register ddir`` without ``--moving-seg`` and ``--fixed-seg``: one line, exit 2;
    with them it registers, instance optimisation included (the maps reach the forward, never
    the label-free objective)."""
    batch = tiny_batch(2, (32, 32), batch_size=1)
    paths = {}
    for side in ("moving", "fixed"):
        paths[side] = tmp_path / f"{side}.nii.gz"
        nib.save(nib.Nifti1Image(batch[side][0, 0].numpy() * 100, np.eye(4)), paths[side])
        paths[f"{side}_seg"] = tmp_path / f"{side}_seg.nii.gz"
        labels = batch[f"{side}_label"][0, 0].numpy().astype(np.int16)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), paths[f"{side}_seg"])
    images = ["--moving", str(paths["moving"]), "--fixed", str(paths["fixed"]), "--threads", "1"]
    res = _regzoo("register", "ddir", *images, "--out", str(tmp_path / "a"))
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--moving-seg" in res.stderr
    segs = ["--moving-seg", str(paths["moving_seg"]), "--fixed-seg", str(paths["fixed_seg"])]
    res = _regzoo(
        "register", "ddir", *images, *segs, "--iterations", "2", "--out", str(tmp_path / "b")
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "b" / "warped_seg.nii.gz").is_file()
