"""Run configuration: ``model``, ``data``, ``train`` and ``eval`` sections, layered with OmegaConf.

Layers, later wins (docs/conventions.md):

1. package defaults (:class:`TrainConfig`, :class:`EvalConfig`, dataset ``synth``);
2. the model's run preset (``quick`` by default, ``preset=paper`` for the paper's schedule);
3. a YAML file (``--config FILE``);
4. ``key=value`` overrides from the command line (``train.steps=200 data.ndim=3``).

The ``model`` and ``data`` sections are then merged onto the registered entry's default config, so
an unknown key or a wrong type is an error that names the key. ``model.ndim`` follows
``data.ndim`` unless it is set explicitly. Numeric settings out of range (:func:`check_ranges`)
and values with a fixed set of choices (``train.optimizer``, ``train.scheduler``, ``train.amp``,
``eval.label_warp``, the names in ``eval.metrics``; :func:`validate_choices`) are errors too,
before any work. YAML (files and override values) is parsed as plain data with a size and an
alias-expansion limit (:func:`load_yaml_text`), as YAML 1.2: only ``true``/``false`` are
booleans, so ``train.amp=no`` is the string ``"no"`` (boolean fields still take ``yes``/``no``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .registry import config_error_message, get_entry, get_registry

__all__ = [
    "TrainConfig",
    "EvalConfig",
    "resolve_config",
    "parse_overrides",
    "load_yaml_text",
    "check_ranges",
    "validate_choices",
    "DEFAULT_PRESET",
    "OPTIMIZERS",
    "SCHEDULERS",
    "AMP_MODES",
    "LABEL_WARPS",
]

DEFAULT_PRESET = "quick"
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "radam", "sgd", "adamax")
SCHEDULERS: tuple[str, ...] = ("none", "poly", "step")
AMP_MODES: tuple[str, ...] = ("no", "bf16", "fp16")
LABEL_WARPS: tuple[str, ...] = ("nearest", "linear")


class _Yaml12Loader(yaml.SafeLoader):
    """YAML's safe loader with only ``true``/``false`` (any case) as booleans, as in YAML 1.2."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass
class TrainConfig:
    """How a model is trained. Steps count optimisation steps of the whole method.

    ``grad_clip`` null: no gradient clipping; ``weights`` null: the model's own initialisation.
    Learning rate at step ``s``: ``lr`` times the ``scheduler``'s factor (``none``: 1; ``poly``:
    ``(1 - s / steps) ** poly_power``; ``step``: ``lr_gamma`` to the number of ``lr_milestones``
    reached), times ``(s + 1) / warmup_steps`` during the first ``warmup_steps`` steps.
    """

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    optimizer: str = "adam"  # one of OPTIMIZERS
    weight_decay: float = 0.0
    amsgrad: bool = False
    scheduler: str = "none"  # "none" | "poly" | "step" (SCHEDULERS)
    poly_power: float = 0.9
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: Optional[float] = None
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 250
    val_every: int = 0  # 0: validate only at the end
    val_pairs: int = 8
    amp: str = "no"  # "no" | "bf16" | "fp16" (CUDA only; AMP_MODES)
    compile: bool = False
    workers: int = 0
    weights: Optional[str] = None  # initial weights (a checkpoint or a state_dict file)


@dataclass
class EvalConfig:
    """How a trained model is evaluated on held-out pairs.

    ``max_pairs`` null: every pair of the split. ``metrics``: names of registered metrics.
    """

    split: str = "test"
    max_pairs: Optional[int] = None
    label_warp: str = "nearest"  # "nearest" | "linear" (one-hot, then argmax)
    metrics: list[str] = field(default_factory=lambda: ["dice", "hd95", "sdlogj", "folding"])
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
        parsed = load_yaml_text(value, f"override {key}") if value.strip() else None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = parsed
    return out


#: Largest config text read (bytes) and most values its aliases may expand to: a config is a few
#: hundred values, and nested aliases ("billion laughs") would otherwise expand exponentially when
#: the config is merged.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000


def _expanded_size(node: yaml.Node, what: str) -> int:
    """Values ``node`` stands for with every alias expanded, counted without expanding them."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{what}: a YAML alias refers to itself")
        open_nodes.add(key)
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_YAML_VALUES:
            raise ConfigError(
                f"{what}: YAML aliases expand to over {MAX_YAML_VALUES:,} values; write the "
                "values out instead of nesting aliases"
            )
        return total

    return size(node)


def load_yaml_text(text: str, what: str) -> Any:
    """Parse YAML ``text`` safely (plain data only) with limits; ``what`` names it in errors.

    Text over :data:`MAX_YAML_BYTES`, aliases expanding to over :data:`MAX_YAML_VALUES` values
    (a "billion laughs" document) and nesting too deep for the parser are one-line errors, raised
    before anything is expanded.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise ConfigError(f"{what}: over {MAX_YAML_BYTES // 1024} KiB, too large for a config")
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, what)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{what}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: over {MAX_YAML_BYTES // 1024} KiB, too large for a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({type(err).__name__})") from None
    data = load_yaml_text(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections")
    return data


def _number(cfg: DictConfig, key: str) -> float | None:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return value


def check_ranges(cfg: DictConfig) -> None:
    """Refuse numeric settings outside their range, one line naming the key, before any step.

    Steps, batch size and intervals are counts (``train.val_every=0``: validate only at the end);
    ``train.lr`` is positive; ``train.grad_clip`` and ``eval.max_pairs`` may be null (no limit).
    NaN fails every check.
    """
    rules = [
        ("train.steps", "> 0", lambda v: v > 0, False),
        ("train.batch_size", ">= 1", lambda v: v >= 1, False),
        ("train.lr", "> 0", lambda v: v > 0, False),
        ("train.weight_decay", ">= 0", lambda v: v >= 0, False),
        ("train.lr_gamma", "> 0", lambda v: v > 0, False),
        ("train.warmup_steps", ">= 0", lambda v: v >= 0, False),
        ("train.grad_clip", "> 0 or null", lambda v: v > 0, True),
        ("train.log_every", ">= 1", lambda v: v >= 1, False),
        ("train.ckpt_every", ">= 1", lambda v: v >= 1, False),
        ("train.val_every", ">= 0 (0: only at the end)", lambda v: v >= 0, False),
        ("train.val_pairs", ">= 1", lambda v: v >= 1, False),
        ("eval.max_pairs", ">= 1 or null (all pairs)", lambda v: v >= 1, True),
        ("data.ndim", "2 or 3", lambda v: v in (2, 3), True),
    ]
    for key, wanted, ok, optional in rules:
        value = _number(cfg, key)
        if value is None and optional:
            continue
        if value is None or not ok(value):
            raise ConfigError(f"{key} must be {wanted}, got {value}")


def _merge_parts(base: dict[str, Any], layer: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Merge a ``model`` layer; a nested part whose ``name`` changes replaces the old part.

    ``model.similarity.name=mse`` over ``{name: lncc, window: 9}`` gives ``{name: mse}``, not an
    mse config with a stale ``window``.
    """
    merged = dict(base)
    for key, value in layer.items():
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


def _merge(base: DictConfig, layer: Mapping[str, Any], what: str, section: str = "") -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as err:
        prefix = f"{section}." if section else ""
        raise ConfigError(f"{what}: {config_error_message(err, prefix)}") from None


_SECTIONS = ("model", "data", "train", "eval", "preset")


def validate_choices(cfg: DictConfig) -> None:
    """Refuse, in one line naming the key, a value outside its choices.

    ``train.optimizer`` (:data:`OPTIMIZERS`), ``train.scheduler`` (:data:`SCHEDULERS`),
    ``train.amp`` (:data:`AMP_MODES`), ``eval.label_warp`` (:data:`LABEL_WARPS`) and every name
    in ``eval.metrics`` (a registered metric).

    Raises:
        ConfigError: the first value that is not one of its choices.
    """
    for key, choices in (
        ("train.optimizer", OPTIMIZERS),
        ("train.scheduler", SCHEDULERS),
        ("train.amp", AMP_MODES),
        ("eval.label_warp", LABEL_WARPS),
    ):
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    metrics = get_registry("metric")
    known = metrics.names()
    for name in OmegaConf.select(cfg, "eval.metrics") or ():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"eval.metrics: unknown metric {name!r}{hint}; registered: {', '.join(known)}"
            )


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
        cfg.train = _merge(
            OmegaConf.structured(TrainConfig), cfg.train, "checkpoint train config", "train"
        )
        cfg.eval = _merge(
            OmegaConf.structured(EvalConfig), cfg.eval, "checkpoint eval config", "eval"
        )

    model_explicit = dict(cfg.model)
    data_layer: dict[str, Any] = dict(cfg.data)
    for what, layer in layers:
        for section in ("train", "eval"):
            if section in layer:
                cfg[section] = _merge(cfg[section], layer[section], what, section)
        if "data" in layer:
            if "name" in layer["data"] and layer["data"]["name"] != data_layer.get("name"):
                data_layer = {}
            data_layer = OmegaConf.to_container(
                _merge(OmegaConf.create(data_layer), layer["data"], what, "data")
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
    validate_choices(cfg)
    check_ranges(cfg)
    return cfg
