"""Files written by the authors' ISTN networks load into regzoo's and give the official outputs.

``fixtures/`` was written once by ``tools/fixtures/make_istn_fixture.py`` with the official
``ITN2D``, ``STN2D`` and ``BSplineSTN2D`` (biomedia-mira/istn, ``pymira/nets``; ``fixtures/istn.json``
records the commit and versions): ``itn.pt`` and ``stn_<transform>.pt`` as the official training
script saves them, and ``istn_<transform>.npz`` with a fixed pair and the official outputs
(the ITN's images, the STN's transform, the warped moving image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import regzoo
from regzoo_istn import import_official

FIXTURES = Path(__file__).parent / "fixtures"
RECORD = json.loads((FIXTURES / "istn.json").read_text())
SIZE = tuple(RECORD["size"])


def _reference(transform: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / f"istn_{transform}.npz") as arrays:
        return {key: torch.from_numpy(arrays[key]) for key in arrays.files}


def _official_ddf(grid: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s grid ``(1, H, W, 2)`` (x first, [-1, 1], corners aligned) to voxels."""
    identity = torch.stack(
        torch.meshgrid(*[torch.linspace(-1, 1, n) for n in SIZE], indexing="ij"), dim=0
    )
    scale = torch.tensor([(n - 1) / 2 for n in SIZE]).view(1, 2, 1, 1)
    return (grid.permute(0, 3, 1, 2).flip(1) - identity) * scale


@pytest.mark.parametrize("transform", ["affine", "bspline"])
def test_official_itn_and_stn_files_give_the_official_outputs(transform):
    ref = _reference(transform)
    assert (ref["warped"] - ref["moving"]).abs().max() > 0.3  # a visible transform
    model = import_official(
        FIXTURES / "itn.pt", FIXTURES / f"stn_{transform}.pt", variant="e", size=SIZE
    )
    assert (model.ndim, model.transformer) == (2, transform)
    with torch.no_grad():
        out = model.eval()({"moving": ref["moving"], "fixed": ref["fixed"]})
        params = model.stn(torch.cat([out.extras["itn_moving"], out.extras["itn_fixed"]], dim=1))
    torch.testing.assert_close(out.extras["itn_moving"], ref["itn_moving"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.extras["itn_fixed"], ref["itn_fixed"], atol=1e-5, rtol=0)
    if transform == "affine":
        torch.testing.assert_close(params, ref["theta"], atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(out.ddf, _official_ddf(ref["grid"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.warped, ref["warped"], atol=1e-5, rtol=0)


def test_official_stn_alone_and_a_size_mismatch():
    baseline = import_official(None, FIXTURES / "stn_affine.pt", variant="u", size=SIZE)
    assert baseline.itn is None
    ref = _reference("affine")
    with torch.no_grad():
        theta = baseline.stn(torch.cat([ref["itn_moving"], ref["itn_fixed"]], dim=1))
    torch.testing.assert_close(theta, ref["theta"], atol=1e-5, rtol=0)
    with pytest.raises(regzoo.DataError, match="do not fit an ISTN of size"):
        import_official(FIXTURES / "itn.pt", FIXTURES / "stn_affine.pt", size=64)
