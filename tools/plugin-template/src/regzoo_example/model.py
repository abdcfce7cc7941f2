"""The network of ``example-affine``: what a regzoo model is made of.

A model subclasses :class:`regzoo.models.RegistrationModel`, returns a
:class:`regzoo.models.RegistrationOutput` from ``forward(batch)`` and its loss terms from
``loss(batch, out)``. Everything else (devices, optimisers, checkpoints, evaluation, the CLI) is
the engine's. Parts come from the registry: blocks from :mod:`regzoo.nn`, the ``affine`` spatial
transformer and the similarity loss by their registered names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regzoo import build
from regzoo.models import Batch, RegistrationLoss, RegistrationModel, RegistrationOutput
from regzoo.nn import ConvBlock
from regzoo.spatial import warp

from . import ExampleAffineConfig

__all__ = ["ExampleAffine"]

# The registered entry's config is the one source of the defaults: the class built directly is
# the registered model.
_DEFAULTS = ExampleAffineConfig()


class ExampleAffine(RegistrationModel):
    """Strided convolutions on ``concat(moving, fixed)``, global average pooling and a linear head
    that predicts ``[A | b]`` as the identity plus a correction (zero at initialisation, so an
    untrained model is the identity transform).

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image.
        features: widths of the stride-2 :class:`~regzoo.nn.ConvBlock` layers.
        similarity: image similarity loss config, e.g. ``{"name": "ncc"}``.

    Shapes: ``moving``/``fixed`` ``(B, C, *S)``; ``affine`` ``(B, ndim, ndim + 1)`` on centred voxel
    coordinates; ``ddf`` ``(B, ndim, *S)`` in voxels.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        features: Sequence[int] = _DEFAULTS.features,
        similarity: Mapping[str, Any] = _DEFAULTS.similarity,
    ) -> None:
        super().__init__()
        self.ndim = ndim
        layers, prev = [], 2 * in_channels
        for nf in features:
            layers.append(ConvBlock(ndim, prev, nf, stride=2))
            prev = nf
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(prev, ndim * (ndim + 1))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("identity", torch.eye(ndim, ndim + 1), persistent=False)
        self.transformer = build("transformer", "affine")
        self.objective_terms = RegistrationLoss(similarity=similarity)

    def forward(self, batch: Batch) -> RegistrationOutput:
        moving, fixed = batch["moving"], batch["fixed"]
        features = self.encoder(torch.cat([moving, fixed], dim=1)).flatten(2).mean(-1)
        theta = self.identity + self.head(features).view(-1, self.ndim, self.ndim + 1)
        ddf = self.transformer(theta, moving.shape[2:])["ddf"]
        return RegistrationOutput(warped=warp(moving, ddf), ddf=ddf, affine=theta)

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        return self.objective_terms(batch, out)
