"""Shared set-up of the pytest-benchmark suites (run explicitly, not part of the test suite).

Every benchmark times one *implementation* of one *case* (``extra_info``: ``case``, ``impl``,
``device``, ``pass``), after one warm-up, with ``iterations=1`` per round; before timing it measures
the peak memory of one call (CUDA: ``max_memory_allocated``; CPU: the torch profiler's allocation
trace). ``tools/bench_report.py`` turns the JSON into BENCHMARKS.md. Regenerate with::

    pytest benchmarks --benchmark-json=benchmarks/results/cpu.json
    python tools/bench_report.py

Options: ``--bench-quick`` (small shapes: checks that the suite runs; its numbers mean nothing),
``--bench-rounds N`` and ``--bench-threads N``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import SimpleNamespace

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda", id="cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device here")
    ),
]
PACKAGES = ("torch", "triton", "monai", "voxelmorph", "neurite", "regzoo", "numpy")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("regzoo benchmarks")
    group.addoption("--bench-quick", action="store_true", help="small shapes (a smoke run)")
    group.addoption("--bench-rounds", type=int, default=5, help="timed rounds per benchmark")
    group.addoption(
        "--bench-threads", type=int, default=0, help="torch threads (0: torch's default)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.benchmark)


def pytest_configure(config: pytest.Config) -> None:
    warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
    if config.getoption("--bench-threads", 0):
        torch.set_num_threads(config.getoption("--bench-threads"))


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@pytest.fixture(scope="session")
def package_versions() -> dict[str, str]:
    """The versions of the packages being compared, for a suite's ``extra_info``."""
    return versions()


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--bench-quick"))


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated at the peak of one call of ``fn`` above what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    # "Total Allocated" is the profiler's running count; before the first event it was the first
    # event's total less that event's own bytes
    memory = [
        e["args"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    ]
    if not memory:
        return 0
    base = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, max(m["Total Allocated"] for m in memory) - base)


@pytest.fixture
def measure(benchmark, request: pytest.FixtureRequest) -> Callable[..., None]:
    """``measure(fn, device=, case=, impl=, pass_=, **info)``: time ``fn`` and record its peak memory."""
    rounds = request.config.getoption("--bench-rounds")

    def run(
        fn: Callable[[], object],
        *,
        device: torch.device,
        case: str,
        impl: str,
        pass_: str,
        rounds: int = rounds,
        **info: object,
    ) -> None:
        fn()  # first call outside the timing: lazy initialisation, kernel compilation
        peak = peak_memory(fn, device)
        benchmark.group = f"{case} {pass_} [{device.type}]"
        benchmark.extra_info.update(
            case=case,
            impl=impl,
            device=device.type,
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            threads=torch.get_num_threads(),
            quick=bool(request.config.getoption("--bench-quick")),
            load_average=round(os.getloadavg()[0], 2),
            peak_bytes=peak,
            versions=versions(),
            **{"pass": pass_},
            **info,
        )

        def timed() -> None:
            fn()
            synchronize(device)

        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)

    return run


def smooth_field(shape: tuple[int, ...], magnitude: float, seed: int) -> torch.Tensor:
    """A smooth random displacement ``(B, ndim, *spatial)`` of about ``magnitude`` voxels."""
    g = torch.Generator().manual_seed(seed)
    batch, spatial = shape[0], shape[2:]
    coarse = torch.randn(batch, len(spatial), *[max(s // 16, 2) for s in spatial], generator=g)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    field = torch.nn.functional.interpolate(coarse, size=spatial, mode=mode, align_corners=True)
    return (magnitude * field).contiguous()


def smooth_image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A textured image in [0, 1]: smooth blobs plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    spatial = shape[2:]
    coarse = torch.rand(shape[0], shape[1], *[max(s // 8, 2) for s in spatial], generator=g)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    image = torch.nn.functional.interpolate(coarse, size=spatial, mode=mode, align_corners=True)
    return (0.9 * image + 0.1 * torch.rand(shape, generator=g)).contiguous()


@pytest.fixture(scope="session")
def make() -> SimpleNamespace:
    """The data makers, for the benchmark modules (which cannot import this conftest)."""
    return SimpleNamespace(image=smooth_image, field=smooth_field)
