"""What is installed, read from manifests: listing without importing plugins or torch.

Each package that registers entries (core itself and every plugin) ships a manifest,
``regzoo-manifest.json`` beside its ``__init__.py``, generated from its code::

    python -m regzoo.catalog regzoo_myplugin      # imports the plugin, writes its manifest

The manifest lists every entry the import registers (kind, name, summary, paper, tags, default
config, presets), so ``regzoo list``, ``regzoo info`` and ``regzoo plugins`` read JSON files
instead of importing torch and every plugin. The code stays the one source: the test suite
regenerates each manifest and compares it with the shipped file.

A plugin whose module cannot be found (:func:`importlib.util.find_spec`, which does not import
it) or whose manifest is missing or broken is reported as a *problem*: one line, while every other
entry stays listed. Two packages declaring one name: the first (core, then plugins by entry-point
name) keeps it, the other's entry is reported.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST",
    "EntryInfo",
    "PluginInfo",
    "Catalog",
    "load_catalog",
    "manifest_path",
    "make_manifest",
    "write_manifest",
]

MANIFEST = "regzoo-manifest.json"
FORMAT = "regzoo-manifest-1"
ENTRY_POINT_GROUP = "regzoo.plugins"
CORE_PACKAGE = "regzoo"


@dataclass(frozen=True)
class EntryInfo:
    """One entry as its manifest declares it (what ``regzoo list`` and ``info`` show)."""

    kind: str
    name: str
    summary: str
    paper: dict[str, Any] | None
    tags: tuple[str, ...]
    plugin: str
    config: dict[str, Any]
    presets: dict[str, Any]

    @property
    def dims(self) -> tuple[int, ...]:
        """Spatial dimensionalities the entry claims through its ``2d``/``3d`` tags."""
        return tuple(d for d in (2, 3) if f"{d}d" in self.tags)

    def paper_text(self) -> str:
        """The paper as one citation line (empty when the entry has none)."""
        if not self.paper:
            return ""
        p = self.paper
        link = f" {p['url']}" if p.get("url") else ""
        return f"{p['authors']}. {p['title']}. {p['venue']}, {p['year']}.{link}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the same fields as :meth:`regzoo.registry.Entry.to_dict`."""
        return {
            "kind": self.kind,
            "name": self.name,
            "summary": self.summary,
            "paper": self.paper,
            "tags": list(self.tags),
            "plugin": self.plugin,
            "config": self.config,
            "presets": self.presets,
        }


@dataclass
class PluginInfo:
    """One ``regzoo.plugins`` entry point: where its manifest is and what it declares."""

    name: str
    module: str
    distribution: str
    version: str
    entries: list[str] = field(default_factory=list)
    problem: str | None = None


@dataclass
class Catalog:
    """Every entry the installed manifests declare, and the problems met reading them."""

    entries: dict[str, dict[str, EntryInfo]]
    plugins: list[PluginInfo]
    problems: list[str]

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of ``kind`` matching a glob ``pattern``."""
        import fnmatch

        return sorted(n for n in self.entries.get(kind, {}) if fnmatch.fnmatchcase(n, pattern))

    def get(self, kind: str, name: str) -> EntryInfo | None:
        """The entry, or ``None`` when no manifest declares it."""
        return self.entries.get(kind, {}).get(name)

    def provider(self, kind: str, name: str) -> PluginInfo | None:
        """The plugin whose manifest declares ``kind:name`` (even one that fails to load)."""
        key = f"{kind}:{name}"
        return next((p for p in self.plugins if key in p.entries), None)


def _package_of(module: str) -> str:
    return module.split(":")[0].split(".")[0]


def manifest_path(package: str) -> Path | None:
    """Where ``package``'s manifest is, found without importing the package; None if not found."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / MANIFEST


def _read(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise ValueError("no 'entries' list")
    for e in entries:
        missing = {"kind", "name", "summary"} - set(e if isinstance(e, dict) else ())
        if missing:
            raise ValueError(f"an entry lacks {', '.join(sorted(missing))}")
    return entries


def _entry(raw: dict[str, Any], plugin: str) -> EntryInfo:
    return EntryInfo(
        kind=raw["kind"],
        name=raw["name"],
        summary=raw["summary"],
        paper=raw.get("paper"),
        tags=tuple(raw.get("tags", ())),
        plugin=plugin,
        config=dict(raw.get("config") or {}),
        presets=dict(raw.get("presets") or {}),
    )


def _plugin_points() -> list[Any]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def load_catalog() -> Catalog:
    """Read core's manifest and every installed plugin's (no plugin import, no torch)."""
    entries: dict[str, dict[str, EntryInfo]] = {}
    problems: list[str] = []
    infos: list[PluginInfo] = []

    def add(raw_entries: Iterable[dict[str, Any]], plugin: str, info: PluginInfo | None) -> None:
        for raw in raw_entries:
            e = _entry(raw, plugin)
            held = entries.setdefault(e.kind, {}).get(e.name)
            if held is not None:
                problems.append(
                    f"plugin {info.name if info else plugin!r}: {e.kind} {e.name!r} is already "
                    f"provided by {held.plugin}; this entry is ignored"
                )
                continue
            entries[e.kind][e.name] = e
            if info is not None:
                info.entries.append(f"{e.kind}:{e.name}")

    core = manifest_path(CORE_PACKAGE)
    try:
        add(_read(core) if core else [], CORE_PACKAGE, None)
    except (OSError, ValueError) as err:
        problems.append(f"regzoo's own manifest {core}: {err}")
    for ep in _plugin_points():
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
        infos.append(info)
        package = _package_of(ep.value)
        path = manifest_path(package)
        if path is None:
            info.problem = f"module {package!r} not found"
        elif not path.is_file():
            info.problem = f"no manifest ({path.name}) in {path.parent}"
        else:
            try:
                add(_read(path), info.distribution, info)
            except (OSError, ValueError) as err:
                info.problem = f"broken manifest {path}: {err}"
        if info.problem:
            problems.append(
                f"plugin {ep.name!r} ({info.distribution} {info.version}): {info.problem}"
            )
    return Catalog(entries, infos, problems)


def make_manifest(package: str) -> dict[str, Any]:
    """The manifest of ``package`` from its code: import it and list what it registered.

    Core (``"regzoo"``) lists core's own entries; a plugin package lists the entries attributed
    to its distribution. This imports torch and the package.
    """
    from .registry import KINDS, get_entry, list_entries, plugins

    if package == CORE_PACKAGE:
        owner = CORE_PACKAGE
    else:
        status = next((p for p in plugins() if _package_of(p.module) == package), None)
        if status is None:
            raise ValueError(f"{package!r} is not an installed regzoo plugin")
        if status.error:
            raise ValueError(f"{package!r} fails to load: {status.error}")
        owner = status.distribution
    found = []
    for kind in KINDS:
        for name in list_entries("*", kind)[kind]:
            entry = get_entry(kind, name)
            module = getattr(entry.builder, "__module__", None) or ""
            # Core's own entries only: not those a script or test registered in this process.
            ours = owner != CORE_PACKAGE or module.split(".")[0] == CORE_PACKAGE
            if entry.plugin == owner and ours:
                found.append(entry.to_dict())
    return {"format": FORMAT, "package": package, "entries": found}


def write_manifest(package: str, path: str | Path | None = None) -> Path:
    """Write ``package``'s manifest (by default beside its ``__init__.py``); returns the path."""
    from .atomic import write_text

    target = Path(path) if path is not None else manifest_path(package)
    if target is None:
        raise ValueError(f"package {package!r} not found")
    write_text(target, json.dumps(make_manifest(package), indent=1, default=str) + "\n")
    return target


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m regzoo.catalog PACKAGE [PACKAGE ...]  (writes each manifest)")
        return 0 if argv else 2
    for package in argv:
        print(write_manifest(package))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
