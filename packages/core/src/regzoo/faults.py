"""Whose code failed: naming the plugin behind a model or behind an exception.

A failure inside a plugin is the plugin's to fix, so the command line names the plugin and its
version (``plugin regzoo-models-jssr 0.1.0``) instead of calling it an internal error of regzoo.
The plugin of a traceback is found from the module names of its frames: the top-level package of
each plugin's entry point, and of the builders of the entries it registered.
"""

from __future__ import annotations

import importlib.metadata
from types import TracebackType

__all__ = ["plugin_label", "plugin_of_traceback"]

CORE = "regzoo"


def _version(distribution: str) -> str:
    from .registry import plugins

    for status in plugins():
        if status.distribution == distribution and status.version != "?":
            return status.version
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def plugin_label(distribution: str) -> str:
    """``"plugin NAME VERSION"`` for a plugin's distribution name (``"regzoo VERSION"`` for core)."""
    if distribution == CORE:
        return f"{CORE} {_version(CORE)}"
    return f"plugin {distribution} {_version(distribution)}"


def _plugin_packages() -> dict[str, str]:
    """Top-level package name -> distribution name of every loaded plugin."""
    from .registry import KINDS, get_registry, plugins

    packages = {s.module.split(":")[0].split(".")[0]: s.distribution for s in plugins()}
    for kind in KINDS:
        registry = get_registry(kind)
        for name in registry.names():
            entry = registry.get(name)
            module = getattr(entry.builder, "__module__", None) or ""
            if entry.plugin != CORE and module:
                packages.setdefault(module.split(".")[0], entry.plugin)
    packages.pop(CORE, None)
    return packages


def plugin_of_traceback(tb: TracebackType | None) -> str | None:
    """Where in a plugin an exception was raised: ``"plugin NAME VERSION (module, line N)"``.

    The innermost frame that runs a plugin's code decides (a plugin that passes bad arguments to
    core fails inside core, called from the plugin). ``None`` when no frame is a plugin's.
    """
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_globals.get("__name__", ""), tb.tb_lineno))
        tb = tb.tb_next
    if not frames:
        return None
    try:
        packages = _plugin_packages()
    except Exception:  # the registry itself failing must not hide the original error
        return None
    for module, line in reversed(frames):
        distribution = packages.get(module.split(".")[0])
        if distribution is not None:
            return f"{plugin_label(distribution)} ({module}, line {line})"
    return None
