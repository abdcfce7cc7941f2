"""regzoo plugin: JSSR, joint synthesis, segmentation and registration.

Fengze Liu et al., ECCV 2020 (arXiv 2005.12209). Registers the models ``jssr`` and
``jssr-mi-baseline`` (its register alone, trained with mutual information), the datasets
``synth-two-contrast`` (synthetic pairs with one contrast per modality, JSSR's set-up) and
``folder-multimodal`` (NIfTI files with a modality per file), and the metrics
``seg-dice-moving`` / ``seg-dice-fixed`` (Dice of a model's segmentations). The networks are
imported when a model is built (the datasets, subclasses of core's, import torch with the package).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from regzoo import Paper, register_metric, register_model

from . import data
from .data import ModalityFolderDataset, TwoContrastSynth

__all__ = [
    "JSSR_2020",
    "PRESETS",
    "jssr",
    "jssr_mi_baseline",
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


@register_model(
    "jssr",
    summary="Joint synthesis (GAN), segmentation and registration for multimodal pairs, 3 stages.",
    paper=JSSR_2020,
    tags=("2d", "3d", "multimodal", "joint-seg", "synthesis", "gan"),
    presets=PRESETS,
)
def jssr(
    ndim: int = 3,
    in_channels: int = 1,
    num_classes: int = 16,
    generator: Mapping[str, Any] = {
        "features": [32, 64, 128, 256],
        "norm": "instance",
        "output": "sigmoid",
    },  # noqa: B006
    discriminator: Mapping[str, Any] = {"features": 64, "layers": 3, "norm": "instance"},  # noqa: B006
    backbone: Mapping[str, Any] = {"name": "vxm-unet"},  # noqa: B006
    transformer: Mapping[str, Any] = {"name": "dense"},  # noqa: B006
    segmentor: Mapping[str, Any] = {"name": "vxm-unet"},  # noqa: B006
    gan_loss: str = "bce",
    gan_weight: float = 1.0,
    smooth_weight: float = 1.0,
    seg_weight: float = 1.0,
    seg_ce_weight: float = 0.0,
    stage_steps: Sequence[int] = (1000, 1000, 2000),
) -> Any:
    """JSSR (see :class:`regzoo_jssr.model.JSSR`): G, D, Phi (VoxelMorph U-Net + ``dense``), S.

    ``num_classes`` must match the labels of the data (``data.num_labels`` for ``synth``).
    """
    from .model import JSSR

    return JSSR(
        ndim=ndim,
        in_channels=in_channels,
        num_classes=num_classes,
        generator=generator,
        discriminator=discriminator,
        backbone=backbone,
        transformer=transformer,
        segmentor=segmentor,
        gan_loss=gan_loss,
        gan_weight=gan_weight,
        smooth_weight=smooth_weight,
        seg_weight=seg_weight,
        seg_ce_weight=seg_ce_weight,
        stage_steps=stage_steps,
    )


@register_model(
    "jssr-mi-baseline",
    summary="Registration-only baseline for JSSR: its register Phi trained with mutual information.",
    tags=("2d", "3d", "multimodal", "baseline"),
    presets={
        "quick": {
            "data": PRESETS["quick"]["data"],
            "train": PRESETS["quick"]["train"],
            "eval": PRESETS["quick"]["eval"],
        },
        "test": {"model": {"backbone": PRESETS["test"]["model"]["backbone"]}},
    },
)
def jssr_mi_baseline(
    ndim: int = 3,
    in_channels: int = 1,
    backbone: Mapping[str, Any] = {"name": "vxm-unet"},  # noqa: B006
    transformer: Mapping[str, Any] = {"name": "dense"},  # noqa: B006
    similarity: Mapping[str, Any] = {"name": "mi"},  # noqa: B006
    smooth_weight: float = 1.0,
) -> Any:
    """Phi of JSSR (same backbone and transformer) on the raw pair, ``-MI + w ||grad tau||^2``.

    Its quick preset is JSSR's (same data, steps, learning-rate schedule and smoothness weight),
    so ``regzoo train jssr`` and ``regzoo train jssr-mi-baseline`` compare the two.
    """
    from .baseline import MIRegistration

    return MIRegistration(ndim, in_channels, backbone, transformer, similarity, smooth_weight)


@register_metric(
    "seg-dice-moving",
    summary="Dice of the model's segmentation of the moving image (moving_seg) vs moving labels.",
    paper=JSSR_2020,
    tags=("2d", "3d", "labels", "joint-seg"),
)
def seg_dice_moving() -> Any:
    """Mean Dice over labels of ``moving_seg``'s arg-max and ``moving_label`` (background out)."""
    from .evaluation import SegmentationDice

    return SegmentationDice("moving")


@register_metric(
    "seg-dice-fixed",
    summary="Dice of the model's segmentation of the fixed image (fixed_seg) vs fixed labels.",
    paper=JSSR_2020,
    tags=("2d", "3d", "labels", "joint-seg"),
)
def seg_dice_fixed() -> Any:
    """Mean Dice over labels of ``fixed_seg``'s arg-max and ``fixed_label`` (background out)."""
    from .evaluation import SegmentationDice

    return SegmentationDice("fixed")
