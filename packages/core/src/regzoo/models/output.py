"""The batch keys a model reads and the one output type every model returns.

docs/conventions.md describes both; :func:`contract_problem` is the check the engine runs on a
model's first output and the conformance suite (:mod:`regzoo.testing`) on every forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "RegistrationOutput",
    "BATCH_KEYS",
    "BATCH_IMAGE_KEYS",
    "BATCH_LABEL_KEYS",
    "contract_problem",
]

#: Every key a batch may hold, with its shape (``S`` the spatial size, ``C`` channels, ``N``
#: landmarks). Only ``moving`` and ``fixed`` are always present.
BATCH_KEYS: dict[str, str] = {
    "moving": "(B, C, *S) float32 image to move; C >= 1 (multi-contrast inputs)",
    "fixed": "(B, C, *S) float32 image to align to",
    "moving_label": "(B, 1, *S) int64 label map of the moving image",
    "fixed_label": "(B, 1, *S) int64 label map of the fixed image",
    "moving_labelled": "(B,) bool, False where moving_label is a placeholder (no label map)",
    "fixed_labelled": "(B,) bool, False where fixed_label is a placeholder (no label map)",
    "moving_mask": "(B, 1, *S) bool region of the moving image to use (True: inside)",
    "fixed_mask": "(B, 1, *S) bool region of the fixed image to use (True: inside)",
    "moving_landmarks": "(B, N, ndim) float32 voxel coordinates in the moving image",
    "fixed_landmarks": "(B, N, ndim) float32 corresponding voxel coordinates in the fixed image",
    "spacing": "(B, ndim) float32 mm per voxel along each spatial axis",
    "true_ddf": "(B, ndim, *S) float32 true displacement, fixed grid to moving (synthetic data)",
    "true_affine": "(B, ndim, ndim + 1) float32 true affine part of it, centred voxel coordinates",
}
BATCH_IMAGE_KEYS = ("moving", "fixed")
#: What instance optimisation and :meth:`RegistrationModel.objective` remove: supervision
#: (label maps and the synthetic data's true transforms).
BATCH_LABEL_KEYS = (
    "moving_label",
    "fixed_label",
    "moving_labelled",
    "fixed_labelled",
    "true_ddf",
    "true_affine",
)


@dataclass
class RegistrationOutput:
    """What a model computed for a batch. Shapes use ``S`` for the spatial size.

    Attributes:
        warped: moving image warped to the fixed one, ``(B, C, *S)``.
        ddf: displacement (voxels) with ``warped[x] = moving[x + ddf[x]]``, ``(B, ndim, *S)``.
        inverse_ddf: displacement (voxels) of the inverse map, fixed onto moving:
            ``fixed_warped[x] = fixed[x + inverse_ddf[x]]`` on the moving grid, ``(B, ndim, *S)``
            (bidirectional and inverse-consistent methods).
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
    inverse_ddf: torch.Tensor | None = None
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


def contract_problem(out: Any, batch: Mapping[str, Any]) -> str | None:
    """What is wrong with ``out`` as a model's output for ``batch``, or ``None`` if nothing.

    Checks the type, that every tensor is finite, ``warped`` ``(B, C, *S)``, ``ddf`` and
    ``inverse_ddf`` ``(B, ndim, *S)``, ``affine`` ``(B, ndim, ndim + 1)`` and the per-voxel maps
    (``warped_label``, segmentations, ``synthesized``, ``uncertainty``) ``(B, K, *S)``, with
    ``B``, ``C``, ``S`` and ``ndim`` taken from ``batch["moving"]``. The answer is one line.
    """
    if not isinstance(out, RegistrationOutput):
        return f"forward returned {type(out).__name__}, not RegistrationOutput"
    moving = batch["moving"]
    b, c, size = moving.shape[0], moving.shape[1], tuple(moving.shape[2:])
    ndim = len(size)
    exact = {
        "warped": ((b, c, *size), "(B, C, *S)"),
        "ddf": ((b, ndim, *size), "(B, ndim, *S)"),
        "inverse_ddf": ((b, ndim, *size), "(B, ndim, *S)"),
        "affine": ((b, ndim, ndim + 1), "(B, ndim, ndim + 1)"),
    }
    for key, tensor in out.tensors().items():
        if not isinstance(tensor, torch.Tensor):
            return f"output {key!r} is a {type(tensor).__name__}, not a tensor"
        if key in exact and tuple(tensor.shape) != exact[key][0]:
            shape, layout = exact[key]
            return f"{key} has shape {tuple(tensor.shape)}, expected {layout} = {shape}"
        if key in _PER_VOXEL and (tensor.shape[0] != b or tuple(tensor.shape[2:]) != size):
            return (
                f"{key} has shape {tuple(tensor.shape)}, expected (B, K, *S) = (B={b}, K, "
                f"{', '.join(map(str, size))})"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"output {key!r} has non-finite values"
    return None


_PER_VOXEL = ("warped_label", "moving_seg", "fixed_seg", "synthesized", "uncertainty")
