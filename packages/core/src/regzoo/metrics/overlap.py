"""Label overlap: Dice per label and its mean (Learn2Reg's DSC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..registry import register_metric
from .base import LEARN2REG_2023, Metric, as_label_map, nanmean_rows

__all__ = ["label_ids", "dice_per_label", "DiceMetric"]


def label_ids(*label_maps: torch.Tensor) -> list[int]:
    """Sorted non-zero labels present in any of the integer label maps (background 0 excluded)."""
    present: set[int] = set()
    for labels in label_maps:
        present.update(int(v) for v in torch.unique(labels).tolist())
    present.discard(0)
    return sorted(present)


def dice_per_label(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int] | None = None
) -> torch.Tensor:
    """Dice ``2|P ∩ T| / (|P| + |T|)`` of every label, per case: ``(B, L)`` float64.

    Args:
        pred: integer label map ``(B, 1, *spatial)`` (e.g. the warped moving labels); one-hot or
            probability maps ``(B, K, *spatial)`` are reduced by arg-max.
        target: the same for the fixed labels.
        labels: the labels to score, in this order; by default every non-zero label present in
            either map anywhere in the batch (:func:`label_ids`).

    Returns:
        ``(B, L)``; NaN where a label is absent from both maps of a case, 0 where it is in one only.
    """
    pred, target = as_label_map(pred), as_label_map(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    labels = label_ids(pred, target) if labels is None else [int(v) for v in labels]
    p = pred.flatten(1)
    t = target.flatten(1)
    out = torch.empty(pred.shape[0], len(labels), dtype=torch.float64)
    for j, label in enumerate(labels):
        in_p = p == label
        in_t = t == label
        inter = (in_p & in_t).sum(1).double()
        total = (in_p.sum(1) + in_t.sum(1)).double()
        out[:, j] = torch.where(total > 0, 2.0 * inter / total.clamp(min=1), torch.nan).cpu()
    return out


@register_metric(
    "dice",
    summary="Mean Dice over the labels present (background excluded), per case.",
    paper=LEARN2REG_2023,
    tags=("2d", "3d", "labels"),
)
class DiceMetric(Metric):
    """Mean over labels of :func:`dice_per_label` between warped moving and fixed labels.

    Labels absent from both maps of a case are left out of its mean (NaN if none is present).

    Args:
        labels: the labels to score (default: every non-zero label present).
    """

    requires = ("warped_label", "fixed_label")
    higher_is_better = True

    def __init__(self, labels: list[int] | None = None) -> None:
        self.labels = labels

    def compute(
        self, *, warped_label: torch.Tensor, fixed_label: torch.Tensor, **_: Any
    ) -> torch.Tensor:
        return nanmean_rows(dice_per_label(warped_label, fixed_label, self.labels))
