"""regzoo plugin: concurrent brain registration and tumour segmentation.

Estienne, Lerousseau, Vakalopoulou et al., "Deep Learning-Based Concurrent Brain Registration and
Tumor Segmentation", Frontiers in Computational Neuroscience 14:17, 2020 (official Keras code
``TheoEst/joint_registration_tumor_segmentation``). One V-Net encoder reads both images; a
segmentation decoder finds the tumour in each, a registration decoder reads the difference of
their features and predicts spatial gradients, summed into a sampling grid that cannot fold
along any axis. The registration loss ignores the voxels either image's predicted tumour covers
(the "loss trick"), so the field is not pulled to match a tumour that has no counterpart.

The config dataclass here is the one source of the defaults; the classes
(:mod:`regzoo_tumourreg.model`) are imported with torch when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regzoo import Paper, register_model

__all__ = ["ESTIENNE_2020", "TumourJointConfig", "PRESETS"]

ESTIENNE_2020 = Paper(
    "Estienne, Lerousseau, Vakalopoulou, Alvarez Andres, Battistella, Carre, Chandra, "
    "Christodoulidis, Sahasrabudhe, Sun, Robert, Talbot, Paragios, Deutsch",
    "Deep Learning-Based Concurrent Brain Registration and Tumor Segmentation",
    "Frontiers in Computational Neuroscience 14",
    2020,
    "https://doi.org/10.3389/fncom.2020.00017",
)


@dataclass
class TumourJointConfig:
    """Keyword arguments of :class:`regzoo_tumourreg.model.TumourJoint` with the official defaults.

    ``features``: the V-Net's first width ``f`` (levels ``f, 2f, 4f, 8f, 16f``; official 8);
    ``kernel``: its convolution size (official run: 3); ``lesion_labels``: the label indices that
    are tumour, each a segmentation class after the background (the embedded ``synth-lesion``
    data's lesion is 6; BraTS' three tumour regions would be three); ``ratio``: registration
    over segmentation loss weight (each image's cross-entropy weighs ``1 / (2 ratio)``);
    ``gradient_weight``: the L1 pull of the predicted gradients towards the identity's 0.5;
    ``loss_trick``: mask the registration loss with the predicted tumours.
    """

    ndim: int = 2
    in_channels: int = 1
    features: int = 8
    kernel: int = 3
    lesion_labels: list[int] = field(default_factory=lambda: [6])
    ratio: float = 1.0
    gradient_weight: float = 1e-10
    loss_trick: bool = True


PRESETS: dict[str, dict[str, Any]] = {
    # quick: the embedded 2D pairs with a one-sided lesion; a few CPU minutes.
    "quick": {
        "data": {"name": "synth-lesion", "ndim": 2, "size": 64},
        "train": {"steps": 1000, "lr": 2e-3, "batch_size": 4, "log_every": 50},
        "eval": {"max_pairs": 16},
    },
    # The official schedule (Adam 2e-3, batch 2; 180 epochs of the BraTS training set, about
    # 160 pairs an epoch) in 3D, on the embedded data.
    "paper": {
        "data": {"name": "synth-lesion", "ndim": 3, "size": 96},
        "model": {"ndim": 3},
        "train": {"steps": 180 * 80, "lr": 2e-3, "batch_size": 2},
    },
    # Tiny networks for the conformance suite (regzoo.testing) and the unit tests.
    "test": {"model": {"features": 2, "lesion_labels": [3]}},
}

register_model(
    "tumour-joint",
    summary="Concurrent registration and tumour segmentation: shared V-Net encoder, monotone "
    "integrated-gradient grid, registration loss masked by the predicted tumours.",
    paper=ESTIENNE_2020,
    tags=("2d", "3d", "joint-seg", "pathology", "fold-free"),
    config=TumourJointConfig,
    target="regzoo_tumourreg.model:TumourJoint",
    presets=PRESETS,
)
