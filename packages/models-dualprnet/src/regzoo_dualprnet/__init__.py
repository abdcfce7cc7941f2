"""Dual-PRNet for regzoo: dual-stream pyramid registration networks.

Registers two models, each a config dataclass here (the one source of its defaults) and the class
:class:`regzoo_dualprnet.model.DualPRNet`, imported with torch when a model is built, so importing
this module is cheap:

- ``dual-prnet``: the MICCAI 2019 network (Hu, Kang, Huang, Scott, Wiest, Reyes, "Dual-Stream
  Pyramid Registration Network"): a shared residual encoder (channels ``[8, 16, 32, 32]``) run on
  the moving and the fixed image, a feature pyramid refinement of width 32, and one convolution per
  level predicting a residual field, coarse to fine.
- ``dual-prnet-plus``: the Medical Image Analysis 2022 network (Kang, Hu, Huang, Scott, Reyes,
  "Dual-stream pyramid registration network", Dual-PRNet++): a shared encoder-decoder (channels
  ``[8, 16, 16, 32, 32]``) whose five decoder levels feed, per level, a 3D correlation layer, a
  convolution and a residual block before the residual field.

Both follow the authors' code (``kangmiao15/Dual-Stream-PRNet-Plus``); the package README lists
what matches it and what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from regzoo import Paper, register_model

__all__ = ["HU_2019", "KANG_2022", "DualPRNetConfig", "DualPRNetPlusConfig"]

HU_2019 = Paper(
    "Hu, Kang, Huang, Scott, Wiest, Reyes",
    "Dual-Stream Pyramid Registration Network",
    "MICCAI",
    2019,
    "https://arxiv.org/abs/1909.11966",
)
KANG_2022 = Paper(
    "Kang, Hu, Huang, Scott, Reyes",
    "Dual-stream pyramid registration network",
    "Medical Image Analysis 78:102379",
    2022,
    "https://doi.org/10.1016/j.media.2022.102379",
)


@dataclass
class DualPRNetConfig:
    """Keyword arguments of :class:`regzoo_dualprnet.model.DualPRNet`: the MICCAI 2019 network.

    - ``backbone``: ``"resnet"`` (the official ``VoxResNet``: four stride-2 stages, the first
      convolution bias-free, batch-normalised residual blocks; a feature map per stage, 1/2 to 1/16
      of the input) or ``"voxnet"`` (the official ``VoxNet`` encoder-decoder: four stride-2
      convolutions, a decoder of upsampling, concatenation and convolution; five levels, full
      resolution twice, then 1/2 to 1/8). ``channels`` has one width per level (4 or 5).
    - ``fpn_dim`` null: no feature pyramid refinement, the levels are the backbone's features
      (the MedIA network); an int: the width of the refinement (1x1 lateral convolution, the
      upsampled coarser level added, 3x3 smoothing).
    - ``head``: ``"conv"`` (one 3x3 convolution on the two streams' features, MICCAI) or
      ``"correlation"`` (correlation layer, two convolutions, a residual block and the field
      convolution, MedIA).
    - ``pyramid_levels`` null: a field is predicted at every level; k: only at the k finest levels
      (1: the official single-level ``Baseline``).
    - ``similarity`` and ``regularizer``: loss configs; the regulariser applies to every level's
      residual field (in that level's voxels) and the terms are summed, times ``reg_weight``.
    - ``padding``: how features, fields and the image are sampled outside the image
      (``"border"`` as the official code).
    """

    ndim: int = 3
    in_channels: int = 1
    backbone: str = "resnet"
    channels: list[int] = field(default_factory=lambda: [8, 16, 32, 32])
    fpn_dim: Optional[int] = 32
    head: str = "conv"
    pyramid_levels: Optional[int] = None
    similarity: dict[str, Any] = field(default_factory=lambda: {"name": "lncc", "window": 9})
    regularizer: dict[str, Any] = field(default_factory=lambda: {"name": "grad", "penalty": "l2"})
    reg_weight: float = 1.0
    padding: str = "border"


@dataclass
class DualPRNetPlusConfig(DualPRNetConfig):
    """Dual-PRNet++ (MedIA 2022): the ``VoxNet`` encoder-decoder ``[8, 16, 16, 32, 32]`` without
    pyramid refinement (the official network uses the decoder's features directly; the factory's
    FPN widths ``[32, 32, 16, 16, 8]`` reach no layer) and the correlation head at each level."""

    backbone: str = "voxnet"
    channels: list[int] = field(default_factory=lambda: [8, 16, 16, 32, 32])
    fpn_dim: Optional[int] = None
    head: str = "correlation"


# Official training (train_lpba40.py, solver.py): Adam lr 1e-4, weight decay 1e-5, gradient norm
# clipped at 10, batch 1, 200 epochs of the 870 ordered pairs of LPBA40's 30 training subjects,
# the learning rate warmed up linearly over the first 5 epochs.
_PAPER = {
    "train": {
        "steps": 200 * 870,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "grad_clip": 10.0,
        "batch_size": 1,
        "optimizer": "adam",
        "warmup_steps": 5 * 870,
    },
    "data": {"ndim": 3},
    "model": {"ndim": 3},
}


def _quick(steps: int) -> dict[str, Any]:
    """A few CPU minutes on the embedded 2D 64x64 synthetic pairs with large deformations."""
    return {
        "train": {"steps": steps, "lr": 1e-3, "batch_size": 4, "grad_clip": 10.0},
        "data": {"name": "synth-large", "ndim": 2, "size": 64},
        "model": {"ndim": 2},
    }


# The conformance suite's inputs: four stride-2 stages need a multiple of 16 per axis, and the
# Grad term a coarsest level of two voxels per axis (1/16 of the input in the MICCAI network).
_TEST = {"size": {"2d": [32, 32], "3d": [32, 32, 32]}}

register_model(
    "dual-prnet",
    summary="Dual-PRNet: shared-weight pyramid features of both images, residual fields coarse to fine.",
    paper=HU_2019,
    tags=("2d", "3d", "unsupervised", "pyramid"),
    config=DualPRNetConfig,
    target="regzoo_dualprnet.model:DualPRNet",
    presets={"quick": _quick(1500), "paper": _PAPER, "test": _TEST},
)
register_model(
    "dual-prnet-plus",
    summary="Dual-PRNet++: Dual-PRNet with correlation layers and residual blocks at every level.",
    paper=KANG_2022,
    tags=("2d", "3d", "unsupervised", "pyramid"),
    config=DualPRNetPlusConfig,
    target="regzoo_dualprnet.model:DualPRNet",
    presets={"quick": _quick(600), "paper": _PAPER, "test": _TEST},
)
