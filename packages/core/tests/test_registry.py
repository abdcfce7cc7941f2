"""The registry: decorators, default configs from signatures, patterns, errors, lazy plugins."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

import regzoo
import regzoo.registry as reg
from regzoo.errors import ConfigError, UnknownNameError


@pytest.fixture
def scratch_kind(monkeypatch):
    """A throw-away loss registry so tests do not leak entries."""
    fresh = reg.Registry("loss")
    monkeypatch.setitem(reg._REGISTRIES, "loss", fresh)
    return fresh


def test_decorator_registers_with_signature_defaults(scratch_kind):
    @scratch_kind.register("toy-loss", summary="A toy.", tags=("2d",))
    def toy(window: int = 9, eps: float = 1e-5, sizes=(1, 2)):
        return {"window": window, "eps": eps, "sizes": sizes}

    entry = scratch_kind.get("toy-loss")
    assert entry.summary == "A toy." and entry.dims == (2,)
    assert dict(entry.default_config()) == {"window": 9, "eps": 1e-5, "sizes": [1, 2]}
    assert regzoo.build("loss", {"name": "toy-loss", "window": 5}) == {
        "window": 5,
        "eps": 1e-5,
        "sizes": [1, 2],
    }
    with pytest.raises(ConfigError, match="windw"):
        regzoo.build("loss", {"name": "toy-loss", "windw": 5})


def test_required_arguments_must_be_given(scratch_kind):
    @scratch_kind.register("needs-arg", summary="x")
    def needs(channels, scale: float = 1.0):
        return channels * scale

    with pytest.raises(ConfigError, match="channels"):
        scratch_kind.build("needs-arg")
    assert scratch_kind.build({"name": "needs-arg", "channels": 3}) == 3.0


def test_unknown_name_lists_what_is_registered(scratch_kind):
    @scratch_kind.register("alpha-loss", summary="x")
    def alpha():
        return 1

    with pytest.raises(UnknownNameError, match="did you mean alpha-loss.*registered: alpha-loss"):
        scratch_kind.get("alpha-los")


def test_names_are_lowercase_with_dashes(scratch_kind):
    with pytest.raises(ValueError):
        scratch_kind.register("Bad_Name", summary="x")


def test_conflicting_registration_is_refused(scratch_kind):
    @scratch_kind.register("same", summary="x")
    def one():
        return 1

    def two():
        return 2

    with pytest.raises(ValueError, match="already registered"):
        scratch_kind.register("same", summary="y")(two)


def test_glob_patterns_and_kinds():
    assert set(regzoo.list_entries()) == set(regzoo.KINDS)
    assert regzoo.get_registry("transformer").names("s*") == ["svf"]
    assert {"dense", "svf", "affine", "bspline"} <= set(
        regzoo.list_entries(kind="transformer")["transformer"]
    )
    with pytest.raises(UnknownNameError):
        regzoo.get_registry("nonsense")


def test_import_is_lazy():
    code = (
        "import sys, regzoo; "
        "assert 'torch' not in sys.modules, 'import regzoo pulled in torch'; "
        "print('ok')"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


class FakeEP:
    """An entry point of a fake distribution ``regzoo-models-<name>`` (module ``regzoo_<name>``)."""

    def __init__(self, name, loader):
        self.name, self.value, self._loader = name, f"regzoo_{name.replace('-', '_')}", loader
        self.dist = types.SimpleNamespace(name=f"regzoo-models-{name}", version="9.9")

    def load(self):
        return self._loader()


def _fake_plugins(monkeypatch, *fake_eps):
    """Reload the registry with ``fake_eps`` before the installed plugins; a private metric
    registry (a copy of the real one) receives what they register, and is returned."""
    real_entry_points = importlib.metadata.entry_points

    def fake_entry_points(group=None, **kw):
        if group == reg.ENTRY_POINT_GROUP:
            return list(fake_eps) + list(real_entry_points(group=group))
        return real_entry_points(group=group, **kw)

    monkeypatch.setattr(reg, "entry_points", fake_entry_points)
    monkeypatch.setattr(reg, "_loaded", False)
    monkeypatch.setattr(reg, "_PLUGINS", {})
    metric_registry = reg.Registry("metric")
    metric_registry._entries = dict(reg._REGISTRIES["metric"]._entries)
    monkeypatch.setitem(reg._REGISTRIES, "metric", metric_registry)
    monkeypatch.setattr(reg, "register_metric", metric_registry.register)
    return metric_registry


def test_broken_plugin_is_reported_not_fatal(monkeypatch):
    """A plugin that raises on import is recorded with its error; the rest keeps working."""
    good = types.ModuleType("regzoo_fake_good")

    def load_good():
        @reg.register_metric("fake-good-metric", summary="registered by a fake plugin")
        def fake():
            return 0

        return good

    def load_bad():
        raise ImportError("this plugin is broken on purpose")

    metric_registry = _fake_plugins(
        monkeypatch, FakeEP("zz-broken", load_bad), FakeEP("zz-good", load_good)
    )
    status = {p.name: p for p in regzoo.plugins()}
    assert "ImportError: this plugin is broken on purpose" == status["zz-broken"].error
    assert status["zz-good"].error is None
    assert status["zz-good"].entries == ["metric:fake-good-metric"]
    assert metric_registry.get("fake-good-metric").plugin == "regzoo-models-zz-good"
    assert "svf" in regzoo.get_registry("transformer").names()


def test_plugin_imported_before_the_registry_loads_still_owns_its_entries(monkeypatch):
    """A test or script that imports a plugin's module directly registers its entries before
    the entry point loads; they are attributed to the plugin all the same (``model_cases`` and
    ``regzoo list`` filter by it)."""
    metric_registry = _fake_plugins(monkeypatch, FakeEP("zz-early", lambda: None))

    def early():
        return 0

    early.__module__ = "regzoo_zz_early.metrics"
    metric_registry.register("fake-early-metric", summary="registered on import")(early)
    assert metric_registry._entries["fake-early-metric"].plugin == "regzoo"  # not loaded yet

    status = {p.name: p for p in regzoo.plugins()}
    assert status["zz-early"].entries == ["metric:fake-early-metric"]
    assert metric_registry.get("fake-early-metric").plugin == "regzoo-models-zz-early"
    assert metric_registry.get("dice").plugin == "regzoo"


def test_variant_is_the_same_builder_with_other_defaults(scratch_kind):
    @scratch_kind.register("base-loss", summary="x", tags=("2d",))
    def base(window: int = 9, sizes=(1, 2)):
        return {"window": window, "sizes": sizes}

    entry = scratch_kind.variant("wide-loss", "base-loss", summary="wider", sizes=(4, 8))
    assert entry.builder is base and entry.tags == ("2d",) and entry.summary == "wider"
    assert dict(entry.default_config()) == {"window": 9, "sizes": [4, 8]}
    assert regzoo.build("loss", {"name": "wide-loss", "window": 5}) == {
        "window": 5,
        "sizes": [4, 8],
    }
    assert dict(scratch_kind.get("base-loss").default_config())["sizes"] == [1, 2]
    with pytest.raises(ValueError, match="no field windw"):
        scratch_kind.variant("bad-loss", "base-loss", summary="x", windw=3)
    with pytest.raises(ValueError, match="must be registered before"):
        scratch_kind.variant("orphan-loss", "missing-loss", summary="x")
