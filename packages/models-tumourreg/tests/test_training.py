"""What the loss trick buys on pairs with a one-sided lesion, shown by short training runs (slow
tier).

2D 64x64 pairs of core's ``synth-lesion`` data (one image of each pair holds a bright disc with
no counterpart, label 6). Per seed, with the same steps, batch and learning rate: ``tumour-joint``
(its own loss: masked MSE, cross-entropy of the lesion in each image) and VoxelMorph-2 with MSE
(the same similarity, without the mask and the segmentation). Scored on 16 held-out pairs: the
Dice of the anatomy's labels 1-5, the moving labels warped (nearest), over the voxels that are
lesion in neither the fixed map nor the warped moving map; and the folded fraction. Seeds run as
parallel processes.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.labels import warp_labels
from regzoo.metrics.overlap import dice_per_label
from regzoo.models import Optimizers
from regzoo.spatial import jacobian_determinant

pytestmark = pytest.mark.slow

STEPS, BATCH, POOL, LR = 300, 4, 200, 2e-3
DATA = {"name": "synth-lesion", "ndim": 2, "size": 64}
LESION, ANATOMY = 6, [1, 2, 3, 4, 5]
VOXELMORPH = {"similarity": {"name": "mse"}, "reg_weight": 0.01}
KEYS = ("moving", "fixed", "moving_label", "fixed_label")


def _pairs(split: str, n: int) -> dict[str, torch.Tensor]:
    data = regzoo.build("dataset", {**DATA, "split": split, "length": n})
    items = [data[i] for i in range(n)]
    return {k: torch.stack([item[k] for item in items]) for k in KEYS}


def _train(name: str, config: dict[str, Any], train: dict[str, torch.Tensor], seed: int):
    torch.manual_seed(seed)
    model = regzoo.create_model(name, ndim=2, **config).train()
    optim = Optimizers({k: make_optimizer(p, lr=LR) for k, p in model.parameter_groups().items()})
    g = torch.Generator().manual_seed(seed)
    for step in range(STEPS):
        rows = torch.randint(POOL, (BATCH,), generator=g)
        model.training_step({k: v[rows] for k, v in train.items()}, optim, step)
    return model.eval()


def _scores(model: torch.nn.Module, test: dict[str, torch.Tensor]) -> tuple[float, float]:
    with torch.no_grad():
        ddf = model({"moving": test["moving"], "fixed": test["fixed"]}).ddf
    moved = warp_labels(test["moving_label"], ddf)
    outside = (moved != LESION) & (test["fixed_label"] != LESION)
    # voxels under a lesion count as background in both maps: outside its reach
    dice = dice_per_label(moved * outside, test["fixed_label"] * outside, ANATOMY).nanmean()
    folded = (jacobian_determinant(ddf) <= 0).float().mean()
    return float(dice), float(folded)


def _run(seed: int) -> dict[str, tuple[float, float]]:
    torch.set_num_threads(1)
    train, test = _pairs("train", POOL), _pairs("test", 16)
    joint = _train("tumour-joint", {}, train, seed)
    voxelmorph = _train("voxelmorph", VOXELMORPH, train, seed)
    return {"tumour-joint": _scores(joint, test), "voxelmorph": _scores(voxelmorph, test)}


@pytest.fixture(scope="module")
def runs() -> list[dict[str, tuple[float, float]]]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return pool.map(_run, [0, 1])


# Measured (seeds 0, 1; 300 steps): tumour-joint 0.483 / 0.490, the identity's level: its
# integrated-gradient grid has not started to register; VoxelMorph-MSE 0.637 / 0.615. Folded:
# 0.5% / 1.7% (VoxelMorph 3.2% / 3.6%).
NOT_YET = "tumour-joint does not learn to register in 300 steps (Dice 0.48 against 0.62-0.64)"


@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_the_loss_trick_beats_voxelmorph_outside_the_lesion(runs) -> None:
    for seed, scores in enumerate(runs):
        joint, voxelmorph = scores["tumour-joint"][0], scores["voxelmorph"][0]
        assert joint >= voxelmorph + 0.02, (seed, scores)


@pytest.mark.xfail(
    strict=True,
    reason="folded 0.5% / 1.7% after 300 steps (monotone per axis, yet a 2D shear can fold)",
)
def test_the_trained_grid_barely_folds(runs) -> None:
    for seed, scores in enumerate(runs):
        assert scores["tumour-joint"][1] < 1e-3, (seed, scores)


if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        print(pool.map(_run, [0, 1]))
