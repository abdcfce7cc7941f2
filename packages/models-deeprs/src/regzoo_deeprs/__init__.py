"""regzoo plugin: DeepRS, a deep complementary joint model of registration and segmentation.

He, Li, Yang, Kong, Chen, Shu, Coatrieux, Dillenseger, Li, "Deep Complementary Joint Model for
Complex Scene Registration and Few-shot Segmentation on Medical Images", ECCV 2020 (no official
code). A registration network R, a segmentation network S and a pixel-wise discriminator D train
together from few labelled images: R's fields, scaled by a random factor (deep structure
sampling), carry labelled images and their labels to new shapes as augmentation data for S; D's
alignment confidence map weights the warped labels used as S's supervision on the fixed image
(the ACM loss); S's predictions constrain R's warps (the deep region constraint, DRC).

The config dataclass here is the one source of the defaults; the classes
(:mod:`regzoo_deeprs.model`) are imported with torch when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regzoo import Paper, register_model

__all__ = ["HE_2020", "DeepRSConfig", "PRESETS"]

HE_2020 = Paper(
    "He, Li, Yang, Kong, Chen, Shu, Coatrieux, Dillenseger, Li",
    "Deep Complementary Joint Model for Complex Scene Registration and Few-shot Segmentation on "
    "Medical Images",
    "ECCV",
    2020,
    "https://arxiv.org/abs/2008.00710",
)


@dataclass
class DeepRSConfig:
    """Keyword arguments of :class:`regzoo_deeprs.model.DeepRS`; the paper leaves the widths, the
    loss weights, beta and how alpha is drawn open, so these are regzoo's choices.

    ``reg_enc_features`` / ``reg_dec_features``: R's U-Net (core's ``vxm-unet``, VoxelMorph-2
    widths); ``seg_enc_features`` / ``seg_dec_features``: S's U-Net (the same backbone, a 1x1
    head to ``num_labels`` classes); ``disc_enc_features`` / ``disc_dec_features``: D's U-Net
    on the concatenated (image, fixed) pair with a 1x1 head to one confidence channel.
    ``adv_weight``, ``drc_weight``, ``cc_weight``, ``grad_weight``: lambda_adv, lambda_drc,
    lambda_cc, lambda_R of R's loss; ``acm_weight``, ``ce_weight``: lambda_acm, lambda_ce of S's
    loss; ``beta``: the reference mix ``x_r = beta m + (1 - beta) f`` of D's loss.
    """

    ndim: int = 2
    in_channels: int = 1
    num_labels: int = 6
    reg_enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    reg_dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 32, 16, 16])
    seg_enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    seg_dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 16])
    disc_enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    disc_dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 16])
    window: int = 9
    adv_weight: float = 0.1
    drc_weight: float = 1.0
    cc_weight: float = 1.0
    grad_weight: float = 1.0
    acm_weight: float = 1.0
    ce_weight: float = 1.0
    beta: float = 0.7
    drc_field: str = "sampled"


_NARROW = {
    "seg_enc_features": [8, 16, 16, 32],
    "seg_dec_features": [32, 16, 16, 16, 8],
    "disc_enc_features": [8, 16, 16],
    "disc_dec_features": [16, 16, 16, 8],
}

PRESETS: dict[str, dict[str, Any]] = {
    # quick: the few-label setting of the tests on a CPU: 2D 64x64 embedded data with a contrast
    # per image, 20 training subjects of which 5 are labelled, random pairs, S and D narrowed.
    "quick": {
        "data": {
            "name": "synth",
            "ndim": 2,
            "size": 64,
            "num_subjects": {"train": 20},
            "labelled": 5,
            "multimodal": True,
            "pairing": "random",
        },
        "model": dict(_NARROW),
        "train": {"steps": 1500, "lr": 1e-3, "batch_size": 4, "log_every": 50},
        "eval": {
            "max_pairs": 16,
            "metrics": ["dice", "hd95", "sdlogj", "folding", "seg-dice-moving", "seg-dice-fixed"],
        },
    },
    # The paper's set-up (MM-WHS CT, 3D, few labelled volumes) on the embedded data: 3D 96^3,
    # 5 labelled among 100; Adam 1e-4 (the step count is ours).
    "paper": {
        "data": {
            "name": "synth",
            "ndim": 3,
            "size": 96,
            "num_subjects": {"train": 100},
            "labelled": 5,
            "multimodal": True,
            "pairing": "random",
        },
        "model": {"ndim": 3},
        "train": {"steps": 50_000, "lr": 1e-4, "batch_size": 1},
        "eval": {"metrics": ["dice", "hd95", "sdlogj", "folding", "seg-dice-fixed"]},
    },
    # Tiny networks for the conformance suite (regzoo.testing) and the unit tests.
    "test": {
        "model": {
            "num_labels": 4,
            "reg_enc_features": [4, 8, 8],
            "reg_dec_features": [8, 8, 8, 4, 4],
            "seg_enc_features": [4, 8],
            "seg_dec_features": [8, 4, 4],
            "disc_enc_features": [4, 8],
            "disc_dec_features": [8, 4, 4],
        },
    },
}

register_model(
    "deeprs",
    summary="DeepRS: registration, segmentation and a pixel-wise discriminator trained jointly "
    "from few labels (deep structure sampling, alignment confidence map, deep region constraint).",
    paper=HE_2020,
    tags=("2d", "3d", "semi-supervised", "joint-seg", "adversarial"),
    config=DeepRSConfig,
    target="regzoo_deeprs.model:DeepRS",
    presets=PRESETS,
)
