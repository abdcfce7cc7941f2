"""The registration-only baseline JSSR is compared with: its register Phi trained with MI.

The same backbone and transformer as JSSR's Phi (:class:`~regzoo_jssr.networks.Register`), fed
the raw multimodal pair ``(x, y)`` and trained with core's ``RegistrationLoss``:
``-MI(x o tau, y) + smooth_weight ||grad tau||^2`` (Parzen-window mutual information), the usual choice for deformable multimodal
registration without synthesis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from regzoo.models import Batch, RegistrationLoss, RegistrationModel, RegistrationOutput
from regzoo.spatial import warp

from . import MIBaselineConfig
from .networks import Register

__all__ = ["MIRegistration"]

# The registered entry's config is the one source of the defaults.
_DEFAULTS = MIBaselineConfig()


class MIRegistration(RegistrationModel):
    """Phi alone with mutual information: ``(x, y) -> tau``.

    Args:
        ndim: spatial dimensions.
        in_channels: image channels.
        backbone: registry config of Phi's backbone.
        transformer: registry config of Phi's transformer.
        similarity: registry config of the similarity (``{"name": "mi"}``).
        smooth_weight: weight of the ``grad`` (l2) regulariser.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        backbone: Mapping[str, Any] = _DEFAULTS.backbone,
        transformer: Mapping[str, Any] = _DEFAULTS.transformer,
        similarity: Mapping[str, Any] = _DEFAULTS.similarity,
        smooth_weight: float = _DEFAULTS.smooth_weight,
    ) -> None:
        super().__init__()
        self.register_net = Register(ndim, in_channels, backbone, transformer)
        self.objective_terms = RegistrationLoss(
            similarity=similarity,
            regularizer={"name": "grad", "penalty": "l2"},
            reg_weight=smooth_weight,
        )

    def forward(self, batch: Batch) -> RegistrationOutput:
        x, y = batch["moving"], batch["fixed"]
        field = self.register_net(x, y)
        out = RegistrationOutput(
            warped=warp(x, field["ddf"]), ddf=field["ddf"], velocity=field.get("velocity")
        )
        out.warped_label = self.warp_moving_labels(batch, out.ddf)
        return out

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        return self.objective_terms(batch, out)
