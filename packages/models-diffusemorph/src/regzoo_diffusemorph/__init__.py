"""DiffuseMorph for regzoo: registration with a denoising diffusion model.

Kim, Han, Ye, "DiffuseMorph: Unsupervised Deformable Image Registration Using Diffusion Model",
ECCV 2022. Registers two models, each a config dataclass here (the one source of its defaults)
and the class :class:`regzoo_diffusemorph.model.DiffuseMorph`, imported with torch when a model is
built, so importing this module is cheap:

- ``diffusemorph``: the authors' 3D configuration (ACDC cardiac MR): DDPM U-Net of width 8,
  deformation network ``[16, 32, 32, 32, 32]`` / ``[32, 32, 32, 8, 8, 3]``, lambda 20.
- ``diffusemorph-2d``: the authors' 2D configuration (RaFD faces): U-Net of width 64,
  deformation network ``[64, ..., 1024]`` / ``[1024, ..., 2]`` with two convolutions per block,
  lambda 2.

``model.ndim`` follows ``data.ndim``: ``diffusemorph`` (narrow enough for a CPU) is declared
for 2D and 3D images, ``diffusemorph-2d`` for 2D images as its authors used it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from regzoo import Paper, register_model

__all__ = ["KIM_2022", "DiffuseMorphConfig", "DiffuseMorph2DConfig"]

KIM_2022 = Paper(
    "Kim, Han, Ye",
    "DiffuseMorph: Unsupervised Deformable Image Registration Using Diffusion Model",
    "ECCV",
    2022,
    "https://doi.org/10.1007/978-3-031-19821-2_20",
)


@dataclass
class DiffuseMorphConfig:
    """The authors' 3D configuration (``config/diffuseMorph_train_3D.json``).

    The arguments of :class:`~regzoo_diffusemorph.model.DiffuseMorph`. ``image_size`` is the
    configured in-plane size that decides where attention goes (no level of a 128 image has
    resolution 10: attention in the middle block only); ``padding`` is how the warp samples
    outside the image (the authors' 3D warp pads with zeros); ``identity_anchor`` (0 in the
    authors' training) weighs a term that ties the trajectory's start to the identity. Nullable
    fields: ``similarity`` or
    ``regularizer`` null: the objective has no such term; ``num_labels`` null: the classes of
    ``warped_label`` are those of the data's label table.
    """

    ndim: int = 3
    in_channels: int = 1
    inner_channel: int = 8
    channel_multiplier: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    attn_res: list[int] = field(default_factory=lambda: [10])
    res_blocks: int = 1
    dropout: float = 0.0
    image_size: int = 128
    norm_groups: int = 4
    attn_heads: int = 4
    attention: str = "linear"
    encoder_nc: list[int] = field(default_factory=lambda: [16, 32, 32, 32, 32])
    decoder_nc: list[int] = field(default_factory=lambda: [32, 32, 32, 8, 8, 3])
    convs_per_block: int = 1
    n_timestep: int = 2000
    linear_start: float = 1e-6
    linear_end: float = 1e-2
    loss_lambda: float = 20.0
    similarity: Optional[dict[str, Any]] = field(
        default_factory=lambda: {"name": "lncc", "window": 9}
    )
    regularizer: Optional[dict[str, Any]] = field(
        default_factory=lambda: {"name": "grad", "penalty": "l2"}
    )
    padding: str = "zeros"
    identity_anchor: float = 0.0
    trajectory_steps: int = 7
    num_labels: Optional[int] = None


@dataclass
class DiffuseMorph2DConfig(DiffuseMorphConfig):
    """The authors' 2D configuration (``config/diffuseMorph_train_2D.json``): GroupNorm(32),
    one-head dot-product attention, two convolutions per deformation block, lambda 2, and a warp
    that repeats the border (the authors' 2D warp pads with the edge values)."""

    ndim: int = 2
    inner_channel: int = 64
    attn_res: list[int] = field(default_factory=lambda: [8])
    norm_groups: int = 32
    attn_heads: int = 1
    attention: str = "dot"
    encoder_nc: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024])
    decoder_nc: list[int] = field(default_factory=lambda: [1024, 512, 256, 128, 64, 2])
    convs_per_block: int = 2
    loss_lambda: float = 2.0
    padding: str = "border"


# quick: a CPU run of a few minutes on the embedded synthetic 2D 64x64 pairs (the 3D widths, which
# fit a CPU; see tests/test_training.py for the Dice it reaches).
_QUICK = {
    "train": {"steps": 600, "lr": 2e-3, "batch_size": 4},
    "data": {"ndim": 2, "size": 64},
    "model": {"identity_anchor": 0.5},
}
# The wide 2D configuration on a CPU: a smoke run of a few minutes (about 3 s a step at 64x64),
# too short to register; the README says so.
_QUICK_2D = {
    "train": {"steps": 60, "lr": 1e-4, "batch_size": 1},
    "data": {"ndim": 2, "size": 64},
}
# paper: the official schedules, Adam, batch 1: 3D lr 2e-4 for 800 epochs, 2D lr 5e-6 for 40
# epochs. regzoo counts steps: an epoch is taken as 90 pairs (one ED-ES pair per training subject,
# 90 ACDC subjects assumed); set train.steps to epochs x pairs for other data.
_PAPER_3D = {"train": {"steps": 800 * 90, "lr": 2e-4, "batch_size": 1}}
_PAPER_2D = {"train": {"steps": 40 * 90, "lr": 5e-6, "batch_size": 1}}
# the conformance suite's inputs: sizes multiples of 16 (four stride-2 levels)
_TEST = {"size": {"2d": [32, 32], "3d": [16, 16, 16]}}

_TARGET = "regzoo_diffusemorph.model:DiffuseMorph"

register_model(
    "diffusemorph",
    summary="DiffuseMorph (3D config): DDPM U-Net latent + deformation net; gamma-scaled latent "
    "gives a trajectory.",
    paper=KIM_2022,
    tags=("2d", "3d", "unsupervised", "diffusion", "trajectory"),
    config=DiffuseMorphConfig,
    target=_TARGET,
    presets={"quick": _QUICK, "paper": _PAPER_3D, "test": _TEST},
)
register_model(
    "diffusemorph-2d",
    summary="DiffuseMorph (2D config): the wide U-Net (64) and deformation net (64..1024), "
    "lambda 2.",
    paper=KIM_2022,
    tags=("2d", "unsupervised", "diffusion", "trajectory"),
    config=DiffuseMorph2DConfig,
    target=_TARGET,
    presets={"quick": _QUICK_2D, "paper": _PAPER_2D, "test": _TEST},
)
