"""regzoo plugin: DeepAtlas, joint semi-supervised learning of registration and segmentation.

Xu, Niethammer, "DeepAtlas: Joint Semi-Supervised Learning of Image Registration and
Segmentation", MICCAI 2019 (official PyTorch code ``uncbiag/DeepAtlas``). A registration network
and a segmentation network train together: the registration network's warps carry labels to
unlabelled images (the anatomy loss), so the segmentation network learns from them, and the
segmentation network's predictions give the registration network an anatomy loss on pairs
without manual labels. ``model.one_shot: true`` is Semi-DeepAtlas (a single labelled image).

The config dataclass here is the one source of the defaults; the classes
(:mod:`regzoo_deepatlas.model`) are imported with torch when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regzoo import Paper, register_model

__all__ = ["XU_2019", "DeepAtlasConfig", "PRESETS"]

XU_2019 = Paper(
    "Xu, Niethammer",
    "DeepAtlas: Joint Semi-Supervised Learning of Image Registration and Segmentation",
    "MICCAI",
    2019,
    "https://doi.org/10.1007/978-3-030-32245-8_47",
)


@dataclass
class DeepAtlasConfig:
    """Keyword arguments of :class:`regzoo_deepatlas.model.DeepAtlas` with the official defaults.

    ``reg_enc_features`` / ``reg_dec_features``: the registration network (VoxelMorph's U-Net,
    ReLU, stride-2 encoder); ``seg_features``: the segmentation U-Net's eight encoder widths (two
    convolutions per level, four levels). ``pretrain_steps``: steps of separate pre-training;
    ``seg_steps``: with ``one_shot``, steps training the segmentation network from scratch with
    the registration network frozen; ``reg_per_seg``: registration steps per segmentation step
    in the joint phase (official 20).
    """

    ndim: int = 2
    in_channels: int = 1
    num_labels: int = 6
    reg_enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    reg_dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 8, 8])
    negative_slope: float = 0.0
    seg_features: list[int] = field(default_factory=lambda: [32, 64, 64, 128, 128, 256, 256, 512])
    window: int = 9
    reg_weight: float = 1.0
    anatomy_weight: float = 1.0
    sup_weight: float = 3.0
    one_shot: bool = False
    pretrain_steps: int = 2000
    seg_steps: int = 2000
    reg_per_seg: int = 20


# quick: Semi-DeepAtlas on the embedded 2D data with one contrast per image: 20 training subjects,
# only the first labelled and the fixed image of every pair (as the test of the joint training);
# F_S narrowed for a CPU; a few CPU minutes.
_QUICK_STAGES = (400, 400, 1200)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "data": {
            "name": "synth",
            "ndim": 2,
            "size": 64,
            "num_subjects": {"train": 20},
            "labelled": 1,
            "multimodal": True,
            "pairing": "atlas",
        },
        "model": {
            "seg_features": [8, 16, 16, 32, 32, 64, 64, 128],
            "one_shot": True,
            "pretrain_steps": _QUICK_STAGES[0],
            "seg_steps": _QUICK_STAGES[1],
        },
        "train": {"steps": sum(_QUICK_STAGES), "lr": 1e-3, "batch_size": 4, "log_every": 50},
        "eval": {
            "max_pairs": 16,
            "metrics": ["dice", "hd95", "sdlogj", "folding", "seg-dice-moving", "seg-dice-fixed"],
        },
    },
    # The paper's set-up in 3D on the embedded data: official widths, Adam 1e-4 (the step counts
    # are ours; the paper trains each phase to convergence).
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
        "model": {"ndim": 3, "pretrain_steps": 20000, "seg_steps": 20000},
        "train": {"steps": 100_000, "lr": 1e-4, "batch_size": 2},
        "eval": {"metrics": ["dice", "hd95", "sdlogj", "folding", "seg-dice-fixed"]},
    },
    # Tiny networks for the conformance suite (regzoo.testing) and the unit tests.
    "test": {
        "model": {
            "num_labels": 4,
            "reg_enc_features": [4, 8, 8],
            "reg_dec_features": [8, 8, 8, 4, 4],
            "seg_features": [4, 4, 8, 8, 8, 8, 8, 8],
            "pretrain_steps": 2,
            "seg_steps": 2,
            "reg_per_seg": 2,
        },
    },
}

register_model(
    "deepatlas",
    summary="DeepAtlas: registration and segmentation networks trained jointly from few labels "
    "(anatomy loss); model.one_shot for Semi-DeepAtlas.",
    paper=XU_2019,
    tags=("2d", "3d", "semi-supervised", "joint-seg"),
    config=DeepAtlasConfig,
    target="regzoo_deepatlas.model:DeepAtlas",
    presets=PRESETS,
)
