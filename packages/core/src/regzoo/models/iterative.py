"""``iterative``: network-free registration, a displacement field optimised per pair.

The classical recipe the learned methods replaced (and the baseline they are measured against):
for each pair, a dense displacement field minimising ``similarity(moving o phi, fixed) +
reg_weight * regulariser(phi)`` by gradient descent, coarse to fine on an image pyramid
(Avants et al., "A reproducible evaluation of ANTs similarity metric performance in brain image
registration", NeuroImage 54(3), 2011; Balakrishnan et al., "VoxelMorph", IEEE TMI 38(8), 2019,
which trains a network on this objective: LNCC with window 9 and the Grad regulariser). Adam
replaces the classical optimisers (Heinrich & Hansen, "Voxelmorph++", WBIR 2022, call this
instance optimisation). It has no learned weights (:attr:`~RegistrationModel.trainable` is
``False``) and runs wherever its inputs are, GPU included.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import Paper, register_model
from ..spatial import resize_field, resize_image, warp
from .base import Batch, RegistrationModel
from .objective import RegistrationLoss
from .output import RegistrationOutput

__all__ = ["Iterative", "IterativeConfig", "DEFAULT_LOSS"]

AVANTS_2011 = Paper(
    "Avants, Tustison, Song, Cook, Klein, Gee",
    "A reproducible evaluation of ANTs similarity metric performance in brain image registration",
    "NeuroImage 54(3)",
    2011,
    "https://doi.org/10.1016/j.neuroimage.2010.09.025",
)


#: The objective: VoxelMorph's LNCC (window 9) and Grad (l2), the regulariser weighted 2 (1 folds
#: about 1% of the voxels of the embedded pairs, 2 about 0.2%, for 0.01 less Dice).
DEFAULT_LOSS: dict[str, Any] = {
    "similarity": {"name": "lncc", "window": 9},
    "regularizer": {"name": "grad", "penalty": "l2"},
    "reg_weight": 2.0,
}


@dataclass
class IterativeConfig:
    """Keyword arguments of :class:`Iterative` with their defaults: ``levels`` (downsampling
    factors, coarse to fine), ``iterations`` (Adam steps per level), ``lr`` (voxels of the level
    per step) and ``loss`` (a :class:`~regzoo.models.RegistrationLoss` config)."""

    ndim: int = 2
    in_channels: int = 1
    levels: list[int] = field(default_factory=lambda: [4, 2, 1])
    iterations: list[int] = field(default_factory=lambda: [150, 100, 50])
    lr: float = 0.2
    loss: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_LOSS))


register_model(
    "iterative",
    summary="Network-free: a dense field optimised per pair (LNCC + Grad, Adam, coarse to fine); "
    "not trainable.",
    paper=AVANTS_2011,
    tags=("2d", "3d", "classical", "unsupervised"),
    config=IterativeConfig,
    target="regzoo.models.iterative:Iterative",
)


class Iterative(RegistrationModel):
    """A displacement field optimised for each pair: ``(B, ndim, *S)`` voxels, fixed grid to moving.

    Level ``l`` of the pyramid works on the images resampled to ``1 / levels[l]`` of their size
    and runs ``iterations[l]`` Adam steps (learning rate ``lr`` in that level's voxels) on the
    field, started from the previous level's field resampled (zero at the first level).

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image (the similarity sees them all).
        levels: downsampling factor of each level, coarse to fine (the last 1: full resolution).
        iterations: Adam steps per level.
        lr: Adam's learning rate, voxels of the level per step.
        loss: the objective, a :class:`~regzoo.models.RegistrationLoss` config (similarity,
            regularizer, reg_weight); labels are never used.
    """

    trainable = False

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 1,
        levels: Sequence[int] = (4, 2, 1),
        iterations: Sequence[int] = (150, 100, 50),
        lr: float = 0.2,
        loss: Mapping[str, Any] = DEFAULT_LOSS,
    ) -> None:
        super().__init__()
        if len(levels) != len(iterations) or not levels:
            raise ConfigError(
                f"iterative: model.levels {list(levels)} and model.iterations {list(iterations)} "
                "must have one entry per level"
            )
        if any(int(f) < 1 for f in levels) or any(int(n) < 0 for n in iterations):
            raise ConfigError(
                f"iterative: model.levels must be >= 1 and model.iterations >= 0, got "
                f"{list(levels)} and {list(iterations)}"
            )
        self.ndim, self.in_channels = ndim, in_channels
        self.levels = [int(f) for f in levels]
        self.iterations = [int(n) for n in iterations]
        self.lr = float(lr)
        self.objective_terms = RegistrationLoss(**loss)

    def _level_loss(
        self, moving: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor
    ) -> torch.Tensor:
        out = RegistrationOutput(ddf=ddf, warped=warp(moving, ddf))
        return self.objective_terms({"moving": moving, "fixed": fixed}, out)["loss"]

    def register_pair(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The optimised field ``(B, ndim, *S)`` (voxels) for images ``(B, C, *S)``."""
        shape = tuple(fixed.shape[2:])
        ddf: torch.Tensor | None = None
        with torch.enable_grad():
            for factor, steps in zip(self.levels, self.iterations):
                size = [max(2, -(-n // factor)) for n in shape]
                ddf = (
                    fixed.new_zeros((fixed.shape[0], self.ndim, *size))
                    if ddf is None
                    else resize_field(ddf.detach(), size)
                )
                m, f = resize_image(moving, size), resize_image(fixed, size)
                field = ddf.detach().requires_grad_(True)
                optimiser = torch.optim.Adam([field], lr=self.lr)
                for _ in range(steps):
                    optimiser.zero_grad(set_to_none=True)
                    self._level_loss(m, f, field).backward()
                    optimiser.step()
                ddf = field.detach()
        assert ddf is not None
        return resize_field(ddf, shape) if tuple(ddf.shape[2:]) != shape else ddf

    def forward(self, batch: Batch) -> RegistrationOutput:
        moving, fixed = batch["moving"], batch["fixed"]
        ddf = self.register_pair(moving.detach(), fixed.detach())
        return RegistrationOutput(
            ddf=ddf, warped=warp(moving, ddf), warped_label=self.warp_moving_labels(batch, ddf)
        )

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        return self.objective_terms(batch, out)
