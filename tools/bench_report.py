"""Write BENCHMARKS.md from the committed pytest-benchmark JSON (never typed by hand).

Usage::

    pytest benchmarks --ignore=benchmarks/test_bench_cli.py \
        --benchmark-json=benchmarks/results/cpu.json        # and cuda.json on a GPU
    pytest benchmarks/test_bench_cli.py --benchmark-json=benchmarks/results/cli.json
    python tools/bench_report.py [JSON ...] [--out BENCHMARKS.md]

Ratios use each benchmark's *minimum* round time (the least disturbed by other processes); the
median is shown beside it. Each JSON file is one run on one machine; a file holding CUDA results
also gets the bandwidth floor of the memory-bound kernels: bytes that must move / measured copy
bandwidth (the ``copy`` benchmark of the same run).

A results file that is not pytest-benchmark output but names a ``suite`` (e.g. ``transmorph-cpu``)
is rendered by the suite's own script, ``benchmarks/test_<first word>.py --render FILE``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = (
    "pytest benchmarks --ignore=benchmarks/test_bench_cli.py "
    "--benchmark-json=benchmarks/results/cpu.json\n"
    "pytest benchmarks/test_bench_cli.py --benchmark-json=benchmarks/results/cli.json\n"
    "python tools/bench_report.py"
)
# (label, case prefix, pass, numerator impl, denominator impl, bound, kind, goal)
# kind "max": numerator/denominator must be <= bound; "min": must be >= bound; "seconds": the
# numerator's best time must be <= bound seconds (no denominator).
TARGETS = [
    ("warp 3D fwd+bwd vs MONAI Warp", "warp 3d", "forward+backward", "regzoo", "monai", 0.5, "max", None),
    ("warp 3D fwd+bwd vs bare grid_sample", "warp 3d", "forward+backward", "regzoo", "grid_sample", 1.0, "max", None),
    ("LNCC 3D fwd+bwd speed-up over neurite NCC", "lncc 3d", "forward+backward", "neurite", "regzoo", 2.5, "min", 5.0),
    ("VoxelMorph-2 step 2D vs MONAI parts", "voxelmorph-2 step 2d", "training step", "regzoo", "monai", 0.8, "max", None),
    ("VoxelMorph-2 step 3D vs MONAI parts", "voxelmorph-2 step 3d", "training step", "regzoo", "monai", 0.8, "max", None),
    ("`regzoo list` start-up", "cli start-up", "command", "regzoo list", None, 1.0, "seconds", None),
    ("`regzoo plugins` start-up", "cli start-up", "command", "regzoo plugins", None, 1.0, "seconds", None),
]  # fmt: skip


@dataclass
class Result:
    case: str
    impl: str
    pass_: str
    device: str
    best: float  # seconds
    median: float
    rounds: int
    peak: int
    bytes: int | None
    load: float | None


def results_of(data: dict) -> list[Result]:
    """The benchmarks of one pytest-benchmark JSON, with the ``extra_info`` the suites record."""
    results = []
    for bench in data["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        results.append(
            Result(
                case=info["case"],
                impl=info["impl"],
                pass_=info["pass"],
                device=info["device"],
                best=stats["min"],
                median=stats["median"],
                rounds=stats["rounds"],
                peak=info.get("peak_bytes", 0),
                bytes=info.get("bytes"),
                load=info.get("load_average"),
            )
        )
    return results


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def machine(data: dict, results: list[Result]) -> list[str]:
    info = data["machine_info"]
    first = data["benchmarks"][0]["extra_info"] if data["benchmarks"] else {}
    cpu = info.get("cpu", {})
    versions = ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
    loads = [r.load for r in results if r.load is not None]
    devices = sorted({b["extra_info"].get("device_name", "cpu") for b in data["benchmarks"]})
    lines = [
        f"- Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores "
        f"(torch threads: {first.get('threads', '?')}), {info.get('system')} {info.get('release')}",
        f"- Devices: {', '.join(devices)}",
        f"- Versions: Python {info.get('python_version')}, {versions}",
        f"- Run: {data.get('datetime', '?')}, commit {data.get('commit_info', {}).get('id', '?')[:10]}"
        + (" (uncommitted changes)" if data.get("commit_info", {}).get("dirty") else ""),
    ]
    if loads:
        # The run's own threads make a load of about `threads`; more means other work competed.
        threads = first.get("threads") if isinstance(first.get("threads"), int) else 1
        lines.append(
            f"- Load average (1 min) during the run: {min(loads):.1f} to {max(loads):.1f}"
            + (
                "  **(a busy machine: treat the timings as preliminary)**"
                if max(loads) > threads + 1
                else ""
            )
        )
    if first.get("quick"):
        lines.append("- **Quick run (small shapes): a smoke test, the numbers mean nothing.**")
    return lines


def index(results: list[Result]) -> dict[tuple[str, str, str], dict[str, Result]]:
    table: dict[tuple[str, str, str], dict[str, Result]] = defaultdict(dict)
    for r in results:
        table[(r.device, r.case, r.pass_)][r.impl] = r
    return table


def targets(table: dict[tuple[str, str, str], dict[str, Result]]) -> list[str]:
    lines = [
        "| Criterion (CPU) | Measured | Target | Status |",
        "|---|---|---|---|",
    ]
    for label, prefix, pass_, num, den, bound, kind, goal in TARGETS:
        rows = [
            v
            for (d, c, p), v in table.items()
            if d == "cpu" and c.startswith(prefix) and p == pass_
        ]
        if not rows or num not in rows[0] or (den is not None and den not in rows[0]):
            continue  # measured in another results file
        if kind == "seconds":
            best = rows[0][num].best
            lines.append(
                f"| {label} | {best:.2f} s | <= {bound:g} s | {'met' if best <= bound else 'NOT met'} |"
            )
            continue
        ratio = rows[0][num].best / rows[0][den].best
        met = ratio <= bound if kind == "max" else ratio >= bound
        word = "x the time" if kind == "max" else "x faster"
        target = f"{'<=' if kind == 'max' else '>='} {bound:g}{word}"
        if goal is not None:
            target += f" (goal {goal:g}x)"
        lines.append(f"| {label} | {ratio:.2f}{word} | {target} | {'met' if met else 'NOT met'} |")
    return lines


def tables(table: dict[tuple[str, str, str], dict[str, Result]]) -> list[str]:
    lines = []
    for (device, case, pass_), impls in sorted(table.items()):
        if case == "copy":
            continue
        base = impls.get("regzoo")
        lines += [
            f"### {case}, {pass_} ({device})",
            "",
            "| Implementation | Best (ms) | Median (ms) | Rounds | Time / regzoo | Peak memory (MiB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in sorted(impls.items(), key=lambda kv: kv[1].best):
            ratio = f"{r.best / base.best:.2f}" if base else "-"
            lines.append(
                f"| {name} | {ms(r.best)} | {ms(r.median)} | {r.rounds} | {ratio} | {r.peak / 2**20:,.0f} |"
            )
        lines.append("")
    return lines


def bandwidth_floor(results: list[Result]) -> list[str]:
    copies = [r for r in results if r.case == "copy" and r.device == "cuda"]
    if not copies:
        return []
    bandwidth = copies[0].bytes / copies[0].best
    lines = [
        f"Measured copy bandwidth: {bandwidth / 1e9:,.0f} GB/s.",
        "",
        "| Case | Pass | regzoo (ms) | Bytes that must move (MB) | Floor (ms) | Time / floor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r.case, r.pass_)):
        if r.device != "cuda" or r.impl != "regzoo" or not r.bytes:
            continue
        floor = r.bytes / bandwidth
        lines.append(
            f"| {r.case} | {r.pass_} | {ms(r.best)} | {r.bytes / 1e6:,.0f} | {ms(floor)} | "
            f"{r.best / floor:.1f} |"
        )
    return lines


def foreign_section(path: Path, data: dict) -> list[str]:
    """The markdown a suite's own script renders for its results file (see the module docstring)."""
    script = ROOT / "benchmarks" / f"test_{str(data['suite']).split('-')[0]}.py"
    if not script.exists():
        return [f"## {path.name}", "", f"(no renderer: {script.relative_to(ROOT)} is missing)", ""]
    text = subprocess.run(
        [sys.executable, str(script), "--render", str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    return [text.strip(), ""]


def report(paths: list[Path]) -> str:
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by tools/bench_report.py from benchmarks/results/*.json: do not edit. -->",
        "",
        "regzoo beside the libraries a user would pick instead (MONAI, voxelmorph/neurite from PyPI), "
        "timed in the same run. Ratios use the best (minimum) round time; the suites are in "
        "`benchmarks/`, described in their docstrings. Regenerate the JSON and this page with:",
        "",
        "```",
        COMMAND,
        "```",
        "",
        "On a machine with a GPU the same command also times the `cuda` cases; save that run as "
        "`benchmarks/results/cuda.json`.",
        "",
    ]
    any_cuda = False
    for path in paths:
        data = json.loads(path.read_text())
        if "benchmarks" not in data:
            if "suite" in data:
                out += foreign_section(path, data)
            continue
        results = results_of(data)
        table = index(results)
        cuda = any(r.device == "cuda" for r in results)
        any_cuda |= cuda
        out += [f"## {path.name}", ""] + machine(data, results) + [""]
        criteria = targets(table)
        if len(criteria) > 2:  # more than the header
            out += ["Targets, measured on the CPU:", ""] + criteria + [""]
        if cuda:
            out += ["GPU bandwidth floor (bytes that must move / copy bandwidth):", ""]
            out += bandwidth_floor(results) + [""]
        out += tables(table)
    if not any_cuda:
        out += [
            "## GPU",
            "",
            "Still open: no GPU was available for these runs. The CUDA cases (the Triton warp "
            "beside its grid_sample path, the losses, the training step, and the copy bandwidth "
            "that gives each kernel its floor) are in the suites and skip without CUDA.",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="*", type=Path, help="default: benchmarks/results/*.json")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    paths = args.json or sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    if not paths:
        raise SystemExit("no benchmark JSON found: run the command in this script's docstring")
    from regzoo.atomic import write_text

    write_text(args.out, report(paths))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
