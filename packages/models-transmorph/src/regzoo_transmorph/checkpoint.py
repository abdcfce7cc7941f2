"""Loading the checkpoints the TransMorph authors released (timm-style filter beside the model).

Released files are ``torch.save({"epoch": ..., "state_dict": model.state_dict(), "optimizer": ...})``
of the official networks. regzoo's models keep the official parameter names, so the weights load
as they are; what :func:`checkpoint_filter_fn` removes is what regzoo recomputes or never uses:

- buffers that depend on a size: ``*.relative_position_index`` (window size) and
  ``*spatial_trans.grid`` (image size), files may or may not hold them;
- a ``module.`` prefix left by ``nn.DataParallel``;
- parameters the official network holds but never uses in its forward pass, listed by the model
  class in ``unused_official_keys`` (TransMorph-Bayes: ``net.reg_head``, ``net.sigma_head``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regzoo.engine.checkpoint import load_checkpoint

__all__ = ["checkpoint_filter_fn", "load_official_checkpoint", "SIZE_DEPENDENT_BUFFERS"]

SIZE_DEPENDENT_BUFFERS: tuple[str, ...] = ("relative_position_index", "spatial_trans.grid")


def checkpoint_filter_fn(state: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of ``state`` that ``model`` takes, under ``model``'s names.

    Args:
        state: a state dict, or a mapping holding one under ``"state_dict"``.
        model: a regzoo TransMorph model (its class may list ``unused_official_keys`` prefixes).
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    unused = tuple(getattr(model, "unused_official_keys", ()))
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.endswith(SIZE_DEPENDENT_BUFFERS) or key.startswith(unused):
            continue
        out[key] = value
    return out


def _mismatch(state: Mapping[str, torch.Tensor], model: nn.Module) -> str | None:
    """One line on how ``state`` differs from ``model.state_dict()`` in names or shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shapes differ (e.g. {k}: {given[k]} in the file, {expected[k]} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def load_official_checkpoint(
    model: nn.Module, path_or_state: str | Path | Mapping[str, Any]
) -> nn.Module:
    """Load an official TransMorph checkpoint (or a regzoo state dict) into ``model``, strictly.

    Args:
        model: the matching regzoo model (``transmorph`` for ``TransMorph``, ``transmorph-diff``
            for ``TransMorphDiff``, ...), built with the same sizes as the file.
        path_or_state: a file written with ``torch.save`` holding ``{"state_dict": ...}`` or a bare
            state dict, or such a mapping.
    Returns:
        ``model``, for chaining.
    Raises:
        DataError: the file cannot be read.
        ValueError: names or shapes do not match (one line saying how, e.g. another model size).
    """
    state = (
        load_checkpoint(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    )
    state = checkpoint_filter_fn(state, model)
    problem = _mismatch(state, model)
    if problem:
        raise ValueError(f"the weights do not fit {type(model).__name__}: {problem}")
    nn.Module.load_state_dict(model, state, strict=True)
    return model
