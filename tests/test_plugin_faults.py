"""A plugin's bug is reported as the plugin's, in one line, not as an internal error of regzoo.

``tests/fixtures/faulty`` is an installed plugin (``regzoo-models-faulty`` 0.3) whose models break
the contract: one returns a channels-last displacement, one raises in ``forward``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import regzoo
import regzoo.registry as reg
from regzoo.cli import main

FAULTY = Path(__file__).parent / "fixtures" / "faulty"


@pytest.fixture
def faulty_plugin(monkeypatch):
    """The installed plugins plus ``regzoo-models-faulty``, loaded afresh; removed afterwards."""
    regzoo.list_models()  # core and the installed plugins are registered once, before the swap
    for registry in reg._REGISTRIES.values():
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.syspath_prepend(str(FAULTY))
    monkeypatch.setattr(reg, "_loaded", False)
    monkeypatch.setattr(reg, "_PLUGINS", {})
    monkeypatch.delitem(__import__("sys").modules, "faulty_plugin", raising=False)
    assert "faulty-raises" in regzoo.list_models()


def _train(name: str, out: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    code = main(["train", name, "--out", str(out), "--device", "cpu", *extra])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_channels_last_field_stops_at_step_one_naming_model_plugin_and_shape(
    faulty_plugin, tmp_path, capsys
):
    code, err = _train("faulty-channels-last", tmp_path, capsys)
    assert code == 1 and len(err) == 1, err
    line = err[0]
    assert "'faulty-channels-last'" in line and "plugin regzoo-models-faulty 0.3" in line
    assert "step 1" in line and "ddf has shape (2, 16, 16, 2)" in line
    assert "(B, ndim, *S) = (2, 2, 16, 16)" in line
    assert "internal error" not in line
    assert not (tmp_path / "log.csv").exists() and not (tmp_path / "last.pt").exists()


def test_an_exception_in_forward_names_the_plugin_and_its_version(faulty_plugin, tmp_path, capsys):
    code, err = _train("faulty-raises", tmp_path, capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(
        "regzoo: error in plugin regzoo-models-faulty 0.3 (faulty_plugin.model"
    )
    assert "RuntimeError: the faulty plugin's forward failed" in err[0]
    assert "--debug" in err[0]
    with pytest.raises(RuntimeError, match="forward failed"):
        main(["train", "faulty-raises", "--out", str(tmp_path / "d"), "--device", "cpu", "--debug"])
