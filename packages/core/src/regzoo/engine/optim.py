"""The optimisers the engine builds from ``train.optimizer`` (one per parameter group)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["make_optimizer"]


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str = "adam",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> torch.optim.Optimizer:
    """``adam`` / ``adamw`` / ``sgd`` (momentum 0.9) / ``radam`` / ``adamax`` over ``params``.

    ``amsgrad`` applies to ``adam`` and ``adamw``; ``adamax`` is Adam with the infinity norm
    (Kingma & Ba, ICLR 2015).
    """
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, amsgrad=amsgrad)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, amsgrad=amsgrad)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw, radam, sgd, adamax)")
