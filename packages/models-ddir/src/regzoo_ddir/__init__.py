"""regzoo plugin: DDIR and SDDIR, registration whose field may tear where regions slide.

- ``ddir``: Chen, Xia, Ravikumar, Frangi, "A deep discontinuity-preserving image registration
  network", MICCAI 2021 (official Keras code ``ccmim/DDIR``): one probabilistic diffeomorphic
  VoxelMorph per region on the masked images, the fields summed under the fixed image's region
  masks. Needs both images' label maps, at test time too.
- ``sddir``: the same with a co-attention segmentation network that segments both images and
  supplies the regions at test time (arXiv:2211.13828, 2022; no code released).

The config dataclasses here are the one source of the defaults; the classes
(:mod:`regzoo_ddir.model`) are imported with torch when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from regzoo import Paper, register_model

__all__ = ["CHEN_2021", "CHEN_2022", "DDIRConfig", "SDDIRConfig"]

CHEN_2021 = Paper(
    "Chen, Xia, Ravikumar, Frangi",
    "A deep discontinuity-preserving image registration network",
    "MICCAI",
    2021,
    "https://doi.org/10.1007/978-3-030-87202-1_5",
)
CHEN_2022 = Paper(
    "Chen, Xia, Ravikumar, Frangi",
    "Joint segmentation and discontinuity-preserving deformable registration: application to "
    "cardiac cine-MR images",
    "arXiv:2211.13828",
    2022,
    "https://arxiv.org/abs/2211.13828",
)


@dataclass
class DDIRConfig:
    """Keyword arguments of :class:`regzoo_ddir.model.DDIR` with the official code's defaults.

    ``regions`` null: label index ``k`` is region ``k`` (the official four: background, LV blood
    pool, myocardium, RV); otherwise one list of label indices per region. ``num_labels`` null:
    the classes of ``warped_label`` are those of the data's label table.
    """

    ndim: int = 2
    in_channels: int = 1
    num_regions: int = 4
    regions: Optional[list[list[int]]] = None
    enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 16])
    negative_slope: float = 0.3
    int_steps: int = 7
    sim_weight: float = 20.0
    seg_weight: float = 200.0
    kl_weight: float = 0.025
    window: int = 9
    prior_lambda: float = 100.0
    num_labels: Optional[int] = None


@dataclass
class SDDIRConfig(DDIRConfig):
    """DDIR's defaults plus the segmenter: ``num_labels`` classes (background included), encoder
    widths ``seg_features``, cross-entropy weight ``ce_weight`` per image; ``label_masks``
    registers with the batch's label maps at test time instead of the predicted ones."""

    num_labels: Optional[int] = 4
    seg_features: list[int] = field(default_factory=lambda: [16, 32, 32, 64])
    ce_weight: float = 1.0
    label_masks: bool = False


# The official schedule (DDIR/train.py): Adam, lr 1e-4, batch 4, 800 epochs of 500 steps, on 3D
# short-axis cine MR of 128 x 128 x 32 voxels.
_PAPER: dict[str, Any] = {
    "train": {"steps": 400_000, "lr": 1e-4, "batch_size": 4},
    "data": {"ndim": 3, "size": [128, 128, 32]},
    "model": {"ndim": 3},
    "eval": {"metrics": ["dice", "hd95", "region-folding", "region-grad", "folding"]},
}
# A few CPU minutes on the embedded 2D pairs whose four regions slide against each other.
_QUICK: dict[str, Any] = {
    "train": {"steps": 600, "lr": 1e-3, "batch_size": 4},
    "data": {"name": "synth-sliding", "ndim": 2, "size": 64},
    "eval": {"metrics": ["dice", "boundary-error", "region-folding", "region-grad", "folding"]},
}

register_model(
    "ddir",
    summary="DDIR: one diffeomorphic VoxelMorph per region, fields summed under the region masks "
    "(needs both label maps).",
    paper=CHEN_2021,
    tags=("2d", "3d", "semi-supervised", "diffeomorphic", "probabilistic", "discontinuous"),
    config=DDIRConfig,
    target="regzoo_ddir.model:DDIR",
    presets={"quick": _QUICK, "paper": _PAPER},
)
register_model(
    "sddir",
    summary="SDDIR: DDIR with a co-attention segmentation network supplying the regions at test "
    "time.",
    paper=CHEN_2022,
    tags=("2d", "3d", "semi-supervised", "diffeomorphic", "segmentation", "discontinuous"),
    config=SDDIRConfig,
    target="regzoo_ddir.model:SDDIR",
    presets={"quick": _QUICK, "paper": _PAPER},
)
