"""An example regzoo plugin: one small affine registration model, ``example-affine``.

regzoo imports this module through the entry point in ``pyproject.toml``
(``[project.entry-points."regzoo.plugins"] example = "regzoo_example"``); importing it registers
the model. An entry is two things: a config dataclass, the one source of the model's defaults
(every one shown, with its type, so that ``model.features=abc`` is a one-line error), and the
class that implements it, named as ``target`` and imported only when the model is built. Keep
this module free of torch: the registry lists entries without building them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regzoo import Paper, register_model

__all__ = ["ExampleAffineConfig"]


@dataclass
class ExampleAffineConfig:
    """Keyword arguments of :class:`regzoo_example.model.ExampleAffine`, with their defaults.

    ``ndim``: 2 or 3; ``in_channels``: channels of each image; ``features``: widths of the
    stride-2 convolutions of the encoder; ``similarity``: the image similarity loss config
    (global NCC).
    """

    ndim: int = 2
    in_channels: int = 1
    features: list[int] = field(default_factory=lambda: [8, 16, 32, 32])
    similarity: dict[str, Any] = field(default_factory=lambda: {"name": "ncc"})


register_model(
    "example-affine",
    summary="Example plugin: a small CNN predicting an affine transform (a template to copy).",
    paper=Paper(
        "Jaderberg, Simonyan, Zisserman, Kavukcuoglu",
        "Spatial transformer networks",
        "NeurIPS",
        2015,
        "https://arxiv.org/abs/1506.02025",
    ),
    tags=("2d", "3d", "affine", "unsupervised"),
    config=ExampleAffineConfig,
    target="regzoo_example.model:ExampleAffine",
    presets={
        # the default: a CPU run of a minute on the embedded synthetic data
        "quick": {
            "train": {"steps": 300, "lr": 1e-3, "batch_size": 4},
            "data": {"deformation": "affine"},
        },
        "paper": {"train": {"steps": 20_000, "lr": 1e-4, "batch_size": 8}},
    },
)
