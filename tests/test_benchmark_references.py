"""The benchmarks' correctness checks and the generated BENCHMARKS.md, in the test suite.

The suites under ``benchmarks/`` run only when asked (``pytest benchmarks``); what they compare must
still hold on every commit: each compared implementation computes what regzoo computes (the same
warp, the same LNCC, the same VoxelMorph-2 parameter count), checked here at the suites' small
(``QUICK``) sizes, and BENCHMARKS.md is exactly what ``tools/bench_report.py`` makes of the
committed JSON, so no "met" line is typed by hand.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    """Import a file that is not in a package (the benchmark modules, the report tool)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _bench(stem: str) -> ModuleType:
    return _load(ROOT / "benchmarks" / f"{stem}.py", f"regzoo_benchmarks_{stem}")


@pytest.fixture(scope="module")
def make() -> SimpleNamespace:
    conftest = _bench("conftest")
    return SimpleNamespace(image=conftest.smooth_image, field=conftest.smooth_field)


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_warp_implementations_agree(make, monkeypatch, dim):
    _bench("test_bench_warp").test_implementations_agree(make, monkeypatch, dim)


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_lncc_implementations_agree(make, dim):
    _bench("test_bench_lncc").test_implementations_agree(make, dim)


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxelmorph_networks_are_the_same_architecture(ndim):
    _bench("test_bench_voxelmorph").test_same_architecture(ndim)


def test_the_checks_catch_a_wrong_implementation(make, monkeypatch):
    """A compared implementation that computes something else fails the check above."""
    warp_suite = _bench("test_bench_warp")
    real = warp_suite.implementation

    def shifted(name, patch):
        fn = real(name, patch)
        return fn if name == "regzoo" else (lambda image, ddf: fn(image, ddf + 0.5))

    monkeypatch.setattr(warp_suite, "implementation", shifted)
    with pytest.raises(AssertionError):
        warp_suite.test_implementations_agree(make, monkeypatch, "2d")


def test_benchmarks_md_is_generated_from_the_committed_json():
    report = _load(ROOT / "tools" / "bench_report.py", "regzoo_tools_bench_report")
    paths = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert paths, "no committed benchmark JSON"
    expected = report.report(paths)
    assert (ROOT / "BENCHMARKS.md").read_text() == expected, (
        "BENCHMARKS.md is not what tools/bench_report.py makes of benchmarks/results/*.json: "
        "regenerate it with `python tools/bench_report.py`"
    )
    assert "| met |" in expected
    # The TransMorph step is compared with the authors' network measured in the same run.
    assert "| official TransMorph train-step |" in expected
