"""The optimisers the engine builds from ``train.optimizer`` (one per parameter group)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import OPTIMIZERS
from ..errors import ConfigError

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
    adaptive = {"lr": lr, "weight_decay": weight_decay}
    factories = {
        "adam": lambda: torch.optim.Adam(params, amsgrad=amsgrad, **adaptive),
        "adamw": lambda: torch.optim.AdamW(params, amsgrad=amsgrad, **adaptive),
        "radam": lambda: torch.optim.RAdam(params, **adaptive),
        "sgd": lambda: torch.optim.SGD(params, momentum=0.9, **adaptive),
        "adamax": lambda: torch.optim.Adamax(params, **adaptive),
    }
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return factories[name]()
