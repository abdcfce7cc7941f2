"""Run configuration: ``model``, ``data``, ``train`` and ``eval`` sections, layered with OmegaConf.

Layers, later wins (docs/conventions.md):

1. package defaults (:class:`TrainConfig`, :class:`EvalConfig`, dataset ``synth``);
2. the model's run preset (``quick`` by default, ``preset=paper`` for the paper's schedule);
3. a YAML file (``--config FILE``);
4. ``key=value`` overrides from the command line (``train.steps=200 data.ndim=3``).

The ``model`` and ``data`` sections are then merged onto the registered entry's default config, so
an unknown key or a wrong type is an error that names the key. ``model.ndim`` follows
``data.ndim`` unless it is set explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .registry import get_entry, get_registry

__all__ = ["TrainConfig", "EvalConfig", "resolve_config", "parse_overrides", "DEFAULT_PRESET"]

DEFAULT_PRESET = "quick"


@dataclass
class TrainConfig:
    """How a model is trained. Steps count optimisation steps of the whole method."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    amsgrad: bool = False
    scheduler: str = "none"  # "none" | "poly"
    poly_power: float = 0.9
    grad_clip: Any = None
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 250
    val_every: int = 0  # 0: validate only at the end
    val_pairs: int = 8
    amp: str = "no"  # "no" | "bf16" | "fp16" (CUDA only)
    compile: bool = False
    workers: int = 0
    weights: Any = None  # initial weights (a checkpoint or a state_dict file)


@dataclass
class EvalConfig:
    """How a trained model is evaluated on held-out pairs."""

    split: str = "test"
    max_pairs: Any = None
    label_warp: str = "nearest"  # "nearest" | "linear" (one-hot, then argmax)
    metrics: list = field(default_factory=lambda: ["dice", "hd95", "sdlogj", "folding"])
    overview: bool = True


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.steps=5", "model.transformer=svf"]`` to a nested dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"malformed override {item!r}: expected key=value, e.g. train.steps=200"
            )
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"malformed value in override {item!r}") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = parsed
    return out


def _load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections")
    return data


def _replace_renamed(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` with every part config whose ``name`` changes given in full, not merged.

    ``model.similarity.name=mse`` over ``{name: lncc, window: 9}`` must give ``{name: mse}``, not
    an mse config with a stale ``window``.
    """
    out: dict[str, Any] = {}
    for key, value in layer.items():
        old = base.get(key) if isinstance(base, Mapping) else None
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if "name" in value and value["name"] != old.get("name"):
                out[key] = value  # marked for replacement by the caller
                continue
            out[key] = _replace_renamed(old, value)
        else:
            out[key] = value
    return out


def _merge_parts(base: dict[str, Any], layer: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Merge a ``model`` layer; a nested part whose ``name`` changes replaces the old part."""
    merged = dict(base)
    for key, value in _replace_renamed(base, layer).items():
        old = merged.get(key)
        renamed = (
            isinstance(value, Mapping)
            and isinstance(old, Mapping)
            and value.get("name", old.get("name")) != old.get("name")
        )
        if renamed or not (isinstance(value, Mapping) and isinstance(old, Mapping)):
            merged[key] = (
                OmegaConf.to_container(OmegaConf.create(dict(value)))
                if isinstance(value, Mapping)
                else value
            )
        else:
            merged[key] = _merge_parts(dict(old), value, what)
    return merged


def _merge(base: DictConfig, layer: Mapping[str, Any], what: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{what}: {str(err).splitlines()[0]}") from None


_SECTIONS = ("model", "data", "train", "eval", "preset")


def resolve_config(
    model: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    base: Mapping[str, Any] | None = None,
) -> DictConfig:
    """The fully resolved, validated run config.

    Args:
        model: registered model name (may also come from the file or ``model.name=...``).
        config_file: a YAML file with any of the sections.
        overrides: ``key=value`` strings or an already nested mapping.
        base: a previously resolved config to start from (e.g. a checkpoint's), instead of the
            package defaults and preset.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file:
        layers.append((str(config_file), _load_yaml(config_file)))
    cli = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    layers.append(("override", cli))
    for what, layer in layers:
        unknown = sorted(set(layer) - set(_SECTIONS))
        if unknown:
            raise ConfigError(
                f"{what}: unknown config key {unknown[0]!r} (top-level keys: {', '.join(_SECTIONS)})"
            )

    name = model
    for _, layer in layers:
        name = (layer.get("model") or {}).get("name", name)
    if base is not None:
        name = name or base["model"]["name"]
    if not name:
        raise ConfigError("no model given: name one, e.g. 'regzoo train voxelmorph'")
    entry = get_entry("model", name)

    if base is None:
        preset = DEFAULT_PRESET
        for _, layer in layers:
            preset = layer.get("preset", preset)
        cfg = OmegaConf.create(
            {
                "preset": preset,
                "model": {"name": name},
                "data": {"name": "synth"},
                "train": OmegaConf.structured(TrainConfig),
                "eval": OmegaConf.structured(EvalConfig),
            }
        )
        if preset not in entry.presets and preset != DEFAULT_PRESET:
            known = ", ".join(sorted(entry.presets)) or "none"
            raise ConfigError(f"model {name!r} has no preset {preset!r} (presets: {known})")
        layers.insert(0, (f"preset {preset!r}", dict(entry.presets.get(preset, {}))))
    else:
        cfg = OmegaConf.create(
            OmegaConf.to_container(base, resolve=True)
            if isinstance(base, DictConfig)
            else dict(base)
        )
        cfg.train = _merge(OmegaConf.structured(TrainConfig), cfg.train, "checkpoint train config")
        cfg.eval = _merge(OmegaConf.structured(EvalConfig), cfg.eval, "checkpoint eval config")

    model_explicit = dict(cfg.model)
    data_layer: dict[str, Any] = dict(cfg.data)
    for what, layer in layers:
        for section in ("train", "eval"):
            if section in layer:
                cfg[section] = _merge(cfg[section], layer[section], what)
        if "data" in layer:
            if "name" in layer["data"] and layer["data"]["name"] != data_layer.get("name"):
                data_layer = {}
            data_layer = OmegaConf.to_container(
                _merge(OmegaConf.create(data_layer), layer["data"], what)
            )
        if "model" in layer:
            model_explicit = _merge_parts(dict(model_explicit), dict(layer["model"]), what)
        if "preset" in layer:
            cfg.preset = layer["preset"]

    data_name = data_layer.pop("name", "synth")
    data_cfg = get_registry("dataset").config(
        data_name, {k: v for k, v in data_layer.items() if k != "split"}
    )
    model_explicit.pop("name", None)
    model_cfg = get_registry("model").config(name, model_explicit)
    if "ndim" in model_cfg and "ndim" not in model_explicit and "ndim" in data_cfg:
        model_cfg.ndim = data_cfg.ndim
    cfg.model = OmegaConf.merge({"name": name}, OmegaConf.to_container(model_cfg, resolve=True))
    cfg.data = OmegaConf.merge({"name": data_name}, OmegaConf.to_container(data_cfg, resolve=True))
    cfg.data.pop("split", None)
    return cfg
