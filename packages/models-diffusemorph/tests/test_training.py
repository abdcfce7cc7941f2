"""DiffuseMorph trained with its quick preset on the embedded synthetic 2D pairs: held-out Dice,
and the trajectory the paper describes (Kim, Han, Ye, ECCV 2022, Sec. 3.3 and Fig. 5)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import regzoo
from regzoo.config import resolve_config
from regzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from regzoo.engine.evaluate import evaluate_case
from regzoo.engine.trainer import build_dataset, train

# the quick preset was chosen with train.seed 0 (held-out Dice 0.477 -> 0.602); checked here on
# train.seed 1 (0.604)
SEED = 1
GAIN = 0.1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusemorph")
    cfg = resolve_config(
        "diffusemorph",
        overrides=["eval.metrics=[dice,folding]", "eval.overview=false", f"train.seed={SEED}"],
    )
    metrics = train(cfg, out, device="cpu", threads=1, progress=False).metrics
    model = model_from_checkpoint(load_checkpoint(out / "last.pt")).eval()
    return cfg, metrics, model


@pytest.mark.slow
def test_quick_preset_raises_held_out_dice(trained):
    _, metrics, _ = trained
    gain = metrics["summary"]["dice"] - metrics["identity"]["dice"]
    assert gain >= GAIN, metrics["summary"]
    assert metrics["summary"]["folding"] < 0.005


@pytest.fixture(scope="module")
def states(trained):
    """Per held-out pair (all 16) and per state of the 7-step trajectory: Dice to the fixed labels,
    folding and mean |u|; and the one-pass Dice."""
    cfg, _, model = trained
    data = build_dataset(cfg, cfg.eval.split)
    metrics = {name: regzoo.build("metric", name) for name in ("dice", "folding")}
    dice, folding, size, one_pass = [], [], [], []
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=1):
            fields = model.trajectory(batch)
            assert len(fields) == 7
            values = [evaluate_case(batch, u, metrics) for u in fields]
            dice.append([float(v["dice"][0]) for v in values])
            folding.append([float(v["folding"][0]) for v in values])
            size.append([float(u.norm(dim=1).mean()) for u in fields])
            one_pass.append(float(evaluate_case(batch, model(batch).ddf, metrics)["dice"][0]))
    return torch.tensor(dice), torch.tensor(folding), torch.tensor(size), torch.tensor(one_pass)


@pytest.mark.slow
def test_trajectory_dice_rises_to_the_one_pass_value_without_folding(states):
    """Over ``gamma = 0, 1/6, ..., 1`` on the held-out pairs, Dice to the fixed labels never
    drops by more than 0.01 from one state to the next (on every pair) and ends at the one-pass
    value; folding, averaged over the pairs, stays under 0.5% at every state."""
    dice, folding, _, one_pass = states
    torch.testing.assert_close(dice[:, -1], one_pass)
    assert (dice.diff(dim=1) > -0.01).all(), dice
    assert dice.mean(0)[-1] > dice.mean(0)[0] + GAIN, dice.mean(0)
    assert (folding.mean(0) < 0.005).all(), folding.mean(0)


@pytest.mark.slow
def test_trajectory_starts_near_the_identity(states):
    """Mean |u| at ``gamma = 0`` is below 10% of its value at ``gamma = 1`` (the quick preset's
    identity anchor; measured 2.2%; trained without it: 52%)."""
    size = states[2].mean(0)
    assert size[0] < 0.1 * size[-1], size
