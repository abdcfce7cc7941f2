"""regzoo plugin: JRSS, joint few-shot registration and segmentation by self-training.

Shi, Lu, Yin, Zhong, Yang, "Joint few-shot registration and segmentation self-training of 3D
medical images", Biomedical Signal Processing and Control 80:104294, 2023 (no code released). A
segmentation teacher trained on the few labelled images gives confident pseudo-labels to the
others; a student trained on labels, pseudo-labels and registration-warped images (with dropout
noise) becomes, through an exponential moving average of its weights, the next round's teacher.
A VoxelMorph-style registration network trains alongside on image similarity, smoothness and
the Dice of the (pseudo-)labels it warps.

The config dataclass here is the one source of the defaults; the classes
(:mod:`regzoo_jrss.model`) are imported with torch when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regzoo import Paper, register_model

__all__ = ["SHI_2023", "JRSSConfig", "PRESETS"]

SHI_2023 = Paper(
    "Shi, Lu, Yin, Zhong, Yang",
    "Joint few-shot registration and segmentation self-training of 3D medical images",
    "Biomedical Signal Processing and Control 80:104294",
    2023,
    "https://doi.org/10.1016/j.bspc.2022.104294",
)


@dataclass
class JRSSConfig:
    """Keyword arguments of :class:`regzoo_jrss.model.JRSS` with regzoo's defaults (the paper
    leaves the threshold, the EMA decay, the loss weights and the number of rounds open).

    ``reg_*_features``: the registration network (VoxelMorph U-Net); ``seg_*_features``: the
    segmentation network (the same U-Net on one image, a 1x1 classifier); ``dropout``: the
    student's noise (dropout before the classifier); ``threshold``: tau, the confidence a
    pseudo-labelled voxel needs; ``ema_decay``: the teacher's EMA decay per student update;
    ``teacher_steps``: steps training the first teacher on the labelled images;
    ``rounds`` x ``round_steps``: the self-training rounds; ``fresh_optimizer``: restart the
    student's optimiser state with each teacher.
    """

    ndim: int = 2
    in_channels: int = 1
    num_labels: int = 6
    reg_enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    reg_dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 32, 16, 16])
    seg_enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    seg_dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 32, 16, 16])
    dropout: float = 0.2
    window: int = 9
    smooth_weight: float = 1.0
    reg_dice_weight: float = 1.0
    ce_weight: float = 1.0
    kl_weight: float = 1.0
    seg_dice_weight: float = 1.0
    threshold: float = 0.9
    ema_decay: float = 0.99
    teacher_steps: int = 2000
    rounds: int = 3
    round_steps: int = 2000
    fresh_optimizer: bool = True


# quick: 2D 64x64 embedded data with a contrast per image, 20 training subjects of which 5 are
# labelled, random pairs; narrow networks for a CPU; a few CPU minutes.
_QUICK = {"teacher_steps": 300, "round_steps": 300}
PRESETS: dict[str, dict[str, Any]] = {
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
        "model": {
            "reg_enc_features": [8, 16, 16, 16],
            "reg_dec_features": [16, 16, 16, 16, 16, 8, 8],
            "seg_enc_features": [8, 16, 16, 16],
            "seg_dec_features": [16, 16, 16, 16, 16, 8, 8],
            **_QUICK,
        },
        "train": {
            "steps": _QUICK["teacher_steps"] + 3 * _QUICK["round_steps"],
            "lr": 1e-3,
            "batch_size": 4,
            "log_every": 50,
        },
        "eval": {
            "max_pairs": 16,
            "metrics": ["dice", "hd95", "sdlogj", "folding", "seg-dice-moving", "seg-dice-fixed"],
        },
    },
    # The paper's few-shot set-up in 3D on the embedded data (5 labelled images); the step counts
    # and learning rate are ours.
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
        "model": {"ndim": 3, "teacher_steps": 20000, "round_steps": 20000},
        "train": {"steps": 80_000, "lr": 1e-4, "batch_size": 2},
        "eval": {"metrics": ["dice", "hd95", "sdlogj", "folding", "seg-dice-fixed"]},
    },
    # Tiny networks for the conformance suite (regzoo.testing) and the unit tests.
    "test": {
        "model": {
            "num_labels": 4,
            "reg_enc_features": [4, 8, 8],
            "reg_dec_features": [8, 8, 8, 4],
            "seg_enc_features": [4, 8, 8],
            "seg_dec_features": [8, 8, 8, 4],
            "teacher_steps": 2,
            "round_steps": 2,
        },
    },
}

register_model(
    "jrss",
    summary="JRSS: few-shot registration and segmentation by teacher-student self-training "
    "(confident pseudo-labels, EMA teacher, warped images as augmentation, rounds).",
    paper=SHI_2023,
    tags=("2d", "3d", "semi-supervised", "joint-seg"),
    config=JRSSConfig,
    target="regzoo_jrss.model:JRSS",
    presets=PRESETS,
)
