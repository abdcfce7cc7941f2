"""The registry: one flat table per kind of part, filled by decorators and by plugins.

Kinds are ``backbone``, ``transformer`` (a *spatial* transformation model), ``loss``, ``metric``,
``model`` and ``dataset``. An entry is registered by decorating the function or class that builds
it, in the spirit of timm::

    @register_loss("lncc", summary="...")
    def lncc(window: int = 9, eps: float = 1e-5) -> nn.Module: ...

or, for a plugin's model, by naming its config dataclass and its implementation, imported only
when the entry is built::

    register_model("voxelmorph", summary="...", config=VoxelMorphConfig,
                   target="regzoo_voxelmorph.model:VoxelMorph")

The entry *is* the recipe: its default configuration is the typed config (the dataclass, or the
builder's typed keyword parameters turned into one), held as an OmegaConf structured config so
that unknown keys and wrong types are rejected when a user overrides them.

Plugins are distributions that expose the entry-point group ``regzoo.plugins``; the entry point
names a module whose import registers its entries. Discovery is lazy: nothing is imported until a
registry is first queried, and a plugin that raises on import is recorded (see :func:`plugins`)
while everything else keeps working.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import enum
import fnmatch
import importlib
import inspect
import pathlib
import threading
import traceback
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Optional, Union, overload

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError, UnknownNameError

__all__ = [
    "KINDS",
    "Paper",
    "Entry",
    "PluginStatus",
    "Registry",
    "get_registry",
    "register",
    "register_backbone",
    "register_transformer",
    "register_loss",
    "register_metric",
    "register_model",
    "register_dataset",
    "build",
    "get_entry",
    "list_entries",
    "list_models",
    "create_model",
    "plugins",
    "LazyTarget",
    "config_error_message",
]

KINDS: tuple[str, ...] = ("backbone", "transformer", "loss", "metric", "model", "dataset")

# Core modules whose import registers core's own entries.
_CORE_MODULES: tuple[str, ...] = (
    "regzoo.spatial.transformers",
    "regzoo.losses",
    "regzoo.metrics",
    "regzoo.nn",
    "regzoo.data",
    "regzoo.models.iterative",
)
ENTRY_POINT_GROUP = "regzoo.plugins"


@dataclass(frozen=True)
class Paper:
    """Where a method was published: authors, title, venue, year and a DOI or URL."""

    authors: str
    title: str
    venue: str
    year: int
    url: str = ""

    def __str__(self) -> str:
        link = f" {self.url}" if self.url else ""
        return f"{self.authors}. {self.title}. {self.venue}, {self.year}.{link}"


@dataclass
class Entry:
    """One registered part: its builder, one-line summary, paper, tags and default config.

    ``target`` is the ``"module:attribute"`` the builder imports on its first call, for entries
    registered with ``target=`` (``None`` for entries registered by decorating their builder).
    """

    kind: str
    name: str
    builder: Callable[..., Any]
    summary: str
    paper: Paper | None = None
    tags: tuple[str, ...] = ()
    config: type | None = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plugin: str = "regzoo"
    target: str | None = None

    def default_config(self) -> DictConfig:
        """The default configuration as a structured (key- and type-checked) OmegaConf node."""
        return OmegaConf.structured(self.config) if self.config is not None else OmegaConf.create()

    @property
    def dims(self) -> tuple[int, ...]:
        """Spatial dimensionalities the entry claims through its ``2d``/``3d`` tags."""
        return tuple(d for d in (2, 3) if f"{d}d" in self.tags)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (used by ``regzoo list/info --json``)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "summary": self.summary,
            "paper": dataclasses.asdict(self.paper) if self.paper else None,
            "tags": list(self.tags),
            "plugin": self.plugin,
            "config": OmegaConf.to_container(self.default_config(), resolve=True),
            "presets": {k: dict(v) for k, v in self.presets.items()},
        }


@dataclass
class PluginStatus:
    """What loading one ``regzoo.plugins`` entry point did."""

    name: str
    module: str
    distribution: str
    version: str
    entries: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    rejected: list[str] = field(default_factory=list)


class LazyTarget:
    """A builder named ``"package.module:attribute"``, imported on its first call.

    Its ``__module__`` and ``__qualname__`` are the target's, so the registry attributes the entry
    to the plugin that owns the module without importing it.
    """

    def __init__(self, target: str) -> None:
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute or not attribute.replace(".", "").isidentifier():
            raise ValueError(f"target must be 'package.module:attribute', got {target!r}")
        self.target = target
        self.__module__ = module
        self.__qualname__ = attribute
        self._loaded: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        """Import the module and return the attribute (a class or a function)."""
        if self._loaded is None:
            obj: Any = importlib.import_module(self.__module__)
            for part in self.__qualname__.split("."):
                try:
                    obj = getattr(obj, part)
                except AttributeError:
                    raise ImportError(
                        f"target {self.target!r}: {self.__module__} has no {self.__qualname__!r}"
                    ) from None
            self._loaded = obj
        return self._loaded

    def __call__(self, **kwargs: Any) -> Any:
        return self.load()(**kwargs)

    def __repr__(self) -> str:
        return f"LazyTarget({self.target!r})"


_PRIMITIVES = (int, float, bool, str)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _config_type(annotation: Any) -> Any:
    """The OmegaConf field type of a builder's parameter annotation.

    Primitives, enums and paths stay; ``X | None`` becomes ``Optional[X]``; sequences and tuples
    become ``list[item]``, mappings ``dict[str, value]`` (items and values typed when primitive).
    Unions of several types (``int | Sequence[int]``) become ``Any``; :meth:`Registry.build`
    checks their values (:func:`_conforms`).
    """
    if annotation in _PRIMITIVES or annotation is pathlib.Path:
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        rest = [a for a in args if a is not type(None)]
        inner = _config_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if inner is not Any and len(rest) < len(args) else inner
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        items = {a for a in args if a is not Ellipsis}
        item = items.pop() if len(items) == 1 else Any
        return list[item if item in _PRIMITIVES else Any]
    if annotation in _MAPPINGS or origin in _MAPPINGS:
        value = args[1] if len(args) == 2 else Any
        return dict[str, value if value in _PRIMITIVES else Any]
    return Any


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _conforms(value: Any, annotation: Any) -> bool:
    """Whether a merged config value fits ``annotation`` (the checks OmegaConf cannot make).

    Used for unions (``int | Sequence[int]``), which OmegaConf types as ``Any``: a value fits
    when it fits one member; members that are not primitives, sequences or mappings are not
    checked here (their builder does).
    """
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if _is_union(annotation):
        return any(_conforms(value, a) for a in typing.get_args(annotation))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in _PRIMITIVES:
        return isinstance(value, annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        items = [a for a in args if a is not Ellipsis] or [Any]
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and Ellipsis not in args and len(items) > 1:
            return len(value) == len(items) and all(map(_conforms, value, items))
        return all(_conforms(v, items[0]) for v in value)
    if annotation in _MAPPINGS or origin in _MAPPINGS:
        return isinstance(value, Mapping)
    return value is not None


def _type_name(annotation: Any) -> str:
    """``int | Sequence[int]`` for an annotation (module prefixes dropped)."""
    if _is_union(annotation):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    args = typing.get_args(annotation)
    base = getattr(typing.get_origin(annotation) or annotation, "__name__", str(annotation))
    return f"{base}[{', '.join(_type_name(a) for a in args)}]" if args else base


def _union_fields(config: type | None) -> dict[str, Any]:
    """The fields of a config dataclass annotated with a union of several types."""
    if config is None or not dataclasses.is_dataclass(config):
        return {}
    hints = _type_hints(config)
    out = {}
    for f in dataclasses.fields(config):
        annotation = f.metadata.get("annotation", hints.get(f.name, Any))
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if _is_union(annotation) and len(members) > 1:
            out[f.name] = annotation
    return out


def _type_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """Evaluated annotations of ``target`` (string annotations resolved in its module)."""
    try:
        return typing.get_type_hints(target)
    except Exception:  # a name only imported under TYPE_CHECKING: resolve what can be
        hints: dict[str, Any] = {}
        namespace = getattr(target, "__globals__", {})
        for key, text in getattr(target, "__annotations__", {}).items():
            try:
                hints[key] = eval(text, namespace) if isinstance(text, str) else text
            except Exception:
                hints[key] = Any
        return hints


def _config_from_signature(builder: Callable[..., Any], name: str) -> type:
    """A dataclass whose fields are the builder's keyword parameters, typed and with defaults.

    Each field has the parameter's annotation as an OmegaConf type (:func:`_config_type`;
    unannotated: ``Any``), so ``width=abc`` for ``width: int`` is refused when the config is
    merged. A parameter without a default is required (``???`` until supplied); a default of
    ``None`` makes the field optional; tuples become lists.
    """
    target = builder.__init__ if inspect.isclass(builder) else builder
    hints = _type_hints(target)
    fields = []
    for p in _parameters(builder):
        annotation = hints.get(p.name, Any)
        ftype = _config_type(annotation)
        meta = {"annotation": annotation}
        default = p.default
        if isinstance(default, tuple):
            default = list(default)
        if default is None and ftype is not Any:
            ftype = Optional[ftype]
        if default is inspect.Parameter.empty:
            default = "???"
        fields.append((p.name, ftype, _field_default(default, meta)))
    return dataclasses.make_dataclass(_config_name(name), fields)


def _config_name(name: str) -> str:
    """``"synth-large"`` -> ``"SynthLargeConfig"``."""
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Config"


def _field_default(value: Any, metadata: Mapping[str, Any]) -> Any:
    """A dataclass field holding ``value`` (lists and dicts through a copying factory)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda v=value: copy.deepcopy(v), metadata=metadata)
    return field(default=value, metadata=metadata)


def _with_defaults(config: type, defaults: Mapping[str, Any], name: str) -> type:
    """A subclass of the dataclass ``config`` whose fields in ``defaults`` default to new values."""
    known = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(defaults) - set(known))
    if unknown:
        raise ValueError(f"{name!r}: {config.__name__} has no field {', '.join(unknown)}")
    fields = [
        (key, known[key].type, _field_default(value, known[key].metadata))
        for key, value in defaults.items()
    ]
    return dataclasses.make_dataclass(_config_name(name), fields, bases=(config,))


def _parameters(builder: Callable[..., Any]) -> list[inspect.Parameter]:
    """The builder's parameters; none for a class that inherits a generic constructor.

    A class defining no ``__init__`` in its own package, whose inherited one takes only
    ``*args, **kwargs`` (``torch.nn.Module``'s), is built without arguments.
    """
    params = list(inspect.signature(builder).parameters.values())
    if inspect.isclass(builder) and all(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
    ):
        owner = next(c for c in builder.__mro__ if "__init__" in vars(c))
        if owner.__module__.split(".")[0] != builder.__module__.split(".")[0]:
            return []
    return params


def _refuse_var_arguments(builder: Callable[..., Any], name: str) -> None:
    """Refuse a builder taking ``*args`` or ``**kwargs``: those arguments would bypass its config."""
    for p in _parameters(builder):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise ValueError(
                f"{name!r}: the builder {_qualname(builder)} takes {star}{p.name}, which its config "
                "cannot describe; give every argument a type and a default, or register the "
                "implementation with config= (a dataclass) and target='module:Class'"
            )


class Registry:
    """The entries of one kind, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    @overload
    def register(
        self,
        name: str,
        *,
        summary: str,
        paper: Paper | None = ...,
        tags: Iterable[str] = ...,
        config: type | None = ...,
        presets: Mapping[str, Mapping[str, Any]] | None = ...,
        target: None = ...,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    @overload
    def register(
        self,
        name: str,
        *,
        summary: str,
        paper: Paper | None = ...,
        tags: Iterable[str] = ...,
        config: type,
        presets: Mapping[str, Mapping[str, Any]] | None = ...,
        target: str,
    ) -> Entry: ...

    def register(
        self,
        name: str,
        *,
        summary: str,
        paper: Paper | None = None,
        tags: Iterable[str] = (),
        config: type | None = None,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
        target: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]] | Entry:
        """Register an entry: a decorator for its builder, or, with ``target``, the entry itself.

        Args:
            name: lowercase with dashes, unique within the kind.
            summary: one line for ``regzoo list``.
            paper: the publication the entry implements.
            tags: e.g. ``("2d", "3d", "diffeomorphic")``.
            config: a dataclass of the builder's keyword arguments with their types and defaults,
                the one source of the entry's defaults; by default derived from the decorated
                builder's typed signature (a builder with ``**kwargs`` is refused).
            presets: run presets (``quick``, ``paper``), each a nested mapping of overrides of
                the ``train``/``data``/``eval``/``model`` sections.
            target: ``"package.module:Class"`` built as ``Class(**config)``; the module is
                imported when the entry is first built, so registering stays cheap. Needs
                ``config``. Without ``target``, ``register`` returns a decorator.
        """
        if name != name.lower() or " " in name or "_" in name:
            raise ValueError(f"registry names are lowercase with dashes, got {name!r}")
        if config is not None and not dataclasses.is_dataclass(config):
            raise ValueError(f"{self.kind} {name!r}: config= must be a dataclass, got {config!r}")

        def add(builder: Callable[..., Any]) -> Entry:
            return self._add(
                Entry(
                    kind=self.kind,
                    name=name,
                    builder=builder,
                    summary=summary,
                    paper=paper,
                    tags=tuple(tags),
                    config=config or _config_from_signature(builder, name),
                    presets=dict(presets or {}),
                    plugin=_loading.plugin or "regzoo",
                    target=target,
                )
            )

        if target is not None:
            if config is None:
                raise ValueError(
                    f"{self.kind} {name!r}: target= needs config= (the target is not imported "
                    "at registration, so its signature cannot give the config)"
                )
            return add(LazyTarget(target))

        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            _refuse_var_arguments(builder, name)
            add(builder)
            return builder

        return decorator

    def variant(
        self,
        name: str,
        of: str,
        *,
        summary: str,
        tags: Iterable[str] | None = None,
        **defaults: Any,
    ) -> Entry:
        """Register ``name``: the entry ``of`` under its own name, with other defaults.

        One implementation, several named configurations, as timm's model variants:
        ``get_registry("dataset").variant("synth-large", "synth", summary=..., deform_std=12.0)``.
        ``of`` must be registered before (by the same package); its paper, presets and, unless
        ``tags`` is given, tags carry over. A key that is not a field of its config is refused.
        """
        base = self._entries.get(of)
        if base is None:
            raise ValueError(f"{self.kind} {name!r}: {of!r} must be registered before its variant")
        if name != name.lower() or " " in name or "_" in name:
            raise ValueError(f"registry names are lowercase with dashes, got {name!r}")
        return self._add(
            dataclasses.replace(
                base,
                name=name,
                summary=summary,
                tags=base.tags if tags is None else tuple(tags),
                config=_with_defaults(base.config, defaults, name),
                plugin=_loading.plugin or "regzoo",
            )
        )

    def _add(self, entry: Entry) -> Entry:
        """Store ``entry``; a name taken by another builder fails (in a plugin: that entry only)."""
        old = self._entries.get(entry.name)
        if old is not None and _qualname(old.builder) != _qualname(entry.builder):
            taken = f"{self.kind} {entry.name!r} is already registered by {old.plugin}"
            if _loading.status is None:
                raise ValueError(f"{taken} ({_qualname(old.builder)})")
            # A plugin's clash fails that entry alone: its other entries stay usable.
            _loading.status.rejected.append(f"{taken}; this plugin's one is ignored")
            return old
        self._entries[entry.name] = entry
        if _loading.status is not None:
            _loading.status.entries.append(f"{self.kind}:{entry.name}")
        return entry

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a glob ``pattern`` (``"transmorph*"``)."""
        _ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> Entry:
        """The entry registered as ``name``; the error lists what *is* registered."""
        _ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            broken = _failed_provider(self.kind, name)
            if broken is not None:
                raise UnknownNameError(
                    f"{self.kind} {name!r} comes from plugin {broken.name!r} "
                    f"({broken.distribution} {broken.version}), which failed to load: "
                    f"{broken.error}"
                ) from None
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; registered: {known}"
            ) from None

    def config(self, name: str, overrides: Mapping[str, Any] | None = None) -> DictConfig:
        """The default config of ``name`` with ``overrides`` merged in (keys and types checked)."""
        entry = self.get(name)
        cfg = entry.default_config()
        if overrides:
            try:
                cfg = OmegaConf.merge(cfg, overrides)
            except OmegaConfBaseException as err:
                raise ConfigError(f"{self.kind} {name!r}: {config_error_message(err)}") from None
        return cfg

    def build(self, config: str | Mapping[str, Any] | DictConfig, **overrides: Any) -> Any:
        """Build from a name or a config holding ``name`` plus any keys of the entry's config."""
        if isinstance(config, str):
            config = {"name": config}
        config = (
            dict(OmegaConf.to_container(config, resolve=True))
            if isinstance(config, DictConfig)
            else dict(config)
        )
        config.update(overrides)
        if "name" not in config:
            raise ConfigError(f"a {self.kind} config needs a 'name' key, got {sorted(config)}")
        name = config.pop("name")
        cfg = self.config(name, config)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{self.kind} {name!r} needs a value for {', '.join(missing)}")
        kwargs = OmegaConf.to_container(cfg, resolve=True)
        entry = self.get(name)
        for key, annotation in _union_fields(entry.config).items():
            if not _conforms(kwargs.get(key), annotation):
                raise ConfigError(
                    f"{self.kind} {name!r}: {key} must be {_type_name(annotation)}, "
                    f"got {kwargs.get(key)!r}"
                )
        return entry.builder(**kwargs)

    def __contains__(self, name: str) -> bool:
        _ensure_loaded()
        return name in self._entries


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def config_error_message(err: OmegaConfBaseException, prefix: str = "") -> str:
    """One line for an OmegaConf error that names the key: ``width: Value 'abc' of type ...``.

    ``prefix`` (e.g. ``"train."``) is put before the key of a node merged inside a section.
    """
    text = _one_line(err)
    key = getattr(err, "full_key", None)
    if key and f"'{key}'" not in text:
        return f"{key if key.startswith(prefix) else prefix + key}: {text}"
    return text


_REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
_PLUGINS: dict[str, PluginStatus] = {}


class _LoadingState(threading.local):
    plugin: str | None = None
    status: PluginStatus | None = None


_loading = _LoadingState()
_loaded = False
_lock = threading.RLock()


def _ensure_loaded() -> None:
    """Import core's entries and every installed plugin, once."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _loaded = True
        for module in _CORE_MODULES:
            importlib.import_module(module)
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            _load_plugin(ep)


def _load_plugin(ep: Any) -> None:
    dist = getattr(ep, "dist", None)
    status = PluginStatus(
        name=ep.name,
        module=ep.value,
        distribution=dist.name if dist is not None else "?",
        version=dist.version if dist is not None else "?",
    )
    _PLUGINS[ep.name] = status
    _loading.plugin, _loading.status = status.distribution, status
    try:
        ep.load()
    except Exception as err:  # a broken plugin must never break the others
        status.error = f"{type(err).__name__}: {_one_line(err)}"
        status.traceback = traceback.format_exc()
    finally:
        _loading.plugin, _loading.status = None, None
    _claim_early_entries(ep.value.split(":")[0].split(".")[0], status)


def _claim_early_entries(package: str, status: PluginStatus) -> None:
    """Attribute to a plugin the entries its package registered before its entry point loaded.

    A plugin module imported directly (by a test, a script) registers its entries outside
    :func:`_load_plugin`; loading the entry point then imports nothing new. Their builders' module
    still says whose they are.
    """
    for registry in _REGISTRIES.values():
        for name, entry in list(registry._entries.items()):
            module = getattr(entry.builder, "__module__", None) or ""
            if entry.plugin == "regzoo" and (module == package or module.startswith(package + ".")):
                registry._entries[name] = dataclasses.replace(entry, plugin=status.distribution)
                status.entries.append(f"{entry.kind}:{name}")


def _failed_provider(kind: str, name: str) -> PluginStatus | None:
    """The plugin that failed to load although its manifest declares ``kind:name``."""
    failed = [p for p in _PLUGINS.values() if p.error]
    if not failed:
        return None
    from .catalog import load_catalog

    provider = load_catalog().provider(kind, name)
    return next((p for p in failed if provider is not None and p.name == provider.name), None)


def get_registry(kind: str) -> Registry:
    """The registry of one kind."""
    try:
        return _REGISTRIES[kind]
    except KeyError:
        raise UnknownNameError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}") from None


def register(
    kind: str, name: str, **meta: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a builder of ``kind`` as ``name``; see :meth:`Registry.register`."""
    return get_registry(kind).register(name, **meta)


register_backbone = _REGISTRIES["backbone"].register
register_transformer = _REGISTRIES["transformer"].register
register_loss = _REGISTRIES["loss"].register
register_metric = _REGISTRIES["metric"].register
register_model = _REGISTRIES["model"].register
register_dataset = _REGISTRIES["dataset"].register


def build(kind: str, config: str | Mapping[str, Any] | DictConfig, **overrides: Any) -> Any:
    """Build a part from its config: ``build("loss", {"name": "lncc", "window": 9})``."""
    return get_registry(kind).build(config, **overrides)


def get_entry(kind: str, name: str) -> Entry:
    """The entry of ``kind`` registered as ``name``."""
    return get_registry(kind).get(name)


def list_entries(pattern: str = "*", kind: str | None = None) -> dict[str, list[str]]:
    """Names matching ``pattern``, keyed by kind (all kinds unless ``kind`` is given)."""
    kinds = [kind] if kind else list(KINDS)
    return {k: get_registry(k).names(pattern) for k in kinds}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, e.g. ``list_models("voxelmorph*")``."""
    return get_registry("model").names(pattern)


def create_model(name: str, **overrides: Any) -> Any:
    """Build the model ``name`` from its default config with keyword ``overrides``."""
    return get_registry("model").build(name, **overrides)


def plugins() -> list[PluginStatus]:
    """Every ``regzoo.plugins`` entry point found, with what it registered or why it failed."""
    _ensure_loaded()
    return sorted(_PLUGINS.values(), key=lambda p: p.name)
