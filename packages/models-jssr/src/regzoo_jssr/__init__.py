"""regzoo plugin: JSSR, joint synthesis, segmentation and registration (METHODS.md J30).

Liu, Yan, Lu, Harrison, et al., ECCV 2020 (arXiv 2005.12209). Registers ``jssr`` (model) and
``synth-two-contrast`` (the synthetic pairs with one contrast per modality it trains on by
default). Importing this package is cheap: the networks are imported when a model is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from regzoo import Paper, register_model

from . import data
from .data import TwoContrastSynth

__all__ = ["JSSR_2020", "PRESETS", "jssr", "TwoContrastSynth", "data"]

JSSR_2020 = Paper(
    "Liu, Yan, Lu, Harrison, et al.",
    "JSSR: A Joint Synthesis, Segmentation, and Registration System for 3D Multi-Modal Image "
    "Alignment of Large-scale Pathological CT Scans",
    "ECCV",
    2020,
    "https://arxiv.org/abs/2005.12209",
)

# The quick preset: 2D two-contrast synthetic pairs, networks narrowed for a CPU, a few minutes
# on 2 cores. Stage lengths sum to train.steps.
_QUICK_STAGES = (200, 400, 600)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "data": {
            "name": "synth-two-contrast",
            "ndim": 2,
            "size": 64,
            "num_labels": 8,
            "multimodal": True,
            "pairing": "random",
        },
        "model": {
            "num_classes": 8,
            "generator": {"features": [16, 32, 32, 32]},
            "discriminator": {"features": 16, "layers": 2},
            "segmentor": {"name": "vxm-unet", "enc_features": [16, 32, 32], "dec_features": [32, 32, 32, 16]},
            "stage_steps": list(_QUICK_STAGES),
        },
        "train": {"steps": sum(_QUICK_STAGES), "lr": 1e-3, "batch_size": 1, "log_every": 20},
        "eval": {"max_pairs": 16},
    },
    "paper": {
        "data": {"name": "synth-two-contrast", "ndim": 3, "size": 96, "multimodal": True, "pairing": "random"},
        "model": {"stage_steps": [10000, 20000, 20000]},
        "train": {"steps": 50000, "lr": 1e-4, "batch_size": 1},
    },
    # The conformance suite's inputs: the patch discriminator needs more than 16^3 voxels.
    "test": {"size": {"3d": [32, 32, 32]}},
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
    generator: Mapping[str, Any] = {"features": [32, 64, 128, 256], "norm": "instance", "output": "sigmoid"},  # noqa: B006
    discriminator: Mapping[str, Any] = {"features": 64, "layers": 3, "norm": "instance"},  # noqa: B006
    backbone: Mapping[str, Any] = {"name": "vxm-unet"},  # noqa: B006
    transformer: Mapping[str, Any] = {"name": "dense"},  # noqa: B006
    segmentor: Mapping[str, Any] = {"name": "vxm-unet"},  # noqa: B006
    gan_loss: str = "bce",
    gan_weight: float = 1.0,
    smooth_weight: float = 1.0,
    seg_weight: float = 1.0,
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
        stage_steps=stage_steps,
    )
