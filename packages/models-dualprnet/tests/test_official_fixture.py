"""Outputs of regzoo's Dual-PRNet against the authors' networks (fixtures written by
tools/fixtures/make_dualprnet_fixture.py from kangmiao15/Dual-Stream-PRNet-Plus, commit in
fixtures/dualprnet.json): the official state dicts load by name, unchanged, and give the same
feature pyramid and coarsest residual field on a fixed 16^3 pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import regzoo

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-5


def _load(name: str) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    state = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    return state, dict(np.load(FIXTURES / f"{name}.npz"))


def _pair(data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(data[k]) for k in ("moving", "fixed")}


def test_cascade_network_matches_official():
    """The MICCAI network (``CascadeMorphNet3d`` around ``RefinePyramid3d`` and ``VoxResNet``):
    the whole official state dict loads strictly; the refined pyramid and the coarsest level's
    field equal the official ones (its channels in the official x, y, z order are flipped into
    regzoo's axis order)."""
    state, data = _load("dualprnet_cascade")
    model = regzoo.create_model("dual-prnet", ndim=3, channels=[2, 4, 4, 8], fpn_dim=8)
    model.load_weights(state)
    model.eval()
    batch = _pair(data)
    with torch.no_grad():
        levels = model.pyramid(torch.cat([batch["moving"], batch["fixed"]], 0))
        out = model(batch)
    for i, level in enumerate(levels):
        np.testing.assert_allclose(level.numpy(), data[f"level_{i}"], rtol=0, atol=ATOL)
    coarsest = out.extras["residual_0"].flip(1)
    # a 1x1x1 field at 1/16 of the input: three distinct components, so the order is checked
    assert len(set(np.round(data["delta_0"].ravel(), 4))) == 3
    np.testing.assert_allclose(coarsest.numpy(), data["delta_0"], rtol=0, atol=ATOL)


def test_voxnet_pyramid_matches_official():
    """Dual-PRNet++'s encoder-decoder: the official ``VoxNet`` state dict loads into the model's
    ``pyramid`` and gives the same five maps."""
    state, data = _load("dualprnet_voxnet")
    model = regzoo.create_model("dual-prnet-plus", ndim=3, channels=[2, 4, 4, 8, 8]).eval()
    model.pyramid.load_state_dict(state, strict=True)
    batch = _pair(data)
    with torch.no_grad():
        levels = model.pyramid(torch.cat([batch["moving"], batch["fixed"]], 0))
    assert len(levels) == 5
    for i, level in enumerate(levels):
        np.testing.assert_allclose(level.numpy(), data[f"level_{i}"], rtol=0, atol=ATOL)


def test_official_names_with_ddp_prefix():
    """Checkpoints saved from a DistributedDataParallel wrapper carry ``module.``; it is dropped."""
    state, _ = _load("dualprnet_cascade")
    model = regzoo.create_model("dual-prnet", ndim=3, channels=[2, 4, 4, 8], fpn_dim=8)
    model.load_weights({f"module.{k}": v for k, v in state.items()})
    with pytest.raises(RuntimeError):
        model.load_weights({k: v for k, v in state.items() if not k.startswith("offset.0")})
