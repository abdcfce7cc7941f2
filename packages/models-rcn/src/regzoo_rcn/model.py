"""Recursive Cascaded Networks, built from the affine stem, VTN or any registered backbone.

Zhao, Dong, Chang, Xu, "Recursive Cascaded Networks for Unsupervised Medical Image Registration",
ICCV 2019 (doi:10.1109/ICCV.2019.01070); official code ``microsoft/Recursive-Cascaded-Networks``.

The affine stem (optional) registers the pair first. Each deformable cascade then receives the
fixed image and the moving image warped by the aggregated field so far, and predicts a field
``u_k``; the aggregate is updated as ``compose(agg, u_k) = u_k + warp(agg, u_k)`` after a
deformable stage and, after the affine stem, exactly as ``A u_k + (A - I) x + b`` (the official
code's form; interpolating the affine field would be exact too, except outside the image where
warping pads with zeros). Every stage warps the *original* moving image once by its aggregate,
and the output is the last one. Gradients flow through the warps (the official
``warp_gradient=True``).

Objective (official): ``similarity(final warp, fixed)`` (global NCC, ``1 - Pearson r``) +
``reg_weight * regularizer(u_k)`` for every deformable cascade + ``det_weight * det`` +
``ortho_weight * ortho`` on the affine matrix (:func:`regzoo_rcn.networks.affine_regularizers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError
from regzoo.models import Batch, RegistrationModel, RegistrationOutput
from regzoo.nn import field_head
from regzoo.spatial import affine_to_ddf, compose, warp

from . import RCNConfig
from .networks import VTN, AffineStem, affine_regularizers

__all__ = ["RCN", "DeformableCascade"]

# The registered entry's config is the one source of the defaults below.
_DEFAULTS = RCNConfig()


class DeformableCascade(nn.Module):
    """One deformable cascade: ``(fixed, moving) -> u`` ``(B, ndim, *S)`` in voxels.

    ``base`` ``{"name": "vtn", "channels": c}`` is RCN's VTN (its flow already times
    ``20 * flow_multiplier``); any other name is a registered backbone on ``concat(fixed, moving)``
    with a 3x3(x3) flow head (weights N(0, 1e-5), bias 0, as the official VoxelMorph base) whose
    output is multiplied by ``flow_multiplier``.
    """

    def __init__(
        self, ndim: int, in_channels: int, base: Mapping[str, Any], flow_multiplier: float
    ) -> None:
        super().__init__()
        base = dict(base)
        name = base.pop("name", None)
        self.flow_multiplier = float(flow_multiplier)
        if name == "vtn":
            unknown = set(base) - {"channels"}
            if unknown:
                raise ConfigError(f"rcn: model.base for vtn takes only 'channels', got {unknown}")
            self.net = VTN(ndim, in_channels, int(base.get("channels", 16)), flow_multiplier)
            self.head = None
        elif isinstance(name, str):
            config = {"name": name, **base, "ndim": ndim, "in_channels": 2 * in_channels}
            self.net = build("backbone", config)
            self.head = field_head(ndim, self.net.out_channels)
        else:
            raise ConfigError(f"rcn: model.base needs a 'name' ('vtn' or a backbone), got {name!r}")

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``fixed``, ``moving`` ``(B, C, *S)`` -> flow ``(B, ndim, *S)``."""
        if self.head is None:
            return self.net(fixed, moving)
        features = self.net(torch.cat([fixed, moving], dim=1))
        return self.head(features) * self.flow_multiplier


class RCN(RegistrationModel):
    """Recursive cascaded networks (and, with one cascade, the affine + deformable pipeline).

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels: channels of each image.
        n_cascades: deformable cascades trained (official ``-n``; 0: the affine stem alone).
        rep: shared-weight cascading (official ``-r``): each cascade is applied ``rep`` times in a
            row, each application registered and regularised like a cascade of its own; set it
            at evaluation (``model.rep=2``) to run a trained model deeper.
        affine: put the affine stem first (official: always).
        size: the image size the affine stem is built for, an int for every axis or one per axis.
        affine_channels: base width of the affine stem (official 16).
        base: the deformable cascades' network: ``{"name": "vtn", "channels": 16}`` or a
            registered backbone config (``{"name": "vxm-unet"}``, with its own options).
        similarity: registered loss on ``(final warp, fixed)`` (official: global ``ncc``).
        regularizer: registered loss on each cascade's own field; ``None``: no such term.
            Official: ``sum((du)^2) / 2 / (N * ndim)`` per axis summed, which is Grad-l2 times
            ``ndim / 2`` (``loss_mult`` 1 in 2D, 1.5 in 3D).
        reg_weight, det_weight, ortho_weight: weights of the terms (official 1, 0.1, 0.1).
        num_labels: classes of ``warped_label``; ``None``: the data's label table.

    The flows of the deformable cascades are scaled by ``1 / n_cascades`` (official
    ``flow_multiplier``), on top of VTN's fixed 20.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        n_cascades: int = _DEFAULTS.n_cascades,
        rep: int = _DEFAULTS.rep,
        affine: bool = _DEFAULTS.affine,
        size: int | Sequence[int] = _DEFAULTS.size,
        affine_channels: int = _DEFAULTS.affine_channels,
        base: Mapping[str, Any] = _DEFAULTS.base,
        similarity: Mapping[str, Any] = _DEFAULTS.similarity,
        regularizer: Mapping[str, Any] | None = _DEFAULTS.regularizer,
        reg_weight: float = _DEFAULTS.reg_weight,
        det_weight: float = _DEFAULTS.det_weight,
        ortho_weight: float = _DEFAULTS.ortho_weight,
        num_labels: int | None = _DEFAULTS.num_labels,
    ) -> None:
        super().__init__()
        if n_cascades < 0 or (n_cascades == 0 and not affine):
            raise ConfigError(
                f"rcn: model.n_cascades must be >= 1 (>= 0 with the affine stem), got {n_cascades}"
            )
        if rep < 1:
            raise ConfigError(f"rcn: model.rep must be >= 1, got {rep}")
        self.ndim = ndim
        self.rep = int(rep)
        self.num_labels = num_labels
        self.det_weight = det_weight
        self.ortho_weight = ortho_weight
        self.reg_weight = reg_weight
        sizes = [int(size)] * ndim if isinstance(size, int) else [int(s) for s in size]
        if len(sizes) != ndim:
            raise ConfigError(f"rcn: model.size must be an int or {ndim} ints, got {size}")
        self.affine_stem = AffineStem(ndim, in_channels, sizes, affine_channels) if affine else None
        self.cascades = nn.ModuleList(
            DeformableCascade(ndim, in_channels, base, 1.0 / max(n_cascades, 1))
            for _ in range(n_cascades)
        )
        self.similarity = build("loss", dict(similarity))
        self.regularizer = build("loss", dict(regularizer)) if regularizer else None

    def _stages(
        self, batch: Batch
    ) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Run every stage: the affine matrix (or ``None``), each deformable application's own
        flow, the aggregated field after each stage, and the final warped image."""
        fixed, moving = batch["fixed"], batch["moving"]
        shape = moving.shape[2:]
        theta, agg, warped = None, None, moving
        flows: list[torch.Tensor] = []
        aggregates: list[torch.Tensor] = []
        if self.affine_stem is not None:
            theta = self.affine_stem(fixed, moving)
            agg = affine_to_ddf(theta, shape)
            warped = warp(moving, agg)
            aggregates.append(agg)
        for cascade in self.cascades:
            for _ in range(self.rep):
                flow = cascade(fixed, warped)
                flows.append(flow)
                if agg is None:
                    agg = flow
                elif len(aggregates) == 1 and theta is not None:
                    matrix = theta[:, :, : self.ndim]
                    agg = torch.einsum("bij,bj...->bi...", matrix, flow) + agg
                else:
                    agg = compose(agg, flow)
                warped = warp(moving, agg)
                aggregates.append(agg)
        return theta, flows, aggregates, warped

    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` -> the composed ``ddf`` ``(B, ndim, *S)``, the
        original moving image warped once by it, the affine matrix ``(B, ndim, ndim + 1)`` (with
        the stem), ``warped_label`` (with ``moving_label``) and each deformable application's
        own field in ``extras["flow_<k>"]`` (k from 0)."""
        theta, flows, aggregates, warped = self._stages(batch)
        ddf = aggregates[-1]
        return RegistrationOutput(
            warped=warped,
            ddf=ddf,
            affine=theta,
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels),
            extras={f"flow_{k}": flow for k, flow in enumerate(flows)},
        )

    def trajectory(self, batch: Batch) -> list[torch.Tensor]:
        """The aggregated field after the affine stem and after each cascade application."""
        return self._stages(batch)[2]

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """``similarity`` (final warp vs fixed), ``regularizer`` (summed over the cascades'
        own fields), ``det`` and ``ortho`` (with the affine stem); ``"loss"`` is the weighted
        total."""
        terms = {"similarity": self.similarity(out.warped, batch["fixed"])}
        total = terms["similarity"]
        flows = [out.extras[k] for k in out.extras if k.startswith("flow_")]
        if self.regularizer is not None and flows:
            terms["regularizer"] = sum(self.regularizer(flow) for flow in flows)
            total = total + self.reg_weight * terms["regularizer"]
        if out.affine is not None:
            terms["det"], terms["ortho"] = affine_regularizers(out.affine[:, :, : self.ndim])
            total = total + self.det_weight * terms["det"] + self.ortho_weight * terms["ortho"]
        terms["loss"] = total
        return terms
