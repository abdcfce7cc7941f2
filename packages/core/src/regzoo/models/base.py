"""The base class of every registered model.

A model maps a batch (docs/conventions.md: ``moving``, ``fixed`` and optionally ``moving_label``,
``fixed_label``, landmarks, ``labelled``, ``spacing``) to a :class:`RegistrationOutput`, and says
how it is trained:

- :meth:`loss` gives the training objective's terms (``"loss"`` is the total);
- :meth:`objective` is the label-free objective used for instance optimisation at test time;
- :meth:`parameter_groups` names the networks that get an optimiser each;
- :meth:`training_step` does one step; methods with several networks or alternating updates
  (GANs, 1:20 schedules, multi-stage training) override it and :meth:`stage`.

The engine owns everything else: devices, mixed precision, seeding, logging, checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..labels import LabelTable, warp_label_probabilities
from .output import BATCH_LABEL_KEYS, RegistrationOutput

if TYPE_CHECKING:
    from ..engine.optim import Optimizers

__all__ = ["RegistrationModel", "Batch"]

Batch = Mapping[str, Any]


class RegistrationModel(nn.Module):
    """Base of all models. Subclasses implement :meth:`forward` and :meth:`loss`.

    Class attributes:
        io_iterations: default number of instance-optimisation steps for ``regzoo register``.
        io_lr: learning rate of instance optimisation.
        label_table: the label table of the data (:class:`regzoo.labels.LabelTable`): the engine
            sets it from the training dataset and saves it in checkpoints; ``None`` without labels.
            Label maps in a batch hold its indices ``0 .. K-1``, not the original values.
    """

    io_iterations: int = 0
    io_lr: float = 1e-4
    label_table: LabelTable | None = None

    def forward(self, batch: Batch) -> RegistrationOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """The training objective's terms; ``"loss"`` holds the weighted total."""
        raise NotImplementedError

    def objective(self, batch: Batch, out: RegistrationOutput) -> torch.Tensor:
        """Label-free objective (image similarity + regulariser) for instance optimisation.

        By default the training loss with the labels removed from the batch.
        """
        unlabelled = {k: v for k, v in batch.items() if k not in BATCH_LABEL_KEYS}
        return self.loss(unlabelled, out)["loss"]

    def warp_moving_labels(
        self, batch: Batch, ddf: torch.Tensor, num_classes: int | None = None
    ) -> torch.Tensor | None:
        """The batch's ``moving_label`` warped by ``ddf`` linearly as one-hot maps, ``(B, K, *S)``
        probabilities (a model's ``warped_label``); ``None`` when the batch has no moving labels.

        ``K`` is ``num_classes`` when given (a segmentation head's width), else the label table's
        size, widened to 1 + the largest index in the batch's label maps (a table of other data).
        Every model warps label maps through here (:func:`regzoo.labels.warp_label_probabilities`).
        """
        if "moving_label" not in batch:
            return None
        labels = batch["moving_label"]
        if num_classes is None:
            present = [batch[k].max() for k in BATCH_LABEL_KEYS if k in batch]
            num_classes = int(torch.stack(present).max()) + 1
            if self.label_table is not None:
                num_classes = max(num_classes, self.label_table.num_classes)
        return warp_label_probabilities(labels, ddf, num_classes)

    def io_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters that instance optimisation updates (all by default; ISTN: its STN only)."""
        return self.parameters()

    def parameter_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """One entry per optimiser the method trains with, by name."""
        return {"model": self.parameters()}

    def stage(self, step: int) -> str:
        """The training stage at ``step`` (shown in the progress bar and the log)."""
        return "train"

    def training_step(self, batch: Batch, optim: Optimizers, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the loss terms for the log."""
        out = self(batch)
        terms = self.loss(batch, out)
        optim.step(terms["loss"])
        return terms
