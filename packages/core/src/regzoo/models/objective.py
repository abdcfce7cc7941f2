"""The usual registration objective, assembled from registered losses.

``similarity(warped, fixed) + reg_weight * regularizer(field)
+ seg_weight * segmentation(warped_label, one_hot(fixed_label))``; bidirectional, the image term
is ``0.5 * similarity(warped, fixed) + 0.5 * similarity(fixed warped by inverse_ddf, moving)``
(VoxelMorph's ``bidir``), and the label term may be taken at a coarser resolution
(``seg_resolution``, VoxelMorph's semi-supervised default 2).

Each part is a registry config (``{"name": "lncc", "window": 9}``), so a model's loss is swapped
from the command line (``model.loss.similarity.name=ncc``). The segmentation term is skipped when
the batch has no labels, which makes the same object the label-free objective of instance
optimisation; with partially labelled data it is taken over the pairs whose two label maps are
real (:func:`regzoo.labels.labelled_pairs`), and skipped when there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..labels import labelled_pairs, one_hot, warp_label_probabilities
from ..registry import build
from ..spatial import resize_field, warp
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
        bidirectional: weigh the image term 0.5 and add ``similarity_inverse``, 0.5 x
            ``similarity(fixed warped by inverse_ddf, moving)``; the warped fixed image is the
            output's ``extras["fixed_warped"]`` when the model gives it.
        seg_resolution: the label term's voxel size in image voxels: the label maps are taken
            every ``seg_resolution`` voxels (``[::r]``) and the moving one is warped by ``ddf``
            resized to that grid with its values times exactly ``1 / r``; 1 uses ``warped_label``.
    """

    def __init__(
        self,
        similarity: Mapping[str, Any] | None = None,
        regularizer: Mapping[str, Any] | None = None,
        reg_weight: float = 1.0,
        segmentation: Mapping[str, Any] | None = None,
        seg_weight: float = 0.0,
        field: str = "ddf",
        bidirectional: bool = False,
        seg_resolution: int = 1,
    ) -> None:
        super().__init__()
        self.similarity = build("loss", similarity) if similarity else None
        self.regularizer = build("loss", regularizer) if regularizer else None
        self.segmentation = build("loss", segmentation) if segmentation and seg_weight else None
        self.reg_weight = reg_weight
        self.seg_weight = seg_weight
        self.field = field
        self.bidirectional = bidirectional
        self.seg_resolution = int(seg_resolution)

    def forward(self, batch: Mapping[str, Any], out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """Terms by name, with ``"loss"`` the weighted total."""
        terms: dict[str, torch.Tensor] = {}
        total = out.warped.new_zeros(())
        if self.similarity is not None:
            terms["similarity"] = self.similarity(out.warped, batch["fixed"])
            if self.bidirectional:
                fixed_warped = out.extras.get("fixed_warped")
                if fixed_warped is None:
                    fixed_warped = warp(batch["fixed"], out.inverse_ddf)
                terms["similarity_inverse"] = self.similarity(fixed_warped, batch["moving"])
                total = total + 0.5 * terms["similarity"] + 0.5 * terms["similarity_inverse"]
            else:
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
            rows = labelled_pairs(batch)
            if rows is None or bool(rows.any()):
                warped, fixed = self._label_maps(batch, out)
                if rows is not None:  # only the pairs whose two label maps are real
                    warped, fixed = warped[rows], fixed[rows]
                terms["segmentation"] = self.segmentation(warped, fixed)
                total = total + self.seg_weight * terms["segmentation"]
        terms["loss"] = total
        return terms

    def _label_maps(
        self, batch: Mapping[str, Any], out: RegistrationOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warped moving and fixed one-hot label maps ``(B, K, *S')`` at :attr:`seg_resolution`
        (``ceil(n / r)`` voxels per axis)."""
        classes, r = out.warped_label.shape[1], self.seg_resolution
        warped, fixed = out.warped_label, batch["fixed_label"]
        if r > 1:
            every = (slice(None), slice(None), *[slice(None, None, r)] * (fixed.dim() - 2))
            moving, fixed = batch["moving_label"][every], fixed[every]
            flow = resize_field(out.ddf, moving.shape[2:], factor=1 / r)
            warped = warp_label_probabilities(moving, flow, classes)
        return warped, one_hot(fixed, classes, warped.dtype)
