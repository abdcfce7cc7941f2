"""Checkpoints: atomic writes, self-describing contents, safe loading.

A checkpoint is a plain dict loadable with ``torch.load(..., weights_only=True)``:
``model`` (registered name), ``config`` (the resolved run config), ``state_dict``, ``step``,
``optim`` (optimiser/scheduler/scaler states), ``rng`` (torch RNG states), ``versions`` (regzoo,
torch and every installed plugin) and ``metrics`` when validated.

Loading refuses what would only give garbage later: a file that is not a checkpoint, weights that
hold NaN or Inf (a diverged run), weights that do not fit the model, and a model config that
cannot be built; each is one line naming the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_path
from ..errors import DataError, UserError
from ..labels import LabelTable
from ..registry import plugins

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "versions",
    "model_from_checkpoint",
    "load_weights",
    "load_state",
]


def versions() -> dict[str, str]:
    """Versions of regzoo, torch and the installed plugins, for the record."""
    from .. import __version__

    out = {"regzoo": str(__version__), "torch": str(torch.__version__)}
    out.update({p.distribution: str(p.version) for p in plugins()})
    return out


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A reader (or a killed process) never sees a partial file at ``path``; a failed write (a full
    disk) is one line naming ``path`` and leaves the previous file in place.
    """
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            torch.save(dict(payload), fh)
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"{path}: cannot write the checkpoint ({reason})") from None


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_finite(state: Mapping[str, Any], path: Path) -> None:
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise DataError(
                    f"{path}: weight {key!r} holds NaN or Inf values (the run that wrote it "
                    "diverged: lower the learning rate, or use an earlier checkpoint)"
                )


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
    state = ckpt.get("state_dict", ckpt)
    if isinstance(state, Mapping):
        _check_finite(state, path)
    return ckpt


@contextlib.contextmanager
def _fitting(path: str | Path) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as err:
        raise DataError(f"{path}: weights do not fit the model ({first_line(err)})") from None


def load_state(model: torch.nn.Module, state: Mapping[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(state, strict=True)``; weights that do not fit the model are one
    line naming ``path`` (the file ``state`` was read from)."""
    with _fitting(path):
        model.load_state_dict(state, strict=True)


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load weights from a regzoo checkpoint or a bare/foreign state-dict file into ``model``.

    Files holding ``{"state_dict": ...}`` (as many authors release them) are accepted. The model's
    :meth:`~regzoo.models.RegistrationModel.load_weights` hook reads it (and may remap an official
    layout): it receives the ``state_dict`` entry when the file has one, and otherwise the file's
    whole content (so a format such as VoxelMorph's ``{"config", "model_state"}`` reaches it with
    its config). A file that is not a torch file (e.g. the authors' Keras HDF5) reaches it as the
    model's :meth:`~regzoo.models.RegistrationModel.read_weights` reads it.
    """
    reader = getattr(model, "read_weights", None)
    content = None
    if reader is not None and Path(path).is_file():
        with _fitting(path):
            content = reader(Path(path))
    if content is None:
        ckpt = load_checkpoint(path)
        content = ckpt.get("state_dict", ckpt)
    with _fitting(path):
        model.load_weights(content)


def model_from_checkpoint(
    ckpt: Mapping[str, Any], path: str | Path = "checkpoint"
) -> torch.nn.Module:
    """Rebuild the model a checkpoint (read from ``path``) describes, load its weights and its
    label table."""
    from .trainer import build_model

    cfg = ckpt["config"]
    model = build_model(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), path)
    load_state(model, ckpt["state_dict"], path)
    model.label_table = LabelTable.from_checkpoint(ckpt)
    return model
