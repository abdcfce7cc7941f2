"""A plugin that fails to import is listed with its error by ``regzoo plugins``; the rest works."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

import regzoo
import regzoo.registry as reg
from regzoo.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def broken_plugin(monkeypatch):
    """The installed plugins plus ``broken = broken_plugin`` (tests/fixtures), loaded afresh."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    real = importlib.metadata.entry_points
    broken = importlib.metadata.EntryPoint("broken", "broken_plugin", reg.ENTRY_POINT_GROUP)

    def entry_points(group=None, **kw):
        found = list(real(group=group, **kw))
        return [*found, broken] if group == reg.ENTRY_POINT_GROUP else found

    regzoo.list_models()  # core and the installed plugins are registered once, before the swap
    monkeypatch.setattr(reg, "entry_points", entry_points)
    monkeypatch.setattr(reg, "_loaded", False)
    monkeypatch.setattr(reg, "_PLUGINS", {})
    return broken


def test_plugins_lists_the_broken_plugin_with_its_error(broken_plugin, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("broken "))
    assert "FAILED" in line and "regzoo_dependency_that_is_not_installed" in line
    assert any(row.startswith("voxelmorph ") and "FAILED" not in row for row in out.splitlines())

    assert main(["plugins", "--json"]) == 0
    status = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert status["broken"]["error"].startswith("ModuleNotFoundError")
    assert status["broken"]["entries"] == []
    assert status["voxelmorph"]["error"] is None


def test_list_and_info_still_work(broken_plugin, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "voxelmorph" in out and "broken" not in out
    assert main(["info", "voxelmorph"]) == 0
    assert "Balakrishnan" in capsys.readouterr().out
    assert regzoo.create_model("voxelmorph", ndim=2) is not None
