"""The base class of every registered model.

A model maps a batch (the keys of :data:`~regzoo.models.output.BATCH_KEYS`; docs/conventions.md)
to a :class:`RegistrationOutput`, and says how it is trained:

- :meth:`loss` gives the training objective's terms (``"loss"`` is the total);
- :meth:`objective` is the label-free objective used for instance optimisation at test time;
- :meth:`parameter_groups` names the networks that get an optimiser each;
- :meth:`training_step` does one step through the :class:`~regzoo.models.Optimizers` it
  receives; methods with several networks or alternating updates (GANs, 1:20 schedules,
  multi-stage training) override it and :meth:`stage`.

Optional hooks, each with a default that fits most methods (docs/model-contract.md):
:attr:`trainable`, :attr:`reads_labels`, :meth:`load_weights`, :meth:`sample`, :meth:`trajectory`, :meth:`io_parameters`.
The engine calls them directly; it never probes a model for attributes.

The engine owns everything else: devices, mixed precision, seeding, logging, checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..labels import LabelTable, warp_label_probabilities
from ..spatial import integrate_velocity, resize_field
from .optim import Optimizers
from .output import BATCH_LABEL_KEYS, RegistrationOutput

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
        trainable: ``False`` for a classical method (no learned weights, e.g. an iterative
            optimiser run per pair): the engine then builds no optimiser, ``regzoo train`` runs no
            step and only evaluates, and the conformance suite skips the training step.
        reads_labels: ``True`` for a model whose forward reads both images' label maps at test
            time (``moving_label``/``fixed_label``, indices of its label table), as DDIR takes
            its regions from them: ``regzoo register`` then needs ``--moving-seg`` and
            ``--fixed-seg``, and :meth:`test_inputs` keeps the maps.
    """

    io_iterations: int = 0
    io_lr: float = 1e-4
    label_table: LabelTable | None = None
    trainable: bool = True
    reads_labels: bool = False

    def forward(self, batch: Batch) -> RegistrationOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """The training objective's terms; ``"loss"`` holds the weighted total."""
        raise NotImplementedError

    def test_inputs(self, batch: Batch) -> dict[str, Any]:
        """What the forward sees at test time (``regzoo register``, instance optimisation): the
        batch without supervision (:data:`~regzoo.models.output.BATCH_LABEL_KEYS`), but with both
        label maps for a model that :attr:`reads_labels`."""
        keep = ("moving_label", "fixed_label") if self.reads_labels else ()
        return {k: v for k, v in batch.items() if k not in BATCH_LABEL_KEYS or k in keep}

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
            present = [batch[k].max() for k in ("moving_label", "fixed_label") if k in batch]
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

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict read from ``--weights FILE`` (a regzoo checkpoint or official weights).

        ``state`` is the file's ``state_dict`` entry when it has one, else the file's whole
        content. By default ``load_state_dict(state, strict=True)``. A method whose authors released
        weights in another layout overrides this to rename, reshape or drop entries (e.g. a
        PyTorch port of TensorFlow weights) and then calls ``load_state_dict``. Raise
        ``KeyError``, ``ValueError`` or ``RuntimeError`` for weights that do not fit: the engine
        reports them in one line naming the file.
        """
        self.load_state_dict(state, strict=True)

    def read_weights(self, path: Path) -> Mapping[str, Any] | None:
        """Read ``--weights FILE`` when the authors released it in a format that is not a torch
        file (e.g. Keras HDF5); the result goes to :meth:`load_weights`. ``None`` (the default):
        the engine reads the file with ``torch.load``. Raise ``ValueError`` for a file of that
        format that cannot be read: the engine reports it in one line naming the file."""
        return None

    def sample(self, batch: Batch, k: int) -> RegistrationOutput:
        """``k`` stochastic forward passes summarised (``regzoo register --samples K``).

        A method with a probabilistic or Monte-Carlo variant returns the mean ``ddf``, ``warped``
        by it, and ``uncertainty`` ``(B, 1, *S)`` (per-voxel variance of the displacement, voxels²),
        without gradients. The default refuses: the method does not sample.
        """
        raise UserError(
            f"--samples: model {type(self).__name__} does not sample (no Monte-Carlo variant)"
        )

    def trajectory(self, batch: Batch, steps: int | None = None) -> list[torch.Tensor]:
        """The intermediate transforms of the registration, as displacement fields.

        A list of ``(B, ndim, *S)`` fields in voxels, from the first intermediate state to the
        final ``ddf`` (which the list ends with): one per cascade stage, iteration, integration or
        interpolation step for methods that have them. ``steps`` asks for that many states where
        the method can make any number (``regzoo register --trajectory N``); ``None``: the
        method's own number.

        The default: for a model whose output has a ``velocity``, ``exp(gamma v)`` (scaling and
        squaring, :func:`~regzoo.spatial.integrate_velocity`, 7 squarings) for ``gamma`` in
        ``linspace(0, 1, steps or 7)``, each resized to the image grid by the ratio of the
        grids, the last state the output's ``ddf`` itself; otherwise the one-step trajectory
        ``[ddf]``.
        """
        if steps is not None and steps < 1:
            raise UserError(f"--trajectory: the number of steps must be at least 1, got {steps}")
        out = self(batch)
        if out.velocity is None:
            return [out.ddf]
        count = 7 if steps is None else int(steps)
        shape = tuple(out.ddf.shape[2:])
        # one factor for every axis (a velocity at 1/downsize): its values scale by exactly that
        ratios = {n / v for n, v in zip(shape, out.velocity.shape[2:])}
        factor = ratios.pop() if len(ratios) == 1 else None
        fields = []
        for gamma in torch.linspace(0.0, 1.0, count).tolist()[:-1]:
            u = integrate_velocity(gamma * out.velocity)
            fields.append(
                u if tuple(u.shape[2:]) == shape else resize_field(u, shape, factor=factor)
            )
        return fields + [out.ddf]
