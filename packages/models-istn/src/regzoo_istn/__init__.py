"""regzoo plugin: Image-and-Spatial Transformer Networks (ISTN) and their STN baselines.

Lee, Oktay, Schuh, Schaap, Glocker, "Image-and-Spatial Transformer Networks for Structure-Guided
Image Registration", MICCAI 2019 (arXiv:1907.09200); official code ``biomedia-mira/istn``.

Eight registered models, all configs of one :class:`regzoo_istn.model.ISTN` (the paper defines them
as the same networks trained with different losses): ``istn-e-*`` / ``istn-i-*`` (explicit /
implicit ITN training), ``stn-u-*`` (image similarity only) and ``stn-s-*`` (structure supervised),
each with an ``affine`` or a ``bspline`` STN. :class:`ISTNConfig` here is the one source of the
defaults; the class is imported with torch when a model is built, so importing this module is
cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from regzoo.registry import Paper, register_model

__all__ = ["ISTN_2019", "ISTNConfig", "MODELS", "import_official"]

ISTN_2019 = Paper(
    "Lee, Oktay, Schuh, Schaap, Glocker",
    "Image-and-Spatial Transformer Networks for Structure-Guided Image Registration",
    "MICCAI",
    2019,
    "https://arxiv.org/abs/1907.09200",
)


@dataclass
class ISTNConfig:
    """Keyword arguments of :class:`regzoo_istn.model.ISTN` with the paper's defaults.

    ``size`` null: the paper's size (128 in 2D, 64 in 3D); otherwise an int or one per axis.
    """

    ndim: int = 2
    in_channels: int = 1
    variant: str = "e"
    transformer: str = "affine"
    size: Any = None
    spacing: int = 10
    max_displacement: float = 0.2
    max_translation: float = 0.1
    structure: str = "auto"
    structure_labels: list[int] = field(default_factory=list)
    heatmap_sigma: float = 2.0
    num_labels: int = 0
    itn_activation: str = "leaky_relu"


def import_official(*args: Any, **kwargs: Any) -> Any:
    """See :func:`regzoo_istn.model.import_official` (imported lazily)."""
    from .model import import_official as _import

    return _import(*args, **kwargs)


# Run presets. quick: a CPU run of a few minutes on synthetic 2D 64² pairs related by a random
# affine (translation up to 10% of the size, hence the STN's translation bound of 0.2 normalised
# units), the structure of interest being label classes 1 and 2 of label maps drawn at Perlin
# scales 12 and 24 (larger than the dataset default 4, 8); see tests/test_training.py.
# paper: the official synth2d schedule, Adam lr 1e-3, batch 10, 100 epochs of its 100 pairs.
_QUICK = {
    "train": {"steps": 1200, "lr": 1e-3, "batch_size": 10, "optimizer": "adam", "val_every": 400},
    "data": {
        "name": "synth",
        "ndim": 2,
        "size": 64,
        "deformation": "affine",
        "label_scales": [12, 24],
    },
    "model": {"size": 64, "structure_labels": [1, 2], "max_translation": 0.2},
}
# The conformance suite's inputs: the STN trunk needs 36 voxels per axis, the ITN a multiple of 4.
_TEST = {"size": {"2d": [40, 40], "3d": [40, 40, 40]}, "model": {"size": 40}}
_PAPER_2D = {
    "train": {"steps": 1000, "lr": 1e-3, "batch_size": 10, "optimizer": "adam"},
    "data": {"ndim": 2, "size": 128},
    "model": {"ndim": 2, "size": 128},
}


def _paper_3d(transformer: str) -> dict[str, Any]:
    # Official brain3d configs: 400 epochs, batch 10, lr 1e-3 (affine) / 5e-4 (B-spline), 64³ at
    # 3 mm. Steps assume 100 training pairs (10 batches an epoch); scale train.steps to your data.
    return {
        "train": {"steps": 4000, "lr": 1e-3 if transformer == "affine" else 5e-4, "batch_size": 10},
        "data": {"ndim": 3, "size": 64},
        "model": {"ndim": 3, "size": 64},
    }


_VARIANTS = {
    "istn-e": (
        "e",
        "ISTN-e: ITN trained explicitly towards the structure maps, then {t} STN",
        "joint-seg",
    ),
    "istn-i": (
        "i",
        "ISTN-i: ITN trained implicitly through the {t} STN's structure losses",
        "joint-seg",
    ),
    "stn-u": ("u", "STN-u baseline: {t} STN trained on image MSE alone", None),
    "stn-s": ("s", "STN-s baseline: {t} STN supervised by the structure maps", None),
}
_TRANSFORMERS = {"affine": "affine", "bspline": "B-spline"}

MODELS: list[str] = []

for _prefix, (_variant, _summary, _tag) in _VARIANTS.items():
    for _transformer, _words in _TRANSFORMERS.items():
        _name = f"{_prefix}-{_transformer}"
        _config = dataclasses.make_dataclass(
            "".join(p.capitalize() for p in _name.split("-")) + "Config",
            [
                ("variant", str, field(default=_variant)),
                ("transformer", str, field(default=_transformer)),
            ],
            bases=(ISTNConfig,),
        )
        _tags = ("2d", "3d", _transformer) + ((_tag,) if _tag else ()) + ("structure-guided",)
        register_model(
            _name,
            summary=_summary.format(t=_words) + ".",
            paper=ISTN_2019,
            tags=_tags,
            config=_config,
            target="regzoo_istn.model:ISTN",
            presets={
                "quick": _QUICK,
                "paper": _PAPER_2D,
                "paper-3d": _paper_3d(_transformer),
                "test": _TEST,
            },
        )
        MODELS.append(_name)
