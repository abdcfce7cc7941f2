"""What JSSR is judged by besides registration Dice: its segmentations and its synthesis.

- :func:`~regzoo.metrics.segmentation_dice` (core): Dice of S's arg-max against a label map.
- :func:`chance_dice`: the Dice a segmentation with the same label frequencies, placed
  independently of the truth, has in expectation: ``2 p_k q_k / (p_k + q_k)`` per label, for
  predicted and true label fractions ``p_k`` and ``q_k``. "Above chance" is above this.
- :func:`correlation_ratio`: eta^2 of an image given a label map, the fraction of the image's
  variance the labels explain. Computed on the voxels where the moving and fixed label maps
  disagree, it says whose geometry a synthesised image has: G(x, y) that keeps x's structures
  is explained by the moving labels there, one that copies y by the fixed labels.
- :func:`label_agreement`: the fraction of voxels (of a mask) where two label maps agree; on the
  voxels where the moving and fixed labels disagree, S(G(x, y)) agreeing with the moving labels
  rather than the fixed ones says the same through the segmentor.
- :func:`evaluate_jssr`: all of these, and registration Dice, over the pairs of a dataset.

For ``eval.metrics`` the segmentations are scored by core's ``seg-dice-moving`` /
``seg-dice-fixed`` (:class:`regzoo.metrics.SegmentationDice`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from regzoo.labels import warp_labels
from regzoo.metrics import dice_per_label, folding, label_ids, segmentation_dice

__all__ = [
    "chance_dice",
    "correlation_ratio",
    "label_agreement",
    "evaluate_jssr",
]


def chance_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Expected Dice of a segmentation with ``logits``' label fractions placed at random.

    Per non-zero label k in either map: ``2 p_k q_k / (p_k + q_k)`` with ``p_k`` the fraction of
    voxels predicted k and ``q_k`` the true fraction; mean over labels, ``(B,)`` float64.
    """
    pred = logits.argmax(1).flatten(1)
    true = labels[:, 0].flatten(1)
    ids = label_ids(pred, true)
    p = torch.stack([(pred == k).double().mean(1) for k in ids], 1)
    q = torch.stack([(true == k).double().mean(1) for k in ids], 1)
    return (2 * p * q / (p + q).clamp(min=1e-12)).mean(1)


def correlation_ratio(
    image: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """eta^2 = 1 - (within-label variance) / (total variance) of ``image`` given ``labels``.

    Args:
        image: ``(B, 1, *S)`` intensities.
        labels: ``(B, 1, *S)`` integer map.
        mask: ``(B, 1, *S)`` bool, the voxels to use (all by default).
    Returns:
        ``(B,)`` in [0, 1]: 1 when the labels fix the intensity, 0 when they say nothing of it.
    """
    out = []
    for b in range(image.shape[0]):
        keep = torch.ones_like(labels[b], dtype=torch.bool) if mask is None else mask[b]
        v = image[b][keep].double()
        lab = labels[b][keep]
        total = (v - v.mean()).square().sum()
        within = sum((v[lab == k] - v[lab == k].mean()).square().sum() for k in lab.unique())
        out.append(1.0 - within / total.clamp(min=1e-12))
    return torch.stack(out)


def label_agreement(
    pred: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of the voxels of ``mask`` (all by default) where ``pred`` equals ``labels``.

    Args:
        pred, labels: ``(B, 1, *S)`` integer maps.
        mask: ``(B, 1, *S)`` bool.
    Returns:
        ``(B,)`` float64 in [0, 1] (NaN where the mask is empty).
    """
    same = (pred == labels).flatten(1).double()
    keep = torch.ones_like(same) if mask is None else mask.flatten(1).double()
    return (same * keep).sum(1) / keep.sum(1)


@torch.no_grad()
def evaluate_jssr(
    model: torch.nn.Module, dataset: Dataset, max_pairs: int | None = None
) -> dict[str, float]:
    """Means over the pairs of ``dataset`` (one at a time, ``model`` in eval mode).

    Returns:
        ``dice`` (registration: moving labels warped nearest-neighbour vs fixed labels),
        ``dice_identity`` (the same without registration), ``folding`` (fraction of interior
        voxels where tau folds, core's :func:`~regzoo.metrics.folding`), ``seg_dice_moving``
        (S(G(x, y)) vs the moving labels: S never saw a moving-contrast label),
        ``seg_chance_moving`` (its :func:`chance_dice`), ``seg_dice_fixed`` (S(y) vs the fixed
        labels); on the voxels where the moving and fixed labels disagree, ``geometry_moving``
        / ``geometry_fixed`` (:func:`correlation_ratio` of G(x, y) given the moving / fixed
        labels) and ``synth_agrees_moving`` / ``synth_agrees_fixed`` (:func:`label_agreement`
        of S(G(x, y)) with the moving / fixed labels). Models without segmentations or synthesis
        (the MI baseline) give the registration measures only.
    """
    if max_pairs is not None and len(dataset) > max_pairs:
        dataset = Subset(dataset, range(max_pairs))
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    try:
        for batch in DataLoader(dataset, batch_size=1):
            for key, value in _case(model, batch).items():
                sums[key] = sums.get(key, 0.0) + float(value.sum())
            n += 1
    finally:
        model.train(was_training)
    return {key: total / max(n, 1) for key, total in sums.items()}


def _case(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out = model(batch)
    moving, fixed = batch["moving_label"], batch["fixed_label"]
    values = {
        "dice": dice_per_label(warp_labels(moving, out.ddf), fixed).nanmean(1),
        "dice_identity": dice_per_label(moving, fixed).nanmean(1),
        "folding": folding(out.ddf),
    }
    differ = moving != fixed
    if out.moving_seg is not None and out.fixed_seg is not None:
        values["seg_dice_moving"] = segmentation_dice(out.moving_seg, moving)
        values["seg_chance_moving"] = chance_dice(out.moving_seg, moving)
        values["seg_dice_fixed"] = segmentation_dice(out.fixed_seg, fixed)
        synth_labels = out.moving_seg.argmax(1, keepdim=True)
        values["synth_agrees_moving"] = label_agreement(synth_labels, moving, differ)
        values["synth_agrees_fixed"] = label_agreement(synth_labels, fixed, differ)
    if out.synthesized is not None:
        values["geometry_moving"] = correlation_ratio(out.synthesized, moving, differ)
        values["geometry_fixed"] = correlation_ratio(out.synthesized, fixed, differ)
    return values
