"""Label overlap per label and its mean: Dice (Learn2Reg's DSC), precision and recall.

The warped moving labels are the prediction, the fixed labels the target: precision is the
fraction of a warped label that lies inside the fixed one, recall the fraction of the fixed label
that the warped one covers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..registry import register_metric
from .base import LEARN2REG_2023, Metric, as_label_map, nanmean_rows

__all__ = [
    "label_ids",
    "overlap_counts",
    "dice_per_label",
    "precision_per_label",
    "recall_per_label",
    "DiceMetric",
    "Precision",
    "Recall",
]


def label_ids(*label_maps: torch.Tensor) -> list[int]:
    """Sorted non-zero labels present in any of the integer label maps (background 0 excluded)."""
    present: set[int] = set()
    for labels in label_maps:
        present.update(int(v) for v in torch.unique(labels).tolist())
    present.discard(0)
    return sorted(present)


def overlap_counts(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel counts ``|P ∩ T|``, ``|P|`` and ``|T|`` of every label, per case: each ``(B, L)``.

    Args:
        pred: integer label map ``(B, 1, *spatial)`` (e.g. the warped moving labels); one-hot or
            probability maps ``(B, K, *spatial)`` are reduced by arg-max.
        target: the same for the fixed labels.
        labels: the labels to count, in this order; by default every non-zero label present in
            either map anywhere in the batch (:func:`label_ids`).

    Returns:
        Three float64 CPU tensors ``(B, L)``.
    """
    pred, target = as_label_map(pred), as_label_map(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    labels = label_ids(pred, target) if labels is None else [int(v) for v in labels]
    p = pred.flatten(1)
    t = target.flatten(1)
    counts = torch.zeros(3, pred.shape[0], len(labels), dtype=torch.float64)
    for j, label in enumerate(labels):
        in_p = p == label
        in_t = t == label
        counts[0, :, j] = (in_p & in_t).sum(1).double().cpu()
        counts[1, :, j] = in_p.sum(1).double().cpu()
        counts[2, :, j] = in_t.sum(1).double().cpu()
    return counts[0], counts[1], counts[2]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.nan)


def dice_per_label(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int] | None = None
) -> torch.Tensor:
    """Dice ``2|P ∩ T| / (|P| + |T|)`` of every label, per case: ``(B, L)`` float64.

    Arguments as :func:`overlap_counts`. NaN where a label is absent from both maps of a case,
    0 where it is in one only.
    """
    inter, in_pred, in_target = overlap_counts(pred, target, labels)
    return _ratio(2.0 * inter, in_pred + in_target)


def precision_per_label(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int] | None = None
) -> torch.Tensor:
    """Precision ``|P ∩ T| / |P|`` of every label, per case: ``(B, L)`` float64.

    Arguments as :func:`overlap_counts`. NaN where the label is absent from ``pred``.
    """
    inter, in_pred, _ = overlap_counts(pred, target, labels)
    return _ratio(inter, in_pred)


def recall_per_label(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int] | None = None
) -> torch.Tensor:
    """Recall (sensitivity) ``|P ∩ T| / |T|`` of every label, per case: ``(B, L)`` float64.

    Arguments as :func:`overlap_counts`. NaN where the label is absent from ``target``.
    """
    inter, _, in_target = overlap_counts(pred, target, labels)
    return _ratio(inter, in_target)


class _OverlapMetric(Metric):
    """Mean over labels of a per-label overlap between warped moving and fixed labels.

    Labels for which a case has nothing to measure (NaN) are left out of its mean.

    Args:
        labels: the labels to score (null: every non-zero label present).
    """

    requires = ("warped_label", "fixed_label")
    higher_is_better = True
    per_label: Callable[..., torch.Tensor]

    def __init__(self, labels: list[int] | None = None) -> None:
        self.labels = labels

    def compute(
        self, *, warped_label: torch.Tensor, fixed_label: torch.Tensor, **_: Any
    ) -> torch.Tensor:
        return nanmean_rows(type(self).per_label(warped_label, fixed_label, self.labels))


@register_metric(
    "dice",
    summary="Mean Dice over the labels present (background excluded), per case.",
    paper=LEARN2REG_2023,
    tags=("2d", "3d", "labels"),
)
class DiceMetric(_OverlapMetric):
    """Mean over labels of :func:`dice_per_label` (labels absent from both maps left out)."""

    per_label = staticmethod(dice_per_label)


@register_metric(
    "precision",
    summary="Mean precision over labels: the fraction of each warped label inside the fixed one.",
    tags=("2d", "3d", "labels"),
)
class Precision(_OverlapMetric):
    """Mean over labels of :func:`precision_per_label` (labels absent from the warped map left out)."""

    per_label = staticmethod(precision_per_label)


@register_metric(
    "recall",
    summary="Mean recall over labels: the fraction of each fixed label the warped one covers.",
    tags=("2d", "3d", "labels"),
)
class Recall(_OverlapMetric):
    """Mean over labels of :func:`recall_per_label` (labels absent from the fixed map left out)."""

    per_label = staticmethod(recall_per_label)
