"""regzoo plugin: TransMorph and its variants (Chen et al., Medical Image Analysis 82:102615, 2022).

Registers the models ``transmorph``, ``transmorph-tiny``, ``transmorph-small``,
``transmorph-large``, ``transmorph-diff``, ``transmorph-diff-fullres``, ``transmorph-bspl``,
``transmorph-bayes`` (2D and 3D), ``transmorph-affine`` (3D) and the backbones ``swin3d`` and ``swin2d``. Each entry is a config dataclass of :mod:`regzoo_transmorph.configs` (the one source of its
defaults) and a class of :mod:`regzoo_transmorph.models` or :mod:`regzoo_transmorph.swin`, imported
with torch when the entry is built, so importing this module is cheap.

Official checkpoints load with ``regzoo train/register/evaluate NAME --weights FILE`` or
:func:`regzoo_transmorph.checkpoint.load_official_checkpoint`.
"""

from __future__ import annotations

from regzoo import register_backbone, register_model

from .configs import (
    AFFINE_PRESETS,
    SWIN_2021,
    TRANSMORPH_2022,
    Swin2dConfig,
    Swin3dConfig,
    TransMorphAffineConfig,
    TransMorphBayesConfig,
    TransMorphBSplineConfig,
    TransMorphConfig,
    TransMorphDiffConfig,
    TransMorphDiffFullResConfig,
    TransMorphLargeConfig,
    TransMorphSmallConfig,
    TransMorphTinyConfig,
    presets,
)

__version__ = "0.1.0"

_MODELS = "regzoo_transmorph.models:"

for _name, _config, _size, _steps, _lr in (
    ("transmorph", TransMorphConfig, "46.8M parameters", 100, 1e-4),
    ("transmorph-tiny", TransMorphTinyConfig, "embed 6, 0.24M parameters", 300, 1e-3),
    ("transmorph-small", TransMorphSmallConfig, "embed 48, 11.8M parameters", 100, 1e-4),
    (
        "transmorph-large",
        TransMorphLargeConfig,
        "embed 128, depths 2-2-12-2, 108M parameters",
        100,
        1e-4,
    ),
):
    register_model(
        _name,
        summary=f"TransMorph: Swin Transformer encoder + conv decoder, dense field ({_size}).",
        paper=TRANSMORPH_2022,
        tags=("2d", "3d", "swin"),
        config=_config,
        target=_MODELS + "TransMorph",
        presets=presets(_steps, _lr),
    )

register_model(
    "transmorph-diff",
    summary="Probabilistic diffeomorphic TransMorph: half-resolution SVF mean/variance, KL prior.",
    paper=TRANSMORPH_2022,
    tags=("2d", "3d", "swin", "diffeomorphic", "probabilistic"),
    config=TransMorphDiffConfig,
    target=_MODELS + "TransMorphDiff",
    presets=presets(100, 1e-4, reg_weight=False),
)
register_model(
    "transmorph-diff-fullres",
    summary="TransMorph-diff with the full decoder and the SVF integrated at full resolution.",
    paper=TRANSMORPH_2022,
    tags=("2d", "3d", "swin", "diffeomorphic", "probabilistic"),
    config=TransMorphDiffFullResConfig,
    target=_MODELS + "TransMorphDiff",
    # The official IXI -diff script trains this network with Adamax (no weight decay).
    presets=presets(
        100, 1e-4, reg_weight=False, paper_optimizer={"optimizer": "adamax", "amsgrad": False}
    ),
)
register_model(
    "transmorph-bspl",
    summary="TransMorph with a cubic B-spline stationary velocity field (diffeomorphic).",
    paper=TRANSMORPH_2022,
    tags=("2d", "3d", "swin", "diffeomorphic", "bspline"),
    config=TransMorphBSplineConfig,
    target=_MODELS + "TransMorphBSpline",
    presets=presets(100, 1e-4),
)
register_model(
    "transmorph-bayes",
    summary="TransMorph with Monte-Carlo dropout: mean field and per-voxel uncertainty.",
    paper=TRANSMORPH_2022,
    tags=("2d", "3d", "swin", "uncertainty"),
    config=TransMorphBayesConfig,
    target=_MODELS + "TransMorphBayes",
    presets=presets(100, 1e-4),
)
register_model(
    "transmorph-affine",
    summary="TransMorph-affine: Swin encoder + MLP heads for rotation, scaling, translation, shear.",
    paper=TRANSMORPH_2022,
    tags=("3d", "swin", "affine"),
    config=TransMorphAffineConfig,
    target="regzoo_transmorph.affine:TransMorphAffine",
    presets=AFFINE_PRESETS,
)
register_backbone(
    "swin3d",
    summary="TransMorph's 3D Swin encoder: shifted (5, 6, 7) windows, one feature map per stage.",
    paper=SWIN_2021,
    tags=("3d",),
    config=Swin3dConfig,
    target="regzoo_transmorph.swin:SwinEncoder",
)
register_backbone(
    "swin2d",
    summary="TransMorph's 2D Swin encoder: shifted (8, 8) windows, one feature map per stage.",
    paper=SWIN_2021,
    tags=("2d",),
    config=Swin2dConfig,
    target="regzoo_transmorph.swin:SwinEncoder",
)
