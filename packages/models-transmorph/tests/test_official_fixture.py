"""Checkpoints written from the authors' TransMorph and TransMorph-affine load into regzoo's and
give the official outputs.

``fixtures/`` was written once by ``tools/fixtures/make_transmorph_fixture.py`` with the official
``TransMorph`` and ``CONFIGS['TransMorph-Tiny']`` made smaller (``fixtures/transmorph.json`` records
the sizes, the commit and the versions): ``transmorph_tiny.pth.tar`` as the authors' training
scripts save (``{'epoch', 'state_dict', 'best_dsc', 'optimizer'}``) and ``transmorph_tiny.npz``
with a fixed input and the official field and warped image (every second voxel per axis); and by
``tools/fixtures/make_transmorph_affine_fixture.py`` with the official ``TransMorphAffine`` made
smaller (``fixtures/transmorph_affine.json``): ``transmorph_affine.pth.tar`` and
``transmorph_affine.npz`` with a fixed input, the official heads' outputs, matrix and warped image;
and by ``tools/fixtures/make_transmorph_diff_fixture.py`` with the official ``TransMorphDiff`` in its
half- and full-resolution configs (``fixtures/transmorph_diff.json``): ``transmorph_diff*.pth.tar``
and ``transmorph_diff*.npz`` with a fixed pair and the official displacement and warped image in
evaluation mode (every second voxel per axis).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import regzoo
from regzoo.engine.checkpoint import load_weights
from regzoo.spatial import affine_to_normalised
from regzoo_transmorph.checkpoint import load_official_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
RECORD = json.loads((FIXTURES / "transmorph.json").read_text())
EVERY2 = (
    slice(None),
    slice(None),
    slice(None, None, 2),
    slice(None, None, 2),
    slice(None, None, 2),
)


def _reference(name: str = "transmorph_tiny") -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / f"{name}.npz") as arrays:
        return {key: torch.from_numpy(arrays[key]) for key in arrays.files}


def _model() -> torch.nn.Module:
    return regzoo.create_model("transmorph", **RECORD["network"])


def _state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "transmorph_tiny.pth.tar", weights_only=True)["state_dict"]


def test_official_checkpoint_reproduces_the_official_field():
    ref = _reference()
    assert ref["flow"].abs().max() > 1.0  # a visible field: loading nothing cannot pass
    model = _model()
    assert sum(p.numel() for p in model.parameters()) == RECORD["parameters"]
    load_weights(model, FIXTURES / "transmorph_tiny.pth.tar")  # what --weights does
    x = ref["x"].float()
    with torch.no_grad():
        out = model.eval()({"moving": x[:, :1], "fixed": x[:, 1:]})
    torch.testing.assert_close(out.ddf[EVERY2], ref["flow"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.warped[EVERY2], ref["warped"], atol=1e-5, rtol=0)


def test_dataparallel_prefix_and_mismatches():
    state = {"module." + k: v for k, v in _state().items()}
    model = load_official_checkpoint(_model(), {"state_dict": state})
    assert torch.equal(model.reg_head[0].weight, state["module.reg_head.0.weight"])
    other = regzoo.create_model("transmorph-tiny")
    with pytest.raises(ValueError, match=r"shapes differ \(e\.g\. "):
        load_official_checkpoint(other, state)
    del state["module.c2.0.weight"]
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. c2\.0\.weight\)"):
        load_official_checkpoint(_model(), state)


AFFINE = json.loads((FIXTURES / "transmorph_affine.json").read_text())


def test_official_affine_checkpoint_reproduces_the_official_transform():
    ref = _reference("transmorph_affine")
    assert ref["rotation"].abs().max() > 0.1 and (ref["warped"] - ref["x"][:, :1]).abs().max() > 0.5
    model = regzoo.create_model("transmorph-affine", **AFFINE["network"])
    assert list(model.transformer.layers[0].window_size) == AFFINE["window_size"]
    assert sum(p.numel() for p in model.parameters()) == AFFINE["parameters"]
    path = FIXTURES / "transmorph_affine.pth.tar"
    official = torch.load(path, weights_only=True)["state_dict"]
    names = {k for k in official if not k.endswith("relative_position_index")}
    assert names == set(model.state_dict())  # the official names, nothing more or less
    load_weights(model, path)  # what --weights does
    x = ref["x"].float()
    with torch.no_grad():
        out = model.eval()({"moving": x[:, :1], "fixed": x[:, 1:]})
    for key in ("rotation", "scale", "translation", "shear"):
        torch.testing.assert_close(out.extras[key], ref[key], atol=1e-5, rtol=0, msg=key)
    theta = affine_to_normalised(out.affine, x.shape[2:], align_corners=False)
    torch.testing.assert_close(theta, ref["mat"], atol=1e-5, rtol=0)
    # The official warp samples through affine_grid(align_corners=False), regzoo's through its
    # voxel-unit field: the same positions to float32 precision (measured 6e-6 at most, at the
    # image border, where the zero padding makes the image jump).
    torch.testing.assert_close(out.warped, ref["warped"], atol=1e-5, rtol=0)


DIFF = json.loads((FIXTURES / "transmorph_diff.json").read_text())


@pytest.mark.parametrize("name", ["transmorph-diff", "transmorph-diff-fullres"])
def test_official_diff_checkpoint_reproduces_the_official_field(name):
    """The mean velocity, squared 7 times (at half or full resolution): the official displacement
    (returned in grid_sample's [-1, 1] units) within 2e-4 voxel (measured 1.1e-4 on fields of up
    to 23 voxels) and the warped image within 1e-4."""
    record = DIFF["fixtures"][name]
    ref = _reference(name.replace("-", "_"))
    model = regzoo.create_model(name, **record["network"])
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]
    load_weights(model, FIXTURES / f"{name.replace('-', '_')}.pth.tar")
    with torch.no_grad():
        out = model.eval()({"moving": ref["moving"].float(), "fixed": ref["fixed"].float()})
    size = torch.tensor(DIFF["img_size"], dtype=torch.float32).view(1, 3, 1, 1, 1)
    official = ref["disp"] * (size - 1) / 2
    assert official.abs().max() > 1.0  # a visible field: loading nothing cannot pass
    torch.testing.assert_close(out.ddf[EVERY2], official, atol=2e-4, rtol=0)
    torch.testing.assert_close(out.warped[EVERY2], ref["warped"], atol=1e-4, rtol=0)
