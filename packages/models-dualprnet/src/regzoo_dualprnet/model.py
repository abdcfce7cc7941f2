"""Dual-PRNet and Dual-PRNet++: dual-stream pyramid registration.

Hu, Kang, Huang, Scott, Wiest, Reyes, "Dual-Stream Pyramid Registration Network", MICCAI 2019;
Kang, Hu, Huang, Scott, Reyes, "Dual-stream pyramid registration network", Medical Image Analysis
78:102379, 2022. One network with shared weights turns the moving and the fixed image (stacked on
the batch axis) into feature pyramids; coarse to fine, the previous field is upsampled x2, warps
the moving features (without gradient through the field), a head predicts a residual field from
the two streams, and the residual is composed with the previous field. The field of the finest
level is upsampled to the image when that level is coarser (the MICCAI network's 1/2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError
from regzoo.models import RegistrationModel, RegistrationOutput
from regzoo.nn import conv_nd
from regzoo.spatial import compose, resize_field, warp

from . import DualPRNetConfig
from .networks import CorrelationHead, RefinePyramid, VoxNet, VoxResNet

__all__ = ["DualPRNet"]

_DEFAULTS = DualPRNetConfig()
_BACKBONES = {"resnet": VoxResNet, "voxnet": VoxNet}
_HEADS = ("conv", "correlation")


def _to_size(ddf: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``ddf`` of a level resampled to the next finer level's ``size`` (or the image's): consecutive
    sizes differ by one stride-2 convolution, so the values double."""
    if tuple(ddf.shape[2:]) == tuple(size):
        return ddf
    return resize_field(ddf, size=size, factor=2.0)


class DualPRNet(RegistrationModel):
    """The dual-stream pyramid registration network (see the module docstring).

    Args (defaults: :class:`regzoo_dualprnet.DualPRNetConfig`, the MICCAI 2019 network):
        ndim: 2 or 3 (the papers' networks are 3D; 2D uses the same layers in 2D).
        in_channels: channels of each image.
        backbone: ``"resnet"`` (``VoxResNet``) or ``"voxnet"`` (``VoxNet``).
        channels: the backbone's widths, finest first (4 for resnet, 5 for voxnet).
        fpn_dim: width of the pyramid refinement; None: no refinement.
        head: ``"conv"`` (one 3x3 convolution per level) or ``"correlation"`` (Dual-PRNet++).
        pyramid_levels: number of finest levels that predict a field; None: all.
        similarity: loss config of the warped moving against the fixed image.
        regularizer: loss config applied to each level's residual field.
        reg_weight: weight of the summed regulariser terms.
        padding: ``"border"`` or ``"zeros"``, sampling outside the image.

    Inputs: ``moving`` and ``fixed`` ``(B, C, *S)``; sizes that are multiples of 16 per axis
    reproduce the official network, which takes no other (each upsampling here goes to the size of
    the finer level, so other sizes run too).
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        backbone: str = _DEFAULTS.backbone,
        channels: list[int] = _DEFAULTS.channels,
        fpn_dim: Optional[int] = _DEFAULTS.fpn_dim,
        head: str = _DEFAULTS.head,
        pyramid_levels: Optional[int] = _DEFAULTS.pyramid_levels,
        similarity: dict[str, Any] = _DEFAULTS.similarity,
        regularizer: dict[str, Any] = _DEFAULTS.regularizer,
        reg_weight: float = _DEFAULTS.reg_weight,
        padding: str = _DEFAULTS.padding,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ConfigError(f"model.ndim must be 2 or 3, got {ndim}")
        if backbone not in _BACKBONES:
            raise ConfigError(
                f"model.backbone must be one of {sorted(_BACKBONES)}, got {backbone!r}"
            )
        if head not in _HEADS:
            raise ConfigError(f"model.head must be one of {_HEADS}, got {head!r}")
        if padding not in ("border", "zeros"):
            raise ConfigError(f"model.padding must be 'border' or 'zeros', got {padding!r}")
        self.ndim, self.padding = ndim, padding
        network = _BACKBONES[backbone](ndim, in_channels, channels)
        self.pyramid = network if fpn_dim is None else RefinePyramid(network, ndim, fpn_dim)
        widths = self.pyramid.out_channels
        levels = len(widths) if pyramid_levels is None else pyramid_levels
        if not 1 <= levels <= len(widths):
            raise ConfigError(
                f"model.pyramid_levels must be in 1..{len(widths)}, got {pyramid_levels}"
            )
        self.levels = levels
        # offset[i]: the field head of the i-th level from the coarsest one used
        coarse_to_fine = list(reversed(widths[:levels]))
        if head == "conv":
            self.offset = nn.ModuleList(
                conv_nd(ndim)(2 * c, ndim, 3, padding=1) for c in coarse_to_fine
            )
        else:
            self.offset = nn.ModuleList(CorrelationHead(ndim, c) for c in coarse_to_fine)
        self.head = head
        for layer in self.offset:  # start near the identity (the official code keeps torch's init)
            last = layer if head == "conv" else layer.offset_layer
            nn.init.normal_(last.weight, std=1e-5)
            nn.init.zeros_(last.bias)
        self.similarity = build("loss", similarity)
        self.regularizer = build("loss", regularizer)
        self.reg_weight = reg_weight

    def _residual(self, lvl: int, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Level ``lvl``'s residual field ``(B, ndim, *S_l)`` in that level's voxels, channel i
        along axis i (the heads, as the official ones, give the last axis first)."""
        if self.head == "conv":
            out = self.offset[lvl](torch.cat([moving, fixed], 1))
        else:
            out = self.offset[lvl](moving, fixed)
        return out.flip(1)

    def fields(self, moving: torch.Tensor, fixed: torch.Tensor) -> list[torch.Tensor]:
        """The residual fields of the levels used, coarsest first ``(B, ndim, *S_l)``, and last
        the composed field at the image size ``(B, ndim, *S)`` (voxels)."""
        batch = moving.shape[0]
        features = self.pyramid(torch.cat([moving, fixed], 0))[: self.levels]
        residuals: list[torch.Tensor] = []
        flow: torch.Tensor | None = None
        for lvl, feature in enumerate(reversed(features)):
            f_moving, f_fixed = feature[:batch], feature[batch:]
            if flow is not None:
                flow = _to_size(flow, feature.shape[2:])
                f_moving = warp(f_moving, flow.detach(), padding=self.padding)
            delta = self._residual(lvl, f_moving, f_fixed)
            residuals.append(delta)
            flow = delta if flow is None else compose(flow, delta, padding=self.padding)
        assert flow is not None
        return [*residuals, _to_size(flow, moving.shape[2:])]

    def forward(self, batch: Mapping[str, Any]) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` -> ``warped`` ``(B, C, *S)``, ``ddf``
        ``(B, ndim, *S)`` and ``extras["residual_<l>"]`` (level ``l`` from the coarsest)."""
        moving, fixed = batch["moving"], batch["fixed"]
        *residuals, ddf = self.fields(moving, fixed)
        warped = warp(moving, ddf, padding=self.padding)
        extras = {f"residual_{i}": r for i, r in enumerate(residuals)}
        return RegistrationOutput(warped=warped, ddf=ddf, extras=extras)

    def loss(self, batch: Mapping[str, Any], out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """Similarity of ``warped`` and ``fixed`` plus ``reg_weight`` times the sum over levels of
        the regulariser on each residual field (the official ``loss_fn``)."""
        similarity = self.similarity(out.warped, batch["fixed"])
        residuals = [v for k, v in out.extras.items() if k.startswith("residual_")]
        regularizer = sum(self.regularizer(r) for r in residuals)
        loss = similarity + self.reg_weight * regularizer
        return {"similarity": similarity, "regularizer": regularizer, "loss": loss}

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict of this class or of the authors' ``CascadeMorphNet3d`` (with
        ``RefinePyramid``) or ``CascadeFusionNet3d`` (names are the same; the official networks
        are wrapped in ``module.`` by DistributedDataParallel, which is removed)."""
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.load_state_dict(state, strict=True)
