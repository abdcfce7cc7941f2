"""Helpers of the RCN tests that train: fixed synthetic 2D pairs, a short training loop through
the model's own ``training_step`` and the held-out Dice of the warped label maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.labels import warp_labels
from regzoo.metrics.overlap import dice_per_label
from regzoo.models import Optimizers

SIZE = 64
# Large deformations (per-scan velocity std up to 12 voxels) and pairs that are not pre-aligned
# (a random affine on top of the smooth warp); the plugin's quick presets use the same data.
LARGE = {"name": "synth", "ndim": 2, "size": SIZE, "deform_std": 12.0}
UNALIGNED = {
    "name": "synth",
    "ndim": 2,
    "size": SIZE,
    "deformation": "affine+smooth",
    "max_rotation": 15.0,
    "max_translation": 0.1,
    "scale_range": [0.9, 1.1],
}
KEYS = ("moving", "fixed", "moving_label", "fixed_label", "true_ddf", "true_affine")


def pairs(data: Mapping[str, Any], split: str, n: int) -> dict[str, torch.Tensor]:
    """``n`` fixed pairs of the split, stacked into one batch."""
    config = {**data, "split": split, "fresh": False, "num_subjects": n}
    ds = regzoo.build("dataset", config)
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([item[k] for item in items]) for k in KEYS if k in items[0]}


def train(
    model: torch.nn.Module,
    data: Mapping[str, torch.Tensor],
    steps: int,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
) -> torch.nn.Module:
    """Adam on random batches of ``data`` (drawn from ``seed``); returns the model in eval mode."""
    optim = Optimizers({k: make_optimizer(p, lr=lr) for k, p in model.parameter_groups().items()})
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(data["moving"]), (batch_size,), generator=g)
        batch = {k: data[k][idx] for k in ("moving", "fixed")}
        model.training_step(batch, optim, step)
    return model.eval()


def dice(ddf: torch.Tensor, data: Mapping[str, torch.Tensor]) -> float:
    """Mean Dice (labels 1.., background 0 excluded) of the moving labels warped by ``ddf``
    (nearest) and the fixed labels, over the pairs."""
    warped = warp_labels(data["moving_label"], ddf)
    labels = sorted(set(data["fixed_label"].unique().tolist()) - {0})
    return float(torch.nanmean(dice_per_label(warped, data["fixed_label"], labels)))


@torch.no_grad()
def model_dice(model: torch.nn.Module, data: Mapping[str, torch.Tensor]) -> float:
    """:func:`dice` of the model's ``ddf`` on every pair of ``data``."""
    out = model({"moving": data["moving"], "fixed": data["fixed"]})
    return dice(out.ddf, data)
