"""How well a model that also segments segments: ``seg-dice``, the Dice of its own segmentation
of one image (``moving_seg`` or ``fixed_seg``, the model's logits) against that image's labels.

Joint registration-and-segmentation methods (JSSR, DDIR's SDDIR, DeepAtlas, ...) output a
segmentation of one or both images; ``seg-dice`` with ``image: moving`` or ``image: fixed``
(aliases ``seg-dice-moving``, ``seg-dice-fixed``) scores it on the evaluation pairs, beside the
registration's warped-label ``dice``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import get_registry, register_metric
from .base import Metric
from .overlap import dice_per_label

__all__ = ["segmentation_dice", "SegmentationDice"]


def segmentation_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean Dice of ``logits.argmax(1)`` against ``labels`` over the non-zero labels in either.

    Args:
        logits: ``(B, K, *S)`` segmentation scores.
        labels: ``(B, 1, *S)`` integer map.
    Returns:
        ``(B,)`` float64.
    """
    return dice_per_label(logits.argmax(1, keepdim=True), labels).nanmean(1)


@register_metric(
    "seg-dice",
    summary="Dice of the model's own segmentation of one image (image: moving | fixed) vs its "
    "labels.",
    tags=("2d", "3d", "labels", "joint-seg"),
)
class SegmentationDice(Metric):
    """:func:`segmentation_dice` of the model's segmentation of one image against its labels.

    Needs ``<image>_seg`` (the model's logits, ``(B, K, *S)``) and ``<image>_label``
    (``(B, 1, *S)``); a model that does not segment that image has no such output, and the
    evaluation reports the metric as missing.

    Args:
        image: ``"moving"`` or ``"fixed"``.
    """

    higher_is_better = True

    def __init__(self, image: str = "fixed") -> None:
        if image not in ("moving", "fixed"):
            raise ValueError(f"image must be 'moving' or 'fixed', got {image!r}")
        self.image = image
        self.requires = (f"{image}_seg", f"{image}_label")

    def compute(self, **inputs: Any) -> torch.Tensor:
        seg, labels = (inputs[key] for key in self.requires)
        return segmentation_dice(seg.detach(), labels).cpu()


for _image in ("moving", "fixed"):
    get_registry("metric").variant(
        f"seg-dice-{_image}",
        "seg-dice",
        summary=f"seg-dice of the {_image} image: the model's {_image}_seg vs {_image}_label.",
        image=_image,
    )
