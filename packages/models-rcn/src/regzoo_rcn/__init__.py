"""regzoo plugin: Recursive Cascaded Networks (RCN) and the affine + deformable pipeline.

Zhao, Dong, Chang, Xu, "Recursive Cascaded Networks for Unsupervised Medical Image Registration",
ICCV 2019 (doi:10.1109/ICCV.2019.01070); official code ``microsoft/Recursive-Cascaded-Networks``.

Two registered models, both configs of one :class:`regzoo_rcn.model.RCN`:

- ``rcn``: an affine stem followed by ``n_cascades`` deformable cascades (VTN base by default),
  each registering the fixed image to the moving image warped by the fields so far; the fields are
  composed and the original moving image is warped once.
- ``affine-deformable``: RCN with one cascade whose base is the ``vxm-unet`` backbone (or any
  registered backbone): affine stem, deformable U-Net, composed field, trained end to end.

The config dataclasses here are the one source of the defaults; the class is imported with torch
when a model is built, so importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from regzoo import Paper, register_model

__all__ = ["ZHAO_2019", "RCNConfig", "AffineDeformableConfig", "SYNTH_LARGE", "SYNTH_UNALIGNED"]

ZHAO_2019 = Paper(
    "Zhao, Dong, Chang, Xu",
    "Recursive Cascaded Networks for Unsupervised Medical Image Registration",
    "ICCV",
    2019,
    "https://doi.org/10.1109/ICCV.2019.01070",
)


@dataclass
class RCNConfig:
    """Keyword arguments of :class:`regzoo_rcn.model.RCN` with the official code's defaults.

    ``size``: the image size (an int for every axis, or one per axis) that the affine stem's last
    convolution is built for (its kernel is the stem's remaining spatial size; official 128).
    ``base``: the deformable cascades' network, ``{"name": "vtn", "channels": 16}`` (RCN's VTN) or
    the config of any registered backbone, which then gets a 3x3 flow head.
    ``regularizer`` null: no regulariser on the cascades' fields; ``num_labels`` null: the classes
    of ``warped_label`` are those of the data's label table.
    """

    ndim: int = 2
    in_channels: int = 1
    n_cascades: int = 3
    rep: int = 1
    affine: bool = True
    size: Any = 128
    affine_channels: int = 16
    base: dict[str, Any] = field(default_factory=lambda: {"name": "vtn", "channels": 16})
    similarity: dict[str, Any] = field(default_factory=lambda: {"name": "ncc"})
    regularizer: Optional[dict[str, Any]] = field(
        default_factory=lambda: {"name": "grad", "penalty": "l2"}
    )
    reg_weight: float = 1.0
    det_weight: float = 0.1
    ortho_weight: float = 0.1
    num_labels: Optional[int] = None


@dataclass
class AffineDeformableConfig(RCNConfig):
    """The affine + deformable pipeline: RCN with one cascade on the ``vxm-unet`` backbone."""

    n_cascades: int = 1
    base: dict[str, Any] = field(default_factory=lambda: {"name": "vxm-unet"})


# Quick presets: 600 steps on 2D 64x64 embedded synthetic pairs, at half the official widths
# (VTN and stem c = 8) to fit a few CPU minutes. Large deformations for rcn;
# pairs that are not pre-aligned (a random affine on top of the smooth warp) for affine-deformable:
# core's synth-large and synth-unaligned.
SYNTH_LARGE = {"name": "synth-large", "ndim": 2, "size": 64}
SYNTH_UNALIGNED = {"name": "synth-unaligned", "ndim": 2, "size": 64}

# The official schedule: Adam, batch 4, lr 1e-4, 5 "epochs" of 20,000 iterations, the learning
# rate halved for the 4th and quartered for the 5th epoch.
_PAPER = {
    "train": {
        "steps": 100_000,
        "lr": 1e-4,
        "batch_size": 4,
        "optimizer": "adam",
        "scheduler": "step",
        "lr_milestones": [60_000, 80_000],
        "lr_gamma": 0.5,
    }
}
# The paper's 3D set-up: 128^3 volumes; the official regulariser sum((du)^2) / 2 / (N * ndim)
# equals Grad-l2 times ndim / 2, i.e. loss_mult 1.5 in 3D (1 in 2D, the default).
_PAPER_3D = {
    "train": _PAPER["train"],
    "data": {"ndim": 3, "size": 128},
    "model": {
        "ndim": 3,
        "size": 128,
        "regularizer": {"name": "grad", "penalty": "l2", "loss_mult": 1.5},
    },
}
# The conformance suite's inputs: small widths so that the 3D checks run in seconds on a CPU.
_TEST = {
    "size": {"2d": [32, 32], "3d": [32, 32, 32]},
    "model": {"size": 32, "affine_channels": 4},
}

register_model(
    "rcn",
    summary="Recursive Cascaded Networks: affine stem + n VTN cascades, fields composed, one warp.",
    paper=ZHAO_2019,
    tags=("2d", "3d", "unsupervised", "affine", "cascade"),
    config=RCNConfig,
    target="regzoo_rcn.model:RCN",
    presets={
        "quick": {
            "train": {"steps": 600, "lr": 1e-3, "batch_size": 4},
            "data": SYNTH_LARGE,
            "model": {"size": 64, "affine_channels": 8, "base": {"name": "vtn", "channels": 8}},
        },
        "paper": _PAPER,
        "paper-3d": _PAPER_3D,
        "test": {**_TEST, "model": {**_TEST["model"], "base": {"name": "vtn", "channels": 4}}},
    },
)
register_model(
    "affine-deformable",
    summary="Affine stem + deformable U-Net (any backbone), composed field, trained end to end.",
    paper=ZHAO_2019,
    tags=("2d", "3d", "unsupervised", "affine"),
    config=AffineDeformableConfig,
    target="regzoo_rcn.model:RCN",
    presets={
        "quick": {
            "train": {"steps": 600, "lr": 1e-3, "batch_size": 4},
            "data": SYNTH_UNALIGNED,
            "model": {"size": 64, "affine_channels": 8},
        },
        "paper": _PAPER,
        "paper-3d": _PAPER_3D,
        "test": _TEST,
    },
)
