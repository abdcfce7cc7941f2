"""Registered losses, each an ``nn.Module`` returning a scalar to minimise.

- Similarity ``loss(pred, target)`` on images ``(B, C, *spatial)``: ``lncc`` (VoxelMorph's local
  squared NCC), ``ncc`` (global, 1 - Pearson r), ``mse``, ``mi`` (Parzen mutual information).
- Segmentation ``loss(pred, target)`` on probabilities/one-hot ``(B, K, *spatial)``: ``dice``
  (VoxelMorph's soft Dice, ``-dice``), ``ce``.
- Regularisers ``loss(field)`` on ``(B, ndim, *spatial)``: ``grad`` (l2/l1), ``bending``; and
  ``kl-prior`` called as ``loss(mean, log_sigma)`` (VoxelMorph-diff).

Build one from a config: ``regzoo.build("loss", {"name": "grad", "penalty": "l2"})``. The
functional LNCC is ``regzoo.losses.lncc.lncc`` (the submodule keeps its name).
"""

from . import lncc
from .lncc import LNCC, box_sum, local_cc
from .regularizers import BendingEnergy, Grad, KLPrior, degree_map
from .segmentation import CrossEntropy, Dice
from .similarity import MSE, NCC, MutualInformation

__all__ = [
    "lncc",
    "LNCC",
    "box_sum",
    "local_cc",
    "NCC",
    "MSE",
    "MutualInformation",
    "Dice",
    "CrossEntropy",
    "Grad",
    "BendingEnergy",
    "KLPrior",
    "degree_map",
]
