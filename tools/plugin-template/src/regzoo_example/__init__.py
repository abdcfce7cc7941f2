"""An example regzoo plugin: one small affine registration model, ``example-affine``.

regzoo imports this module through the entry point in ``pyproject.toml``
(``[project.entry-points."regzoo.plugins"] example = "regzoo_example"``); importing it registers
the model. Keep this import cheap: the registry lists entries without building them, so torch and
the network code are imported inside the builder.
"""

from __future__ import annotations

from typing import Any

from regzoo import Paper, register_model

__all__ = ["example_affine"]


@register_model(
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
    presets={
        # the default: a CPU run of a minute on the embedded synthetic data
        "quick": {
            "train": {"steps": 300, "lr": 1e-3, "batch_size": 4},
            "data": {"deformation": "affine"},
        },
        "paper": {"train": {"steps": 20_000, "lr": 1e-4, "batch_size": 8}},
    },
)
def example_affine(
    ndim: int = 2,
    in_channels: int = 1,
    features: tuple[int, ...] = (8, 16, 32, 32),
    similarity: dict[str, Any] | None = None,
) -> Any:
    """A small affine registration network; see :class:`regzoo_example.model.ExampleAffine`.

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image.
        features: widths of the stride-2 convolutions of the encoder.
        similarity: image similarity loss config (default ``{"name": "ncc"}``, global NCC).
    """
    from .model import ExampleAffine

    return ExampleAffine(ndim, in_channels, features, similarity or {"name": "ncc"})
