"""Instance optimisation (`regzoo register --iterations N`) improves a trained network's pairs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

import regzoo
from regzoo.config import resolve_config
from regzoo.engine import train
from regzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from regzoo.engine.instance import instance_optimise
from regzoo.engine.trainer import build_dataset
from regzoo.labels import warp_labels
from regzoo.metrics import dice_per_label


@pytest.fixture(scope="module")
def briefly_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("io")
    cfg = resolve_config(
        "voxelmorph",
        None,
        ["train.steps=60", "train.batch_size=4", "eval.max_pairs=2", "eval.overview=false"],
    )
    train(cfg, out, progress=False)
    ckpt = load_checkpoint(out / "last.pt")
    return model_from_checkpoint(ckpt), cfg


def _dice(batch, ddf) -> float:
    warped = warp_labels(batch["moving_label"], ddf)
    return float(dice_per_label(warped, batch["fixed_label"]).nanmean())


@pytest.mark.slow
def test_instance_optimisation_lowers_objective_and_raises_dice(briefly_trained):
    model, cfg = briefly_trained
    test = build_dataset(cfg, "test")
    gains, drops = [], []
    for seed in range(5):
        torch.manual_seed(seed)
        batch = default_collate([test[seed]])
        with torch.no_grad():
            before_out = model.eval()(batch)
        before_obj = float(model.objective(batch, before_out))
        out, history = instance_optimise(model, batch, iterations=model.io_iterations or 50)
        assert history[0] == pytest.approx(before_obj, rel=1e-4)
        drops.append((history[0] - history[-1]) / abs(history[0]))
        gains.append(_dice(batch, out.ddf) - _dice(batch, before_out.ddf))
    assert sum(drops) / len(drops) >= 0.10 and min(drops) > 0, drops
    assert sum(gains) / len(gains) >= 0.02, gains


def test_instance_optimisation_never_reads_labels_and_leaves_model_alone(briefly_trained):
    model, cfg = briefly_trained
    batch = default_collate([build_dataset(cfg, "test")[0]])
    garbage = dict(
        batch,
        moving_label=torch.randint(0, 5, batch["moving_label"].shape),
        fixed_label=torch.zeros_like(batch["fixed_label"]),
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    a, _ = instance_optimise(model, batch, iterations=3, lr=1e-3)
    torch.manual_seed(0)
    b, _ = instance_optimise(model, garbage, iterations=3, lr=1e-3)
    torch.testing.assert_close(a.ddf, b.ddf)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert regzoo.get_entry("model", "voxelmorph").name == "voxelmorph"
