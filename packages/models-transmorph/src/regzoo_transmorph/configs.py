"""Default configurations of the TransMorph family: the official configs, as dataclasses.

Values from the official ``configs_TransMorph*.py`` (Chen et al., Medical Image Analysis 82:102615,
2022; doi 10.1016/j.media.2022.102615). The registry turns each into a type-checked OmegaConf node;
every field is a keyword of the model class (``network`` fields go to :class:`TransMorphTrunk`),
and the classes take their defaults from these dataclasses, so a class built directly is its
registered entry. This module imports no torch, so registering the plugin stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from regzoo import Paper

__all__ = [
    "TRANSMORPH_2022",
    "SWIN_2021",
    "TransMorphConfig",
    "TransMorphTinyConfig",
    "TransMorphSmallConfig",
    "TransMorphLargeConfig",
    "TransMorphDiffConfig",
    "TransMorphDiffFullResConfig",
    "TransMorphBSplineConfig",
    "TransMorphBayesConfig",
    "TransMorphAffineConfig",
    "Swin3dConfig",
    "Swin2dConfig",
    "QUICK_DATA",
    "PAPER_STEPS",
    "presets",
    "AFFINE_PRESETS",
]

TRANSMORPH_2022 = Paper(
    "Chen, Frey, He, Segars, Li, Du",
    "TransMorph: Transformer for unsupervised medical image registration",
    "Medical Image Analysis 82:102615",
    2022,
    "https://doi.org/10.1016/j.media.2022.102615",
)
SWIN_2021 = Paper(
    "Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo",
    "Swin Transformer: hierarchical vision transformer using shifted windows",
    "ICCV",
    2021,
    "https://doi.org/10.1109/ICCV48922.2021.00986",
)

# 500 epochs of the 403 IXI training volumes at batch size 1 (the official schedule).
PAPER_STEPS = 500 * 403


def _ints(*values: int):
    return field(default_factory=lambda: list(values))


def _loss(**cfg: Any):
    return field(default_factory=lambda: dict(cfg))


@dataclass
class _Encoder:
    """The Swin encoder's sizes, as the official configs name them.

    ``window_size`` null: the official windows of the model (see :class:`_Network` and
    :class:`TransMorphAffineConfig`).
    """

    in_channels: int = 1
    patch_size: int = 4
    embed_dim: int = 96
    depths: list[int] = _ints(2, 2, 4, 2)
    num_heads: list[int] = _ints(4, 4, 8, 8)
    window_size: Optional[list[int]] = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float = 0.3
    rpe: bool = True
    patch_norm: bool = True
    use_checkpoint: bool = False


@dataclass
class _Network(_Encoder):
    """Fields shared by the deformable members: data dimensions, the Swin encoder and the decoder's
    skips.

    ``window_size`` null: the official windows, (5, 6, 7) in 3D and (8, 8) in 2D (the official
    IXI/OASIS and RaFD configs).
    """

    ndim: int = 3
    if_transskip: bool = True
    if_convskip: bool = True


@dataclass
class _Objective:
    """-LNCC(9) + 1 * Grad-l2 (IXI); OASIS adds Dice with ``seg_weight=1``.

    Loss configs name only the loss where its own defaults are TransMorph's (LNCC's window 9,
    Grad's l2 penalty), so that ``model.similarity.name=mse`` leaves no foreign key behind.
    """

    similarity: dict[str, Any] = _loss(name="lncc")
    regularizer: dict[str, Any] = _loss(name="grad")
    reg_weight: float = 1.0
    segmentation: dict[str, Any] = _loss(name="dice")
    seg_weight: float = 0.0


@dataclass
class _Training:
    """How a training step runs. ``bidirectional_step``: after the update on (moving, fixed) a
    second update on the reversed pair (fixed, moving), as the official OASIS and top-level
    training scripts; the IXI scripts (the ``paper`` preset) take one update per step."""

    bidirectional_step: bool = False


@dataclass
class TransMorphConfig(_Training, _Objective, _Network):
    """TransMorph: embed 96, depths (2, 2, 4, 2), heads (4, 4, 8, 8); 46,771,251 parameters."""

    reg_head_chan: int = 16


@dataclass
class TransMorphTinyConfig(TransMorphConfig):
    """TransMorph-Tiny: embed 6, heads (2, 2, 4, 4); 244,527 parameters."""

    embed_dim: int = 6
    num_heads: list[int] = _ints(2, 2, 4, 4)


@dataclass
class TransMorphSmallConfig(TransMorphConfig):
    """TransMorph-Small: embed 48, heads (4, 4, 4, 4); 11,757,195 parameters."""

    embed_dim: int = 48
    num_heads: list[int] = _ints(4, 4, 4, 4)


@dataclass
class TransMorphLargeConfig(TransMorphConfig):
    """TransMorph-Large: embed 128, depths (2, 2, 12, 2), heads (4, 4, 8, 16); 108,343,907."""

    embed_dim: int = 128
    depths: list[int] = _ints(2, 2, 12, 2)
    num_heads: list[int] = _ints(4, 4, 8, 16)


@dataclass
class TransMorphDiffConfig(_Training, _Network):
    """TransMorph-diff: half-resolution velocity mean and log-variance, 7 squarings; loss
    ``MSE / image_sigma**2`` + KL to a Laplacian-like prior (Dalca et al. 2019); 46,557,414
    parameters. ``downsample``: the decoder stops at half resolution, where the velocity is
    integrated (the official config's flag; false is TransMorph-diff-fullres)."""

    reg_head_chan: int = 16
    int_steps: int = 7
    image_sigma: float = 0.01
    prior_lambda: float = 10.0
    prior_lambda_mean: float = 10.0
    downsample: bool = True


@dataclass
class TransMorphDiffFullResConfig(TransMorphDiffConfig):
    """TransMorph-diff-fullres (official ``TransMorphDiff-Org-Res``, the network of the official
    IXI -diff training script): the full decoder (``up4``, ``c2``) and a velocity integrated at
    full resolution; 46,772,550 parameters."""

    downsample: bool = False


@dataclass
class TransMorphBSplineConfig(_Training, _Objective, _Network):
    """TransMorph-bspl: cubic B-spline velocity on control points every ``cps`` voxels
    (``cps`` null: 3 voxels on every axis), two 3x3 convolutions of ``resize_channels`` after
    resizing, 7 squarings; Grad-l2 on the velocity."""

    cps: Optional[list[int]] = None
    resize_channels: list[int] = _ints(32, 32)
    int_steps: int = 7


@dataclass
class TransMorphBayesConfig(TransMorphConfig):
    """TransMorph-Bayes: TransMorph with Monte-Carlo dropout (0.15) in the Swin blocks and on the
    convolutional skips, active at inference. ``bayes_select``: the field that ``sample`` returns,
    ``mean`` (the Monte-Carlo mean) or ``min_mse`` (the sample whose warped image is closest to
    the fixed one in MSE, the official evaluation scripts' choice)."""

    mc_drop: float = 0.15
    bayes_select: str = "mean"


@dataclass
class TransMorphAffineConfig(_Encoder):
    """TransMorph-affine (the official ``TransMorph_affine``): the Swin encoder of TransMorph on
    inputs resized to ``img_size``, then four MLP heads (rotation, scaling, translation, shear) of
    a 3D affine transform; 90,095,131 parameters. Objective: MSE (official). ``window_size``
    null: the encoder's last feature grid, ``img_size`` / 32 per axis ((5, 6, 7), as the official
    training script sets it)."""

    img_size: list[int] = _ints(160, 192, 224)
    similarity: dict[str, Any] = _loss(name="mse")


@dataclass
class Swin3dConfig:
    """TransMorph's Swin encoder (3D windows (5, 6, 7))."""

    ndim: int = 3
    in_channels: int = 2
    patch_size: int = 4
    embed_dim: int = 96
    depths: list[int] = _ints(2, 2, 4, 2)
    num_heads: list[int] = _ints(4, 4, 8, 8)
    window_size: list[int] = _ints(5, 6, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.3
    rpe: bool = True
    patch_norm: bool = True
    out_indices: list[int] = _ints(0, 1, 2, 3)
    use_checkpoint: bool = False
    mc_drop: float = 0.0


@dataclass
class Swin2dConfig(Swin3dConfig):
    """TransMorph's 2D Swin encoder (windows (8, 8), the official RaFD config)."""

    ndim: int = 2
    window_size: list[int] = _ints(8, 8)


# Run presets. "quick" (the default) is a CPU run of minutes on the embedded synthetic 3D pairs
# at 64^3 (velocity fields of up to 10 voxels std): no stochastic depth and Grad weight 0.1, which
# learn faster in a few hundred steps; "paper" is the official schedule: Adam with AMSGrad
# (Adamax for -diff-fullres, as the official IXI -diff script), lr 1e-4, polynomial decay (power
# 0.9), 500 epochs at batch size 1, the official loss weights (the builders' defaults); "test"
# sizes the network for regzoo.testing's conformance suite.
QUICK_DATA: dict[str, Any] = {"name": "synth", "ndim": 3, "size": [64, 64, 64], "deform_std": 10.0}


def presets(
    quick_steps: int,
    quick_lr: float,
    reg_weight: bool = True,
    paper_optimizer: Optional[dict[str, Any]] = None,
) -> dict[str, dict[str, Any]]:
    """The run presets of one model.

    Args:
        quick_steps, quick_lr: steps and learning rate of the ``quick`` preset.
        reg_weight: whether the model's objective has a ``reg_weight``.
        paper_optimizer: ``train`` settings of the official script that differ from Adam with
            AMSGrad (TransMorph-diff-fullres: Adamax).
    """
    quick_model: dict[str, Any] = {"drop_path_rate": 0.0}
    if reg_weight:
        quick_model["reg_weight"] = 0.1
    return {
        "quick": {
            "data": dict(QUICK_DATA),
            "model": quick_model,
            "train": {"steps": quick_steps, "lr": quick_lr, "amsgrad": True, "batch_size": 1},
        },
        "paper": {
            "data": {"name": "synth", "ndim": 3, "size": [160, 192, 224]},
            "train": {
                "steps": PAPER_STEPS,
                "lr": 1e-4,
                "optimizer": "adam",
                "amsgrad": True,
                "scheduler": "poly",
                "poly_power": 0.9,
                "batch_size": 1,
                **(paper_optimizer or {}),
            },
        },
        "test": {"model": {"embed_dim": 6, "num_heads": [2, 2, 4, 4]}},
    }


# TransMorph-affine. quick: synthetic 3D pairs at 64^3 related by a random affine, the network's
# input size 64^3 (windows (2, 2, 2)), no stochastic depth. paper: the official affine script,
# AdamW at lr 1e-4 with PyTorch's default weight decay 0.01, no schedule, 500 epochs at batch
# size 1 (of the IXI training set, as the other IXI scripts), MSE.
AFFINE_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "data": {**QUICK_DATA, "deformation": "affine"},
        "model": {"img_size": [64, 64, 64], "drop_path_rate": 0.0},
        "train": {
            "steps": 100,
            "lr": 1e-4,
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "batch_size": 1,
        },
    },
    "paper": {
        "data": {"name": "synth", "ndim": 3, "size": [160, 192, 224], "deformation": "affine"},
        "train": {
            "steps": PAPER_STEPS,
            "lr": 1e-4,
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "scheduler": "none",
            "batch_size": 1,
        },
    },
    "test": {
        "size": {"3d": [16, 16, 16]},
        "model": {"embed_dim": 6, "num_heads": [2, 2, 4, 4], "img_size": [32, 32, 64]},
    },
}
