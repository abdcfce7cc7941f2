"""What a model's ``training_step(batch, optim, step)`` receives as ``optim``.

:class:`Optimizers` holds one optimiser per parameter group the model names
(:meth:`RegistrationModel.parameter_groups`). :meth:`Optimizers.step` is the one place a loss
becomes an update: it refuses a non-finite loss (before any weight changes), scales it under fp16
autocast, averages gradients across processes in a distributed run, clips, steps the optimiser and
its learning-rate schedule. A model never calls ``backward`` or ``optimizer.step`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from ..errors import NonFiniteLossError

__all__ = ["Optimizers"]


class Optimizers:
    """Named optimisers with their schedulers, gradient scaler and clipping.

    Args:
        optimizers: optimiser by parameter-group name (``"model"`` for single-network methods).
        schedulers: optional learning-rate scheduler per name, stepped after each update.
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        scaler: a ``torch.amp.GradScaler`` for fp16 autocast (``None`` otherwise).
    """

    def __init__(
        self,
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, Any] | None = None,
        grad_clip: float | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.optimizers = dict(optimizers)
        self.schedulers = dict(schedulers or {})
        self.grad_clip = grad_clip
        self.scaler = scaler

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.optimizers)

    def step(self, loss: torch.Tensor, name: str = "model", schedule: bool = True) -> None:
        """Back-propagate ``loss`` and update the parameters of optimiser ``name``.

        Args:
            loss: scalar to minimise.
            name: the parameter group (:meth:`RegistrationModel.parameter_groups`).
            schedule: step ``name``'s learning-rate schedule after the update. Schedules count
                training steps: a step that updates one group several times (a second update on
                the reversed pair) passes ``False`` for all but its last update of that group, so
                that its updates share one learning rate and the schedule ends with ``train.steps``.
        """
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.detach().float().item()}) in the {name!r} update; "
                "the last good checkpoint is kept"
            )
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        params = [p for group in opt.param_groups for p in group["params"]]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            _average_gradients(params)
        if self.scaler:
            self.scaler.unscale_(opt)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        if schedule and name in self.schedulers:
            self.schedulers[name].step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients across processes (data parallel, any number of networks).

    A parameter without a gradient on every rank keeps ``grad = None``, so the optimiser skips it
    as it would in one process (no momentum step for a frozen network). Where some ranks have a
    gradient and others not, the others count as zeros in the average. Every rank takes part in
    the same two collectives whatever its gradients.
    """
    if not params:
        return
    world = dist.get_world_size()
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has)
    reduced = [p for p, n in zip(params, has.tolist()) if n > 0]
    if not reduced:
        return
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in reduced]
    )
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in reduced:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
