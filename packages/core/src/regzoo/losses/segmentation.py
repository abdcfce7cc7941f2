"""Label losses: soft ``dice`` and ``ce`` (cross-entropy).

Called as ``loss(pred, target)`` with ``pred`` probabilities ``(B, K, *spatial)`` (e.g. the one-hot
moving labels warped linearly, or a segmentation network's softmax) and ``target`` one-hot or
probabilities of the same shape. Both return a scalar to minimise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import one_hot
from ..registry import register_loss
from .lncc import VOXELMORPH_2019

__all__ = ["Dice", "CrossEntropy"]


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() < 3:
        raise ValueError(f"maps must be (B, K, *spatial), got {tuple(pred.shape)}")


@register_loss(
    "dice",
    summary="Soft Dice, VoxelMorph form: -mean over batch and labels of 2|y.p| / max(|y|+|p|, eps).",
    paper=VOXELMORPH_2019,
    tags=("2d", "3d", "segmentation"),
)
class Dice(nn.Module):
    """Soft Dice loss on one-hot or probability maps (VoxelMorph's ``Dice``).

    ``dice[b, k] = 2 sum(y p) / max(sum(y + p), eps)`` over the voxels of sample b and channel k;
    the loss is ``-mean(dice)`` over batch and channels, as VoxelMorph writes it (in [-1, 0]).
    ``complement=True`` returns ``1 - mean(dice)`` instead (SynthMorph, DDIR): the same gradient,
    a value in [0, 1]. ``squared=True`` takes the denominator ``sum(y^2) + sum(p^2)`` (the V-Net
    form; TransMorph's OASIS training uses it); for one-hot maps both forms are equal.

    Args:
        include_background: keep channel 0 in the mean (VoxelMorph averages every channel given).
        complement: report ``1 - dice`` rather than ``-dice``.
        squared: square the maps in the denominator.
        eps: lower bound of the denominator (VoxelMorph: 1e-5); a channel empty in both maps
            counts as Dice 0.
    """

    def __init__(
        self,
        include_background: bool = True,
        complement: bool = False,
        squared: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.complement = complement
        self.squared = squared
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``pred``, ``target``: ``(B, K, *spatial)`` in [0, 1]. Returns a scalar."""
        _check(pred, target)
        if not self.include_background:
            pred, target = pred[:, 1:], target[:, 1:]
        dims = tuple(range(2, pred.dim()))
        top = 2.0 * (pred * target).sum(dims)
        bottom = (pred.square() + target.square()) if self.squared else (pred + target)
        bottom = bottom.sum(dims).clamp(min=self.eps)
        dice = (top / bottom).mean()
        return 1.0 - dice if self.complement else -dice


@register_loss(
    "ce",
    summary="Cross-entropy -mean(sum_k y_k log p_k) on probabilities (or logits with logits=true).",
    tags=("2d", "3d", "segmentation"),
)
class CrossEntropy(nn.Module):
    """Voxel-wise cross-entropy ``-sum_k y_k log p_k``, averaged over batch and voxels.

    By default ``pred`` holds probabilities (the segmentation-loss convention of
    :class:`~regzoo.models.RegistrationLoss`), clamped below by ``eps`` before the logarithm.
    With ``logits=True`` it holds unnormalised scores and a log-softmax over channels is applied
    (numerically safer: use it for segmentation heads that output logits).
    ``target`` is one-hot or probabilities ``(B, K, *spatial)``, or an integer map ``(B, 1, *spatial)``.

    Args:
        logits: interpret ``pred`` as logits.
        eps: lower clamp of probabilities.
    """

    def __init__(self, logits: bool = False, eps: float = 1e-7) -> None:
        super().__init__()
        self.logits = logits
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``pred``: ``(B, K, *spatial)``; ``target``: same shape, or labels ``(B, 1, *spatial)``."""
        if not target.is_floating_point():
            target = one_hot(target, pred.shape[1], pred.dtype)
        _check(pred, target)
        log_p = F.log_softmax(pred, dim=1) if self.logits else pred.clamp(min=self.eps).log()
        return -(target * log_p).sum(1).mean()
