"""regzoo plugin: joint organ-at-risk (OAR) registration and segmentation, ``oar-joint``.

The method as a survey describes it (the paper itself could not be located; the citation below
is the survey's description, unverified): a lightweight 3D pipeline for head-and-neck CT,
IEEE TMI 2021 per the survey, also described by a related thesis:

1. a registration network aligns a labelled OAR template to the new CT, trained with a
   centre-of-mass distance loss for localisation;
2. an ROI-selection layer crops one region of interest per OAR from the registered template,
   sized by the organ's volume;
3. a lightweight segmentation network segments each ROI, with an ROI-classification branch;
4. iterate: the predicted masks are landmarks fed back into the registration network;
5. a shape correction refines the masks.

:class:`regzoo_oar.model.OARJoint` implements it (README: what is the survey's and what is ours).
The config dataclass here is the one source of the defaults; the class is imported with torch
when a model is built, so importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from regzoo import Paper, register_model

__all__ = ["OAR_2021", "OARJointConfig", "SYNTH_ORGANS"]

OAR_2021 = Paper(
    "authors not traced (described by a survey; unverified)",
    "3D lightweight organ-at-risk registration and segmentation for head-and-neck CT (the "
    "survey's description; the paper could not be located)",
    "IEEE TMI (per the survey)",
    2021,
)


@dataclass
class OARJointConfig:
    """Keyword arguments of :class:`regzoo_oar.model.OARJoint`.

    ``num_labels``: the classes of the label maps, background (0) included; every other label is
    an OAR. ``registration``/``segmentation``: ``vxm-unet`` backbone configs of the two networks
    (``ndim`` and ``in_channels`` are set by the model). ``correct_labels`` null: the shape
    correction refines every OAR; a list: only those labels; empty: none.
    """

    ndim: int = 3
    in_channels: int = 1
    num_labels: int = 8
    iterations: int = 2
    registration: dict[str, Any] = field(default_factory=lambda: {"name": "vxm-unet"})
    transformer: str = "dense"
    segmentation: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "vxm-unet",
            "enc_features": [16, 32, 64, 128],
            "dec_features": [128, 64, 32, 16, 16],
        }
    )
    roi_size: int = 32
    roi_scale: float = 3.0
    min_roi: float = 8.0
    dice_weight: float = 1.0
    com_weight: float = 1.0
    regularizer: Optional[dict[str, Any]] = field(
        default_factory=lambda: {"name": "grad", "penalty": "l2"}
    )
    reg_weight: float = 10.0
    seg_weight: float = 1.0
    cls_weight: float = 0.1
    correct_labels: Optional[list[int]] = None


# The quick preset's data: 2D 64x64 template-to-subject pairs, 4 large structures and 4 small
# organs (labels 4 .. 7), which the shape correction refines.
SYNTH_ORGANS = {"name": "synth-organs", "ndim": 2, "size": 64}

register_model(
    "oar-joint",
    summary="Joint OAR atlas registration + per-organ ROI segmentation, masks fed back for a "
    "second registration pass, shape-corrected.",
    paper=OAR_2021,
    tags=("2d", "3d", "supervised", "atlas", "segmentation"),
    config=OARJointConfig,
    target="regzoo_oar.model:OARJoint",
    presets={
        "quick": {
            "train": {"steps": 600, "lr": 1e-3, "batch_size": 4},
            "data": SYNTH_ORGANS,
            "model": {
                "ndim": 2,
                "num_labels": 8,
                "roi_size": 24,
                "correct_labels": [4, 5, 6, 7],
            },
        },
        # The survey gives no schedule: VoxelMorph's (Adam 1e-4) on 3D volumes of the
        # synthetic set; the rest are the defaults.
        "paper": {
            "train": {"steps": 100_000, "lr": 1e-4, "batch_size": 1},
            "data": {"name": "synth-organs", "ndim": 3, "size": 96},
        },
        # The conformance suite's inputs: narrow networks, 4 classes (regzoo.testing).
        "test": {
            "size": {"2d": [32, 32], "3d": [16, 16, 16]},
            "model": {
                "num_labels": 4,
                "roi_size": 8,
                "min_roi": 4.0,
                "registration": {
                    "name": "vxm-unet",
                    "enc_features": [4, 8],
                    "dec_features": [8, 8, 4],
                },
                "segmentation": {
                    "name": "vxm-unet",
                    "enc_features": [4, 8],
                    "dec_features": [8, 8, 4],
                },
            },
        },
    },
)
