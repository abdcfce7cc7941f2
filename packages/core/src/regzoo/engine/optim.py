"""The optimisers of a run, one per parameter group a model names.

:meth:`Optimizers.step` is the one place a loss becomes an update: it refuses a non-finite loss
(before any weight changes), scales it under fp16 autocast, averages gradients across processes
in a distributed run, clips, steps the optimiser and its learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from ..errors import NonFiniteLossError

__all__ = ["Optimizers", "make_optimizer"]


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str = "adam",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> torch.optim.Optimizer:
    """``adam`` / ``adamw`` / ``sgd`` (momentum 0.9) / ``radam`` over ``params``."""
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, amsgrad=amsgrad)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, amsgrad=amsgrad)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw, radam, sgd)")


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

    def __iter__(self):
        return iter(self.optimizers)

    def step(self, loss: torch.Tensor, name: str = "model") -> None:
        """Back-propagate ``loss`` and update the parameters of optimiser ``name``."""
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
        if name in self.schedulers:
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
    """All-reduce and average gradients across processes (data parallel, any number of networks).

    Parameters without a gradient on this rank contribute zeros, so every rank takes part in the
    same collectives in the same order.
    """
    world = dist.get_world_size()
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
