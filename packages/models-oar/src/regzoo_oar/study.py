"""The training study behind the README's figures and the slow tests of ``oar-joint``.

``python -m regzoo_oar.study --seed S`` trains ``oar-joint`` with its quick preset's model
config on fixed 2D 64x64 ``synth-organs`` pairs (200 training subjects; Adam, batch 4; one
thread) and prints one JSON line: per pass, the Dice per label of the segmentation
(``fixed_seg`` of that pass, arg-max) and of the registration (the template's labels warped by
that pass's field, arg-max of the linear warp) and the fraction of voxels where that field
folds (Jacobian determinant <= 0), the shape-corrected final segmentation, and the last pass
without feedback (``no_feedback``: the predicted masks replaced by zeros, an ablation of the
trained model), on 32 held-out subjects; ``small`` is the mean over the two smallest organs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.metrics.overlap import dice_per_label
from regzoo.models import Optimizers
from regzoo.registry import get_entry
from regzoo.spatial import jacobian_determinant

from . import SYNTH_ORGANS

__all__ = ["STEPS", "SMALLEST", "pairs", "run"]

STEPS = 600
TRAIN_SUBJECTS, TEST_SUBJECTS = 200, 32
#: The two smallest organs of ``synth-organs`` (template volumes 16 and 12 voxels at 64x64).
SMALLEST = (6, 7)
_KEYS = ("moving", "fixed", "moving_label", "fixed_label")


def pairs(split: str, n: int) -> dict[str, torch.Tensor]:
    """``n`` fixed template-to-subject pairs of ``split``, stacked into one batch."""
    ds = regzoo.build(
        "dataset", {**SYNTH_ORGANS, "split": split, "fresh": False, "num_subjects": n}
    )
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([item[k] for item in items]) for k in _KEYS}


def _dice(labels: torch.Tensor, data: Mapping[str, torch.Tensor], num_labels: int) -> list[float]:
    """Mean Dice over the pairs per label ``1 .. num_labels - 1`` of ``labels`` ``(B, 1, *S)``."""
    scores = dice_per_label(labels, data["fixed_label"], list(range(1, num_labels)))
    return [round(float(v), 4) for v in torch.nanmean(scores, dim=0)]


def _small(dice: list[float]) -> float:
    return round(sum(dice[k - 1] for k in SMALLEST) / len(SMALLEST), 4)


def run(
    seed: int,
    steps: int = STEPS,
    batch_size: int = 4,
    lr: float = 1e-3,
    model: Mapping[str, Any] | None = None,
) -> dict:
    """Train and measure (module docstring; ``model``: overrides of the preset's model config);
    returns the figures by name."""
    torch.set_num_threads(1)
    train, test = pairs("train", TRAIN_SUBJECTS), pairs("test", TEST_SUBJECTS)
    config = {**get_entry("model", "oar-joint").presets["quick"]["model"], **(model or {})}
    torch.manual_seed(seed)
    model = regzoo.create_model("oar-joint", **config)
    optim = Optimizers({k: make_optimizer(p, lr=lr) for k, p in model.parameter_groups().items()})
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(train["moving"]), (batch_size,), generator=g)
        model.training_step({k: train[k][idx] for k in _KEYS}, optim, step)
    model.eval()
    batch = {k: test[k] for k in ("moving", "fixed", "moving_label")}
    with torch.no_grad():
        passes = model.iterate(batch)
        corrected = model.correct(passes[-1].seg)
        ablation = model.iterate(batch, feedback=False)[-1]
    k = model.num_labels
    result: dict = {"seed": seed, "steps": steps}
    for i, it in enumerate(passes):
        seg = _dice(it.seg.argmax(1, keepdim=True), test, k)
        reg = _dice(it.warped_template.argmax(1, keepdim=True), test, k)
        folding = float((jacobian_determinant(it.ddf) <= 0).float().mean())
        result[f"pass_{i + 1}"] = {"seg": seg, "reg": reg, "seg_small": _small(seg),
                                   "reg_small": _small(reg), "folding": round(folding, 5)}  # fmt: skip
    seg = _dice(ablation.seg.argmax(1, keepdim=True), test, k)
    reg = _dice(ablation.warped_template.argmax(1, keepdim=True), test, k)
    result["no_feedback"] = {"seg_small": _small(seg), "reg_small": _small(reg)}
    final = _dice(corrected.argmax(1, keepdim=True), test, k)
    result["corrected"] = {"seg": final, "seg_small": _small(final)}
    result["identity"] = {"reg": _dice(test["moving_label"], test, k)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--model", type=json.loads, default={}, help="JSON model overrides")
    args = parser.parse_args()
    print(json.dumps(run(args.seed, args.steps, model=args.model)))


if __name__ == "__main__":
    main()
