"""Benchmarks: several models on the same pairs, in one table with paired statistics.

Each model registers every pair of its dataset (the same files, each preprocessed as that model
was trained) and is measured as :func:`~regzoo.engine.evaluate.evaluate` measures it. Every
finished (model, pair) is written at once (``cases/<model>/<pair>.json``, atomically), so an
interrupted benchmark resumes where it stopped. When all are done the folder receives:

- ``table.md`` and ``table.csv``: per model (and the identity) and metric, the mean, standard
  deviation, median and 30th percentile over pairs; runtime per pair;
- ``cases.csv``: every pair's values for every model;
- ``wilcoxon.csv`` (and a section of ``table.md``): for every two models and every metric, the
  two-sided Wilcoxon signed-rank p-value of their paired per-pair values (scipy);
- ``box_<metric>.png``: the per-pair values of each model side by side;
- ``overview_<model>.png``: each model on its median pair (by Dice, else the first metric);
- ``environment.json``: device, threads, versions of Python, torch and regzoo.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import platform
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from ..atomic import atomic_path, write_json, write_text
from ..errors import DataError, UserError
from ..registry import build
from .evaluate import draw_overview, evaluate_pair, split_cases, summarize_cases

__all__ = [
    "Contender",
    "BENCHMARK_FILES",
    "check_out",
    "start_benchmark",
    "run_benchmark",
    "model_slug",
    "summary_table",
]

#: What a benchmark writes at the top of its folder (besides ``cases/`` and the PNGs).
BENCHMARK_FILES = ("benchmark.json", "table.md", "table.csv", "cases.csv", "wilcoxon.csv")
_SUMMARY = ("mean", "std", "median", "p30")


@dataclass
class Contender:
    """One model of a benchmark: its label in the table, the model, and its pairs."""

    label: str
    model: torch.nn.Module
    dataset: Dataset


def model_slug(label: str) -> str:
    """A file-name form of a model's label (``runs/vxm/last.pt`` -> ``runs_vxm_last.pt``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _case_path(out: Path, slug: str, index: int) -> Path:
    return out / "cases" / slug / f"{index:05d}.json"


def _batch(dataset: Dataset, index: int, device: torch.device) -> dict[str, Any]:
    """Pair ``index`` as a batch of one, collated as :func:`~regzoo.engine.evaluate.evaluate`'s
    loader collates it."""
    batch = default_collate([dataset[index]])
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def run_benchmark(
    contenders: Sequence[Contender],
    out: Path,
    device: torch.device,
    metrics: Sequence[str] = ("dice", "hd95", "sdlogj", "folding"),
    max_pairs: int | None = None,
    label_warp: str = "nearest",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Register and measure every pair with every contender; write the report into ``out``.

    Pairs already measured in ``out/cases/`` are read, not redone (an interrupted benchmark).
    ``progress(label, done, total)`` is called after each pair.

    Returns ``{"models": {label: {"summary", "cases"}}, "identity": ..., "wilcoxon": ...}``.
    """
    built = {name: build("metric", name) for name in metrics}
    counts = {len(c.dataset) for c in contenders}
    if len(counts) != 1:
        raise DataError("the models' datasets differ in their number of pairs")
    total = min(counts.pop(), max_pairs) if max_pairs is not None else counts.pop()
    if total == 0:
        raise DataError("no pairs to benchmark: the evaluation split is empty")
    results: dict[str, list[dict[str, Any]]] = {}
    for contender in contenders:
        slug = model_slug(contender.label)
        contender.model.eval()
        table = getattr(contender.dataset, "label_table", None) if "dice" in metrics else None
        cases = []
        for i in range(total):
            path = _case_path(out, slug, i)
            if path.is_file():
                cases.append(json.loads(path.read_text()))
            else:
                batch = _batch(contender.dataset, i, device)
                case, _, _ = evaluate_pair(contender.model, batch, i, built, label_warp, table)
                write_json(path, case)
                cases.append(case)
            if progress is not None:
                progress(contender.label, i + 1, total)
        results[contender.label] = cases
    report = _report(results, built)
    _write(out, report, results, metrics)
    _overviews(out, contenders, results, device, label_warp, built)
    return report


def _report(
    results: Mapping[str, list[dict[str, Any]]], metrics: Mapping[str, Any]
) -> dict[str, Any]:
    first = next(iter(results.values()))
    for label, cases in results.items():
        for mine, theirs in zip(cases, first):
            paths = [(c.get("moving_path"), c.get("fixed_path")) for c in (mine, theirs)]
            if paths[0] != paths[1]:
                raise DataError(
                    f"{label}: pair {mine['pair']} is {paths[0]}, another model's is {paths[1]}; "
                    "the models must see the same pairs"
                )
    models = {}
    for label, cases in results.items():
        after, _ = split_cases(cases)
        models[label] = summarize_cases(after)
    _, before = split_cases(first)
    identity = summarize_cases(before)
    identity.pop("runtime_s", None)
    return {
        "identity": identity,
        "models": models,
        "wilcoxon": _wilcoxon(results, list(metrics)),
        "pairs": len(first),
    }


def _wilcoxon(results: Mapping[str, list[dict[str, Any]]], metrics: list[str]) -> list[dict]:
    """Two-sided Wilcoxon signed-rank p-values of every two models' paired values per metric."""
    from scipy.stats import wilcoxon

    rows = []
    for (a, ca), (b, cb) in itertools.combinations(results.items(), 2):
        for metric in [*metrics, "runtime_s"]:
            pairs = [
                (x[metric], y[metric])
                for x, y in zip(ca, cb)
                if metric in x and metric in y and math.isfinite(x[metric] + y[metric])
            ]
            diffs = [x - y for x, y in pairs]
            if len(pairs) < 2 or not any(diffs):
                p = float("nan")  # nothing to test: too few pairs, or identical values
            else:
                p = float(wilcoxon([x for x, _ in pairs], [y for _, y in pairs]).pvalue)
            rows.append({"model_a": a, "model_b": b, "metric": metric, "pairs": len(pairs), "p": p})
    return rows


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.4g}"


def _environment(device: torch.device) -> dict[str, Any]:
    from importlib.metadata import version

    env = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "regzoo": version("regzoo"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _write(
    out: Path,
    report: Mapping[str, Any],
    results: Mapping[str, list[dict[str, Any]]],
    metrics: Sequence[str],
) -> None:
    columns = [*metrics, "runtime_s"]
    rows = [("identity", report["identity"])] + list(report["models"].items())
    with atomic_path(out / "table.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "metric", *_SUMMARY])
        for label, summary in rows:
            for metric in columns:
                if metric in summary:
                    writer.writerow([label, metric, *(summary[metric][k] for k in _SUMMARY)])
    with atomic_path(out / "cases.csv") as tmp, tmp.open("w", newline="") as fh:
        fields = ["model", *dict.fromkeys(k for cs in results.values() for c in cs for k in c)]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for label, cases in results.items():
            writer.writerows({"model": label, **c} for c in cases)
    with atomic_path(out / "wilcoxon.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["model_a", "model_b", "metric", "pairs", "p"])
        writer.writeheader()
        writer.writerows(report["wilcoxon"])
    env = _environment_of(out)
    text = io.StringIO()
    text.write(f"# Benchmark: {report['pairs']} pairs\n\n")
    text.write(", ".join(f"{k} {v}" for k, v in env.items()) + "\n\n")
    shown = [m for m in columns if any(m in s for _, s in rows)]
    text.write(summary_table(report))
    text.write(
        "\nMean ± standard deviation over pairs; medians and 30th percentiles in table.csv.\n"
    )
    if report["wilcoxon"]:
        text.write("\n## Paired Wilcoxon signed-rank tests (two-sided p-values)\n\n")
        text.write("| models | " + " | ".join(shown) + " |\n")
        text.write("|---" * (len(shown) + 1) + "|\n")
        for (a, b), group in itertools.groupby(
            report["wilcoxon"], key=lambda r: (r["model_a"], r["model_b"])
        ):
            p = {r["metric"]: r["p"] for r in group}
            text.write(f"| {a} vs {b} | " + " | ".join(_fmt(p.get(m, math.nan)) for m in shown))
            text.write(" |\n")
    write_text(out / "table.md", text.getvalue())
    _box_plots(out, results, shown)


def summary_table(report: Mapping[str, Any]) -> str:
    """The Markdown table of a benchmark's report: mean ± std per model (and the identity) and
    metric."""
    rows = [("identity", report["identity"])] + list(report["models"].items())
    columns = list(dict.fromkeys(m for _, summary in rows for m in summary))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, summary in rows:
        cells = [
            f"{_fmt(summary[m]['mean'])} ± {_fmt(summary[m]['std'])}" if m in summary else "-"
            for m in columns
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _environment_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "environment.json").read_text())


def _box_plots(out: Path, results: Mapping[str, list[dict[str, Any]]], metrics: Sequence[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric in metrics:
        values = [[c[metric] for c in cs if metric in c] for cs in results.values()]
        if not any(values):
            continue
        fig, ax = plt.subplots(figsize=(1.6 * len(values) + 2, 4))
        ax.boxplot(values)
        ax.set_xticks(range(1, len(values) + 1), list(results), rotation=20, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per pair")
        fig.tight_layout()
        with atomic_path(out / f"box_{metric}.png", suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)


def _overviews(
    out: Path,
    contenders: Sequence[Contender],
    results: Mapping[str, list[dict[str, Any]]],
    device: torch.device,
    label_warp: str,
    metrics: Mapping[str, Any],
) -> None:
    """Each model on its median pair: the pair whose Dice (else first metric) is the median."""
    for contender in contenders:
        cases = results[contender.label]
        key = "dice" if "dice" in cases[0] else next(iter(metrics), "runtime_s")
        ranked = sorted(cases, key=lambda c: c.get(key, 0.0))
        median = ranked[(len(ranked) - 1) // 2]
        batch = _batch(contender.dataset, median["pair"], device)
        case, output, _ = evaluate_pair(contender.model, batch, median["pair"], metrics, label_warp)
        title = f"{contender.label}: median pair {median['pair']}"
        if key in case:
            title += f" ({key} {case[key]:.3f})"
        path = out / f"overview_{model_slug(contender.label)}.png"
        with atomic_path(path, suffix=".png") as tmp:
            draw_overview(batch, output, tmp, title)


def check_out(out: Path, resume: bool, force: bool) -> None:
    """Before any work: ``out`` is new or empty, or a benchmark's folder to ``resume`` or replace
    (``force``); anything else is one line."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / "benchmark.json").is_file():
        raise UserError(f"--out {out}: holds files that are not a benchmark's; choose another")
    if not (resume or force):
        raise UserError(
            f"--out {out}: a benchmark is there; --resume to finish it, --force to replace it"
        )


def start_benchmark(
    out: Path,
    labels: Sequence[str],
    data: str,
    metrics: Sequence[str],
    device: torch.device,
    resume: bool,
) -> None:
    """Prepare ``out`` (checked by :func:`check_out`): with ``resume`` the benchmark there must be
    of the same models, data and metrics; otherwise an earlier benchmark's files are removed.
    Records what runs where (``benchmark.json``, ``environment.json``)."""
    record = {"models": list(labels), "data": data, "metrics": list(metrics)}
    previous = out / "benchmark.json"
    if resume and previous.is_file():
        earlier = json.loads(previous.read_text())
        if earlier != record:
            raise UserError(
                f"--resume: {out} is a benchmark of {earlier['models']} on {earlier['data']} "
                f"({', '.join(earlier['metrics'])}); give the same models, --data and metrics"
            )
    elif previous.is_file():
        shutil.rmtree(out / "cases", ignore_errors=True)
        for child in out.iterdir():
            if child.name in (*BENCHMARK_FILES, "environment.json") or child.suffix == ".png":
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(previous, record)
    write_json(out / "environment.json", _environment(device))
