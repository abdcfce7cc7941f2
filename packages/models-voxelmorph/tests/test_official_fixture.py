"""Files written by the authors' VoxelMorph code load into regzoo's and give the official outputs.

The fixtures in ``fixtures/`` were written once by ``tools/fixtures/make_voxelmorph_fixture.py``
with the official PyTorch ``VxmDense`` (voxelmorph 0.2; ``fixtures/voxelmorph.json`` records the
commit and versions): ``<name>.pt`` by ``VxmDense.save`` (``{'config', 'model_state'}``),
``vxm_dense_2d_state_dict.pt`` by ``torch.save(model.state_dict())``, and ``<name>.npz`` with a
fixed input pair and the official network's outputs on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import regzoo
from regzoo.cli import main
from regzoo.engine.checkpoint import load_weights
from regzoo.errors import DataError
from regzoo_voxelmorph.official import architecture, from_official

FIXTURES = Path(__file__).parent / "fixtures"
RECORD = json.loads((FIXTURES / "voxelmorph.json").read_text())


def _reference(name: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / f"{name}.npz") as arrays:
        return {key: torch.from_numpy(arrays[key]) for key in arrays.files}


def _options(name: str) -> dict:
    """regzoo options of the fixture's network, written out as a user would give them."""
    config = RECORD["fixtures"][name]["config"]
    enc, dec = config["nb_unet_features"]
    transformer = "dense"
    if config["int_steps"]:
        transformer = {"name": "svf", "steps": config["int_steps"], "downsize": 2}
    return {
        "ndim": len(config["inshape"]),
        "enc_features": enc,
        "dec_features": dec,
        "transformer": transformer,
    }


def _run(model: torch.nn.Module, ref: dict[str, torch.Tensor]):
    with torch.no_grad():
        return model.eval()({"moving": ref["moving"], "fixed": ref["fixed"]})


@pytest.mark.parametrize("name", ["vxm_dense_2d", "vxm_dense_3d"])
def test_official_save_file_reproduces_the_official_field(name):
    ref = _reference(name)
    assert ref["flow"].abs().max() > 0.5  # a visible field: loading nothing cannot pass
    model = regzoo.create_model("voxelmorph", **_options(name))
    load_weights(model, FIXTURES / f"{name}.pt")  # what --weights does
    out = _run(model, ref)
    torch.testing.assert_close(out.ddf, ref["flow"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.warped, ref["warped"], atol=1e-5, rtol=0)


def test_model_built_from_the_official_config():
    ref = _reference("vxm_dense_2d")
    model = from_official(FIXTURES / "vxm_dense_2d.pt")
    assert model.transformer.__class__.__name__ == "Dense"
    torch.testing.assert_close(_run(model, ref).ddf, ref["flow"], atol=1e-5, rtol=0)


def test_plain_official_state_dict_with_grid_buffers_loads_strictly():
    ref = _reference("vxm_dense_2d")
    state = torch.load(FIXTURES / "vxm_dense_2d_state_dict.pt", weights_only=True)
    assert "transformer.grid" in state  # the official layout, sampling grid included
    model = regzoo.create_model("voxelmorph", **_options("vxm_dense_2d"))
    model.load_weights(state)
    torch.testing.assert_close(_run(model, ref).ddf, ref["flow"], atol=1e-5, rtol=0)
    by_path = regzoo.create_model("voxelmorph", **_options("vxm_dense_2d"))
    by_path.load_weights(FIXTURES / "vxm_dense_2d_state_dict.pt")
    torch.testing.assert_close(_run(by_path, ref).ddf, ref["flow"], atol=1e-5, rtol=0)
    del state["flow.bias"]
    with pytest.raises(RuntimeError, match="flow.bias"):
        model.load_weights(state)


def test_official_svf_file():
    """The SVF file's network output, velocity and integrated field are the official ones within
    1e-5 (the velocity resized by exactly 0.5 and the field by exactly 2, as ``ResizeTransform``)."""
    ref = _reference("vxm_svf_2d")
    model = regzoo.create_model("voxelmorph", **_options("vxm_svf_2d"))
    load_weights(model, FIXTURES / "vxm_svf_2d.pt")
    x = torch.cat([ref["moving"], ref["fixed"]], dim=1)
    with torch.no_grad():
        head = model.flow(model.unet_model(x))
    torch.testing.assert_close(head, ref["head"], atol=1e-5, rtol=0)
    assert ref["flow"].abs().max() > 0.5
    out = _run(model, ref)
    torch.testing.assert_close(out.velocity, ref["preint_flow"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.ddf, ref["flow"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.warped, ref["warped"], atol=1e-5, rtol=0)


def test_official_config_maps_to_regzoo_options():
    svf = architecture(RECORD["fixtures"]["vxm_svf_2d"]["config"])
    assert svf["transformer"] == {"name": "svf", "steps": 7, "downsize": 2}
    assert svf["enc_features"] == [4, 8, 8] and svf["dec_features"] == [8, 8, 8, 4, 4]
    defaults = architecture({"inshape": [160, 192, 224]})
    assert defaults["enc_features"] == [16, 32, 32, 32] and defaults["transformer"]["steps"] == 7
    # the integer form: nb_features * feat_mult ** level, as the official Unet computes it
    wide = architecture(
        {
            "inshape": [64, 64],
            "nb_unet_features": 8,
            "nb_unet_levels": 3,
            "unet_feat_mult": 2,
            "nb_unet_conv_per_level": 2,
        }
    )
    assert wide["enc_features"] == [8, 8, 16, 16] and wide["dec_features"] == [32, 32, 16, 16, 8, 8]


@pytest.mark.parametrize(
    ("name", "transformer", "says"),
    [
        ("vxm_dense_2d", "svf", r"official dense \(int_steps=0\) VoxelMorph, the model is SVF"),
        ("vxm_svf_2d", "dense", r"official SVF \(int_steps=7, int_downsize=2\) VoxelMorph"),
    ],
)
def test_dense_and_svf_files_are_told_apart(name, transformer, says):
    options = {**_options(name), "transformer": transformer}
    with pytest.raises(DataError, match=rf"weights do not fit the model \(the file is an {says}"):
        load_weights(regzoo.create_model("voxelmorph", **options), FIXTURES / f"{name}.pt")
    default_widths = regzoo.create_model("voxelmorph", transformer=_options(name)["transformer"])
    with pytest.raises(DataError, match=r"enc_features=\[4, 8, 8\], the model \[16, 32, 32, 32\]"):
        load_weights(default_widths, FIXTURES / f"{name}.pt")


def test_cli_weights_mismatch_is_one_line_exit_2(capsys):
    enc, dec = RECORD["fixtures"]["vxm_dense_2d"]["config"]["nb_unet_features"]
    code = main(
        [
            "evaluate",
            "voxelmorph",
            "--weights",
            str(FIXTURES / "vxm_dense_2d.pt"),
            f"model.enc_features={enc}",
            f"model.dec_features={dec}",
            "model.transformer=svf",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "official dense (int_steps=0) VoxelMorph" in err and "model.transformer=dense" in err


def test_cli_loads_the_official_svf_file_with_the_suggested_override(capsys):
    """The override the mismatch error names is one the command line takes, and then it loads."""
    enc, dec = RECORD["fixtures"]["vxm_svf_2d"]["config"]["nb_unet_features"]
    code = main(
        [
            "evaluate",
            "voxelmorph",
            "--weights",
            str(FIXTURES / "vxm_svf_2d.pt"),
            f"model.enc_features={enc}",
            f"model.dec_features={dec}",
            "model.transformer={name: svf, steps: 7, downsize: 2}",
            "eval.max_pairs=1",
            "eval.metrics=[dice]",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "dice" in captured.out


def test_official_bidir_option_builds_or_names_the_override():
    """An official file saved with ``bidir=True`` (same weights) builds a bidirectional model; a
    model without the option refuses it in one line naming ``model.bidir=true``."""
    content = torch.load(FIXTURES / "vxm_svf_2d.pt", weights_only=True)
    content["config"]["bidir"] = True
    model = from_official(content)
    assert model.bidir
    assert _run(model, _reference("vxm_svf_2d")).inverse_ddf is not None
    one_way = regzoo.create_model("voxelmorph", **_options("vxm_svf_2d"))
    with pytest.raises(ValueError, match=r"bidir=True, the model False: use model.bidir=true"):
        one_way.load_weights(content)
