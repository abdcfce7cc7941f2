"""The one output type every model returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RegistrationOutput", "BATCH_IMAGE_KEYS", "BATCH_LABEL_KEYS"]

BATCH_IMAGE_KEYS = ("moving", "fixed")
BATCH_LABEL_KEYS = ("moving_label", "fixed_label")


@dataclass
class RegistrationOutput:
    """What a model computed for a batch. Shapes use ``S`` for the spatial size.

    Attributes:
        warped: moving image warped to the fixed one, ``(B, C, *S)``.
        ddf: displacement (voxels) with ``warped[x] = moving[x + ddf[x]]``, ``(B, ndim, *S)``.
        velocity: stationary velocity before integration (possibly at lower resolution).
        affine: ``(B, ndim, ndim + 1)`` matrix on centred voxel coordinates.
        warped_label: moving labels warped linearly as one-hot probabilities, ``(B, K, *S)``.
        moving_seg, fixed_seg: segmentation logits of the moving / fixed image, ``(B, K, *S)``.
        synthesized: an image synthesised in the fixed image's modality, ``(B, C, *S)``.
        uncertainty: per-voxel uncertainty (e.g. variance over Monte-Carlo samples), ``(B, 1, *S)``.
        extras: method-specific tensors (e.g. ``flow_mean`` / ``flow_log_sigma``, ``itn_moving``).
    """

    warped: torch.Tensor
    ddf: torch.Tensor
    velocity: torch.Tensor | None = None
    affine: torch.Tensor | None = None
    warped_label: torch.Tensor | None = None
    moving_seg: torch.Tensor | None = None
    fixed_seg: torch.Tensor | None = None
    synthesized: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-empty tensors by name (extras included)."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extras" and getattr(self, f.name) is not None
        }
        out.update(self.extras)
        return out

    def apply(self, fn: Any) -> RegistrationOutput:
        """A copy with ``fn`` applied to every tensor (``detach``, ``cpu``, ...)."""
        kwargs = {
            f.name: (fn(v) if isinstance(v, torch.Tensor) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
            if f.name != "extras"
        }
        return RegistrationOutput(**kwargs, extras={k: fn(v) for k, v in self.extras.items()})
