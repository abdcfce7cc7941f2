"""The authors' Keras VoxelMorph ``.h5`` files load into regzoo's (h5py, no TensorFlow) and give
the Keras network's field.

The fixtures were written once by ``tools/fixtures/make_voxelmorph_keras_fixture.py`` with the
official TensorFlow ``VxmDense`` (``fixtures/voxelmorph_keras.json`` records the commits and
versions): ``<name>.h5`` by ``VxmDense.save`` (as the published weights), ``..._weights.h5`` by
``save_weights``, and ``<name>.npz`` with a fixed pair, the registration model's displacement and
the flow convolution's output on it.
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

FIXTURES = Path(__file__).parent / "fixtures"
RECORD = json.loads((FIXTURES / "voxelmorph_keras.json").read_text())
ENC, DEC = RECORD["fixtures"]["vxm_keras_dense_2d"]["config"]["nb_unet_features"]


def _reference(name: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / f"{name}.npz") as arrays:
        return {key: torch.from_numpy(arrays[key]) for key in arrays.files}


def _model(transformer: str = "dense", **options) -> torch.nn.Module:
    return regzoo.create_model(
        "voxelmorph", ndim=2, enc_features=ENC, dec_features=DEC, transformer=transformer, **options
    )


def _ddf(model: torch.nn.Module, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()({"moving": ref["moving"], "fixed": ref["fixed"]}).ddf


@pytest.mark.parametrize("file", ["vxm_keras_dense_2d.h5", "vxm_keras_dense_2d_weights.h5"])
def test_keras_file_reproduces_the_keras_field(file):
    """Model file (config checked) and weights-only file: the Keras displacement (up to 17.7
    voxels here) within 1e-4 (measured 1.5e-5)."""
    ref = _reference("vxm_keras_dense_2d")
    assert ref["flow"].abs().max() > 1.0  # a visible field: loading nothing cannot pass
    model = _model()
    load_weights(model, FIXTURES / file)  # what --weights does
    torch.testing.assert_close(_ddf(model, ref), ref["flow"], atol=1e-4, rtol=0)
    by_path = _model()
    by_path.load_weights(FIXTURES / file)  # in Python
    torch.testing.assert_close(_ddf(by_path, ref), ref["flow"], atol=1e-4, rtol=0)


def test_keras_svf_file_gives_the_keras_velocity():
    """An SVF file needs an SVF model; its network output (before integration) is the Keras one."""
    ref = _reference("vxm_keras_svf_2d")
    with pytest.raises(DataError, match=r"official SVF \(int_steps=7, int_downsize=2\)"):
        load_weights(_model("dense"), FIXTURES / "vxm_keras_svf_2d.h5")
    model = _model("svf")
    load_weights(model, FIXTURES / "vxm_keras_svf_2d.h5")
    with torch.no_grad():
        head = model.flow(model.unet_model(torch.cat([ref["moving"], ref["fixed"]], dim=1)))
    torch.testing.assert_close(head, ref["head"], atol=1e-4, rtol=0)


def test_synthmorph_layout_3d_file_gives_the_keras_velocity():
    """The published SynthMorph files' layout (3D, one width throughout, velocity predicted at half
    resolution: ``svf_resolution=2``): the file builds the check, and the half-resolution network
    output equals the Keras one."""
    config = RECORD["fixtures"]["synthmorph_keras_3d"]["config"]
    ref = _reference("synthmorph_keras_3d")
    enc, dec = config["nb_unet_features"]
    svf = {"name": "svf", "steps": config["int_steps"], "downsize": config["int_resolution"]}
    options = dict(ndim=3, enc_features=enc, dec_features=dec, transformer=svf)
    with pytest.raises(DataError, match=r"unet_half_res=True, the model half_res=False"):
        load_weights(
            regzoo.create_model("voxelmorph", **options), FIXTURES / "synthmorph_keras_3d.h5"
        )
    model = regzoo.create_model("voxelmorph", **options, half_res=True)
    load_weights(model, FIXTURES / "synthmorph_keras_3d.h5")
    with torch.no_grad():
        head = model.flow(model.unet_model(torch.cat([ref["moving"], ref["fixed"]], dim=1)))
    assert head.shape[2:] == (8, 8, 16) and ref["head"].abs().max() > 1.0
    torch.testing.assert_close(head, ref["head"], atol=1e-4, rtol=0)


def test_weights_only_file_of_other_widths_names_the_layer():
    model = regzoo.create_model("voxelmorph", ndim=2, transformer="dense")
    with pytest.raises(
        DataError, match=r"layer vxm_dense_unet_enc_conv_0_0: kernel \(3, 3, 2, 4\)"
    ):
        load_weights(model, FIXTURES / "vxm_keras_dense_2d_weights.h5")


def test_cli_keras_mismatch_is_one_line_exit_2(capsys):
    code = main(["evaluate", "voxelmorph", "--weights", str(FIXTURES / "vxm_keras_dense_2d.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "vxm_keras_dense_2d.h5" in err and "enc_features=[4, 8, 8]" in err


def test_unreadable_hdf5_is_one_line(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(DataError, match=r"broken.h5: .*not a readable Keras HDF5 file"):
        load_weights(_model(), bad)
