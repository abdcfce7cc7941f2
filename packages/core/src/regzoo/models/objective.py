"""The usual registration objective, assembled from registered losses.

``similarity(warped, fixed) + reg_weight * regularizer(field)
+ seg_weight * segmentation(warped_label, one_hot(fixed_label))``

Each part is a registry config (``{"name": "lncc", "window": 9}``), so a model's loss is swapped
from the command line (``model.loss.similarity.name=ncc``). The segmentation term is skipped when
the batch has no labels, which makes the same object the label-free objective of instance
optimisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..labels import one_hot
from ..registry import build
from .output import RegistrationOutput

__all__ = ["RegistrationLoss"]


class RegistrationLoss(nn.Module):
    """Image similarity + weighted regulariser (+ weighted label loss when labels are present).

    Args:
        similarity: loss config for ``(warped, fixed)``; ``None`` drops the term.
        regularizer: loss config applied to the field named by ``field``; ``None`` drops it.
        reg_weight: weight of the regulariser.
        segmentation: loss config for ``(warped one-hot moving labels, one-hot fixed labels)``.
        seg_weight: weight of the label term (0 disables it; VoxelMorph's semi-supervised uses 0.01).
        field: ``"ddf"`` or ``"velocity"``, the output the regulariser sees.
    """

    def __init__(
        self,
        similarity: Mapping[str, Any] | None = None,
        regularizer: Mapping[str, Any] | None = None,
        reg_weight: float = 1.0,
        segmentation: Mapping[str, Any] | None = None,
        seg_weight: float = 0.0,
        field: str = "ddf",
    ) -> None:
        super().__init__()
        self.similarity = build("loss", similarity) if similarity else None
        self.regularizer = build("loss", regularizer) if regularizer else None
        self.segmentation = build("loss", segmentation) if segmentation and seg_weight else None
        self.reg_weight = reg_weight
        self.seg_weight = seg_weight
        self.field = field

    def forward(self, batch: Mapping[str, Any], out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """Terms by name, with ``"loss"`` the weighted total."""
        terms: dict[str, torch.Tensor] = {}
        total = out.warped.new_zeros(())
        if self.similarity is not None:
            terms["similarity"] = self.similarity(out.warped, batch["fixed"])
            total = total + terms["similarity"]
        if self.regularizer is not None:
            field = getattr(out, self.field)
            terms["regularizer"] = self.regularizer(field if field is not None else out.ddf)
            total = total + self.reg_weight * terms["regularizer"]
        if (
            self.segmentation is not None
            and out.warped_label is not None
            and "fixed_label" in batch
        ):
            target = one_hot(
                batch["fixed_label"], out.warped_label.shape[1], out.warped_label.dtype
            )
            terms["segmentation"] = self.segmentation(out.warped_label, target)
            total = total + self.seg_weight * terms["segmentation"]
        terms["loss"] = total
        return terms
