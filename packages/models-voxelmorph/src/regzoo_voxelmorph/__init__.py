"""VoxelMorph for regzoo: the reference plugin.

Registers three models, each a config dataclass here (the one source of its defaults) and the
class :class:`regzoo_voxelmorph.model.VoxelMorph`, imported with torch when a model is built, so
importing this module is cheap:

- ``voxelmorph``: VoxelMorph-2 (Balakrishnan et al., IEEE TMI 2019), decoder
  ``[32, 32, 32, 32, 32, 16, 16]``; ``model.transformer=svf`` makes it diffeomorphic
  (the official ``VxmDense`` with ``int_steps=7, int_downsize=2``), ``model.bidir=true`` adds
  the inverse field and the official bidirectional cost, ``model.seg_weight=0.01`` the auxiliary
  Dice loss of semi-supervised VoxelMorph.
- ``voxelmorph-1``: the same network with the VoxelMorph-1 decoder ``[32, 32, 32, 32, 8, 8]``.
- ``voxelmorph-diff``: the probabilistic diffeomorphic variant (Dalca et al., MICCAI 2018).
- ``voxelmorph-lung``: VoxelMorph-2 on lung-masked inhale/exhale pairs with a lung-mask U-Net
  trained with Dice, evaluated by landmark TRE (the FCN chest-CT registration of the survey,
  built from VoxelMorph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from regzoo import Paper, register_model

__all__ = [
    "BALAKRISHNAN_2019",
    "DALCA_2018",
    "VoxelMorphConfig",
    "VoxelMorph1Config",
    "VoxelMorphDiffConfig",
    "VoxelMorphLungConfig",
]

BALAKRISHNAN_2019 = Paper(
    "Balakrishnan, Zhao, Sabuncu, Guttag, Dalca",
    "VoxelMorph: a learning framework for deformable medical image registration",
    "IEEE TMI 38(8):1788-1800",
    2019,
    "https://doi.org/10.1109/TMI.2019.2897538",
)
DALCA_2018 = Paper(
    "Dalca, Balakrishnan, Guttag, Sabuncu",
    "Unsupervised learning for fast probabilistic diffeomorphic registration",
    "MICCAI",
    2018,
    "https://doi.org/10.1007/978-3-030-00928-1_82",
)


@dataclass
class VoxelMorphConfig:
    """VoxelMorph-2 as in the TMI paper: LNCC (window 9) + 1.0 x Grad-l2, dense field, with the
    official scripts' Grad ``loss_mult=2`` and semi-supervised Dice at ``seg_resolution=2``.

    The defaults of :class:`~regzoo_voxelmorph.model.VoxelMorph` (see its arguments). Nullable
    fields: ``similarity``, ``regularizer`` or ``segmentation`` null: the objective has no such
    term; ``num_labels`` null: the classes of ``warped_label`` are those of the data's label
    table; ``mask_network`` null: no mask network.
    """

    ndim: int = 2
    in_channels: int = 1
    enc_features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 32, 16, 16])
    nb_conv_per_level: int = 1
    half_res: bool = False
    transformer: Any = "dense"
    probabilistic: bool = False
    bidir: bool = False
    similarity: Optional[dict[str, Any]] = field(default_factory=lambda: {"name": "lncc"})
    # the official scripts' Grad('l2', loss_mult=int_downsize), int_downsize 2 (dense models too)
    regularizer: Optional[dict[str, Any]] = field(
        default_factory=lambda: {"name": "grad", "penalty": "l2", "loss_mult": 2}
    )
    reg_weight: float = 1.0
    segmentation: Optional[dict[str, Any]] = field(default_factory=lambda: {"name": "dice"})
    seg_weight: float = 0.0
    seg_resolution: int = 2
    num_labels: Optional[int] = None
    prior_lambda: float = 10.0
    mask_inputs: bool = False
    mask_network: Optional[dict[str, Any]] = None
    mask_weight: float = 0.0


@dataclass
class VoxelMorph1Config(VoxelMorphConfig):
    """VoxelMorph-1: the narrower decoder."""

    dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 8, 8])


@dataclass
class VoxelMorphLungConfig(VoxelMorphConfig):
    """VoxelMorph-2 on lung-masked pairs: both images multiplied by their lung masks (from the
    data, else predicted), -LNCC(9) + 1.0 x Grad-l2 + 1.0 x (1 - Dice) of the warped moving mask
    and the fixed mask, and a separate lung-mask U-Net (VoxelMorph-2's widths, one sigmoid
    channel) trained with Dice on the data's masks."""

    mask_inputs: bool = True
    mask_network: Optional[dict[str, Any]] = field(
        default_factory=lambda: {
            "enc_features": [16, 32, 32, 32],
            "dec_features": [32, 32, 32, 32, 32, 16, 16],
        }
    )
    mask_weight: float = 1.0


@dataclass
class VoxelMorphDiffConfig(VoxelMorphConfig):
    """The MICCAI 2018 network: decoder ``[32, 32, 32, 32, 16]`` ending at half resolution, where
    the velocity mean and log variance are predicted and integrated (7 steps), then upsampled.
    ``regularizer`` is null: the KL prior (``prior_lambda``) is its only regulariser."""

    dec_features: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 16])
    half_res: bool = True
    transformer: Any = "svf"
    probabilistic: bool = True
    similarity: Optional[dict[str, Any]] = field(
        default_factory=lambda: {"name": "mse", "image_sigma": 0.02}
    )
    regularizer: Optional[dict[str, Any]] = None


def _paper_schedule(**model: Any) -> dict[str, Any]:
    # official scripts: Adam, lr 1e-4, batch 1, 1500 epochs x 100 steps
    preset: dict[str, Any] = {"train": {"steps": 150_000, "lr": 1e-4, "batch_size": 1}}
    if model:
        preset["model"] = model
    return preset


# A few CPU minutes on the embedded 2D synthetic pairs: with the default loss (LNCC + 1.0 x Grad
# with the official loss_mult 2) held-out Dice rises by 0.226 / 0.221 over the identity in 1500
# steps (train.seed 0 / 1).
_QUICK = {"train": {"steps": 1500, "lr": 1e-3, "batch_size": 4}}
_PAPER = _paper_schedule(similarity={"name": "lncc"}, reg_weight=1.0)


_TARGET = "regzoo_voxelmorph.model:VoxelMorph"

register_model(
    "voxelmorph",
    summary="VoxelMorph-2: U-Net on the image pair to a dense (or SVF) displacement field.",
    paper=BALAKRISHNAN_2019,
    tags=("2d", "3d", "unsupervised", "semi-supervised"),
    config=VoxelMorphConfig,
    target=_TARGET,
    presets={"quick": _QUICK, "paper": _PAPER},
)
register_model(
    "voxelmorph-1",
    summary="VoxelMorph-1: VoxelMorph with the narrower decoder [32, 32, 32, 32, 8, 8].",
    paper=BALAKRISHNAN_2019,
    tags=("2d", "3d", "unsupervised", "semi-supervised"),
    config=VoxelMorph1Config,
    target=_TARGET,
    presets={"quick": _QUICK, "paper": _PAPER},
)
# Dalca et al. MICCAI 2018, extended in Medical Image Analysis 57:226-236, 2019
# (doi:10.1016/j.media.2019.07.006).
register_model(
    "voxelmorph-diff",
    summary="Probabilistic diffeomorphic VoxelMorph: sampled SVF at half resolution, KL prior.",
    paper=DALCA_2018,
    tags=("2d", "3d", "unsupervised", "diffeomorphic", "probabilistic"),
    config=VoxelMorphDiffConfig,
    target=_TARGET,
    presets={
        "quick": {"train": {"steps": 600, "lr": 1e-3, "batch_size": 4}},
        "paper": _paper_schedule(),
    },
)
# The survey's FCN chest-CT registration (its authors could not be traced): VoxelMorph on
# lung-masked inhale/exhale CT, scored by landmark TRE as on DIR-Lab 4DCT. Quick: the embedded
# lung-like pairs (synth-lung: masks and landmarks from the true transform), registered unmasked:
# their anatomy outside the masks moves with the "lungs" (nothing slides), so masking the inputs
# only hides information there (README: TRE -31% masked, -41% unmasked after 1500 steps).
register_model(
    "voxelmorph-lung",
    summary="VoxelMorph-2 on lung-masked pairs with a Dice-trained lung-mask U-Net; TRE on "
    "landmarks (DIR-Lab files).",
    paper=BALAKRISHNAN_2019,
    tags=("2d", "3d", "unsupervised", "lung", "landmarks"),
    config=VoxelMorphLungConfig,
    target=_TARGET,
    presets={
        "quick": {
            "train": {"steps": 1500, "lr": 1e-3, "batch_size": 4},
            "data": {"name": "synth-lung"},
            "model": {"mask_inputs": False},
            "eval": {"metrics": ["tre", "dice", "folding"]},
        },
        "paper": {**_paper_schedule(), "eval": {"metrics": ["tre", "dice", "sdlogj", "folding"]}},
    },
)
