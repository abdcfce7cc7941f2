"""regzoo plugin: JSSR, joint synthesis, segmentation and registration.

Fengze Liu et al., ECCV 2020 (arXiv 2005.12209). Registers the models ``jssr`` and
``jssr-mi-baseline`` (its register alone, trained with mutual information), the datasets
``synth-two-contrast`` (synthetic pairs with one contrast per modality, JSSR's set-up) and
``folder-multimodal`` (NIfTI files with a modality per file); its segmentations are scored by
core's ``seg-dice-moving`` / ``seg-dice-fixed``. The models' configs
(:class:`JSSRConfig`, :class:`MIBaselineConfig`) are the one source of their defaults; the
networks are imported when a model is built (the datasets, subclasses of core's, import torch
with the package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regzoo import Paper, register_model

from . import data
from .data import ModalityFolderDataset, TwoContrastSynth

__all__ = [
    "JSSR_2020",
    "PRESETS",
    "JSSRConfig",
    "MIBaselineConfig",
    "seg_dice_moving",
    "seg_dice_fixed",
    "TwoContrastSynth",
    "ModalityFolderDataset",
    "data",
]

JSSR_2020 = Paper(
    "Fengze Liu et al",
    "JSSR: A Joint Synthesis, Segmentation, and Registration System for 3D Multi-Modal Image "
    "Alignment of Large-scale Pathological CT Scans",
    "ECCV",
    2020,
    "https://arxiv.org/abs/2005.12209",
)

# quick: 2D two-contrast synthetic pairs, networks narrowed for a CPU, a few minutes on 2 cores.
# Measured choices (README, "Why the quick preset is what it is"): SynthMorph's bias field (std
# 0.3), so the two modalities differ by a spatially varying intensity relation as well as by
# contrast, the case JSSR's synthesis and segmentation address (with 0.1 the relation is one
# global mapping, which MI models exactly); S supervised by Dice plus cross-entropy (Dice alone
# lost a label for good in one seed of two); lambda_seg 2; the longest joint stage; polynomial
# decay. The smoothness weight is the paper's 1, as the MI baseline's: both fold < 0.3%.
_QUICK_STAGES = (500, 300, 1700)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "data": {
            "name": "synth-two-contrast",
            "ndim": 2,
            "size": 64,
            "num_labels": 8,
            "label_scales": [16, 32],
            "bias_std": 0.3,
            "multimodal": True,
            "pairing": "random",
        },
        "model": {
            "num_classes": 8,
            "generator": {"features": [16, 32, 32, 32]},
            "discriminator": {"features": 16, "layers": 2},
            "seg_weight": 2.0,
            "seg_ce_weight": 1.0,
            "stage_steps": list(_QUICK_STAGES),
        },
        "train": {
            "steps": sum(_QUICK_STAGES),
            "lr": 1e-3,
            "scheduler": "poly",
            "log_every": 50,
            "ckpt_every": 500,
        },
        "eval": {
            "max_pairs": 16,
            "metrics": ["dice", "hd95", "sdlogj", "folding", "seg-dice-moving", "seg-dice-fixed"],
        },
    },
    # The paper's set-up in 3D on the synthetic data: default (wider) networks, Adam 1e-4. The
    # stage lengths are ours; the public paper does not give them.
    "paper": {
        "data": {
            "name": "synth-two-contrast",
            "ndim": 3,
            "size": 96,
            "label_scales": [24, 48],
            "bias_std": 0.3,
            "multimodal": True,
            "pairing": "random",
        },
        "model": {"stage_steps": [10000, 20000, 20000]},
        "train": {"steps": 50000, "lr": 1e-4, "scheduler": "poly"},
    },
    # Tiny networks for the conformance suite (regzoo.testing) and the unit tests.
    "test": {
        "model": {
            "num_classes": 4,
            "generator": {"features": [4, 8]},
            "discriminator": {"features": 4, "layers": 2},
            "backbone": {"name": "vxm-unet", "enc_features": [4, 8], "dec_features": [8, 8, 4]},
            "segmentor": {"name": "vxm-unet", "enc_features": [4, 8], "dec_features": [8, 8, 4]},
            "stage_steps": [1, 1, 1],
        },
    },
}


def _part(**config: Any) -> Any:
    return field(default_factory=lambda: dict(config))


@dataclass
class JSSRConfig:
    """JSSR (:class:`regzoo_jssr.model.JSSR`): G, D, Phi (VoxelMorph U-Net + ``dense``), S.

    ``generator`` and ``discriminator`` are keyword arguments of the networks, ``backbone``,
    ``transformer`` and ``segmentor`` registry configs. ``num_classes`` must match the labels of
    the data (``data.num_labels`` for ``synth``).
    """

    ndim: int = 3
    in_channels: int = 1
    num_classes: int = 16
    generator: dict[str, Any] = _part(
        features=[32, 64, 128, 256], norm="instance", output="sigmoid"
    )
    discriminator: dict[str, Any] = _part(features=64, layers=3, norm="instance")
    backbone: dict[str, Any] = _part(name="vxm-unet")
    transformer: dict[str, Any] = _part(name="dense")
    segmentor: dict[str, Any] = _part(name="vxm-unet")
    gan_loss: str = "bce"
    gan_weight: float = 1.0
    smooth_weight: float = 1.0
    seg_weight: float = 1.0
    seg_ce_weight: float = 0.0
    stage_steps: list[int] = field(default_factory=lambda: [1000, 1000, 2000])


@dataclass
class MIBaselineConfig:
    """Phi of JSSR (same backbone and transformer) on the raw pair, ``-MI + w ||grad tau||^2``
    (:class:`regzoo_jssr.baseline.MIRegistration`)."""

    ndim: int = 3
    in_channels: int = 1
    backbone: dict[str, Any] = _part(name="vxm-unet")
    transformer: dict[str, Any] = _part(name="dense")
    similarity: dict[str, Any] = _part(name="mi")
    smooth_weight: float = 1.0


register_model(
    "jssr",
    summary="Joint synthesis (GAN), segmentation and registration for multimodal pairs, 3 stages.",
    paper=JSSR_2020,
    tags=("2d", "3d", "multimodal", "joint-seg", "synthesis", "gan"),
    config=JSSRConfig,
    target="regzoo_jssr.model:JSSR",
    presets=PRESETS,
)
# Its quick preset is JSSR's (same data, steps, learning-rate schedule and smoothness weight), so
# `regzoo train jssr` and `regzoo train jssr-mi-baseline` compare the two.
register_model(
    "jssr-mi-baseline",
    summary="Registration-only baseline for JSSR: its register Phi trained with mutual information.",
    tags=("2d", "3d", "multimodal", "baseline"),
    config=MIBaselineConfig,
    target="regzoo_jssr.baseline:MIRegistration",
    presets={
        "quick": {
            "data": PRESETS["quick"]["data"],
            "train": PRESETS["quick"]["train"],
            "eval": PRESETS["quick"]["eval"],
        },
        "test": {"model": {"backbone": PRESETS["test"]["model"]["backbone"]}},
    },
)
