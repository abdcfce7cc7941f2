"""Checkpoints: atomic writes, self-describing contents, safe loading.

A checkpoint is a plain dict loadable with ``torch.load(..., weights_only=True)``:
``model`` (registered name), ``config`` (the resolved run config), ``state_dict``, ``step``,
``optim`` (optimiser/scheduler/scaler states), ``rng`` (torch RNG states), ``versions`` (regzoo,
torch and every installed plugin) and ``metrics`` when validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_path
from ..errors import DataError
from ..registry import create_model, plugins

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "versions",
    "model_from_checkpoint",
    "load_weights",
]


def versions() -> dict[str, str]:
    """Versions of regzoo, torch and the installed plugins, for the record."""
    from .. import __version__

    out = {"regzoo": str(__version__), "torch": str(torch.__version__)}
    out.update({p.distribution: str(p.version) for p in plugins()})
    return out


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A reader (or a killed process) never sees a partial file at ``path``.
    """
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        torch.save(dict(payload), fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"{path}: not a checkpoint (expected a dict)")
    return ckpt


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load weights from a regzoo checkpoint or a bare/foreign state-dict file into ``model``.

    Files holding ``{"state_dict": ...}`` (as many authors release them) are accepted. A model with
    a ``load_weights(state)`` method (e.g. one that remaps an official layout) handles its own.
    """
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt)
    try:
        if hasattr(model, "load_weights"):
            model.load_weights(state)
        else:
            model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: weights do not fit the model ({first})") from None


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    cfg = ckpt["config"]
    model_cfg = dict(
        cfg["model"] if not isinstance(cfg, DictConfig) else OmegaConf.to_container(cfg.model)
    )
    name = model_cfg.pop("name")
    model = create_model(name, **model_cfg)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model
