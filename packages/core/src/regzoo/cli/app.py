"""Commands of the ``regzoo`` CLI: list, info, plugins, train, evaluate (register/apply in register.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from omegaconf import OmegaConf

from ..errors import ConfigError, UserError
from ..registry import KINDS, get_entry, plugins

app = typer.Typer(
    name="regzoo",
    help="A model zoo for deep-learning image registration.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (>= 1).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Overrides = Annotated[
    Optional[list[str]],
    typer.Argument(help="Config overrides key=value, e.g. train.steps=200.", show_default=False),
]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _catalog():
    """The installed entries from manifests; each problem reading them is one stderr line."""
    from ..catalog import load_catalog

    catalog = load_catalog()
    for problem in catalog.problems:
        typer.echo(f"regzoo: warning: {problem}", err=True)
    return catalog


@app.command("list")
def list_command(
    pattern: Annotated[str, typer.Argument(help="Glob pattern, e.g. 'transmorph*'.")] = "*",
    kind: Annotated[
        Optional[str], typer.Option("--kind", help=f"One of: {', '.join(KINDS)}.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered models (or parts of another kind) with their summaries.

    Read from the installed manifests: neither the plugins nor torch are imported.
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    catalog = _catalog()
    kinds = [kind] if kind else (list(KINDS) if as_json else ["model"])
    names = {k: catalog.names(k, pattern) for k in kinds}
    if as_json:
        _echo_json({k: {n: catalog.get(k, n).to_dict() for n in v} for k, v in names.items()})
        return
    for k, entries in names.items():
        if not entries:
            continue
        width = max(len(n) for n in entries)
        for n in entries:
            e = catalog.get(k, n)
            tags = f"  [{', '.join(e.tags)}]" if e.tags else ""
            typer.echo(f"{n:<{width}}  {e.summary}{tags}")


def _parameter_counts(name: str, dims: tuple[int, ...], has_ndim: bool) -> dict[str, int]:
    from ..registry import create_model

    counts = {}
    for d in dims or (None,):
        model = create_model(name, ndim=d) if has_ndim and d else create_model(name)
        counts[f"{d}d" if d else "default"] = sum(p.numel() for p in model.parameters())
    return counts


def _check_importable(catalog: Any, kind: str, name: str) -> None:
    """Import the plugin that provides ``kind:name`` (not torch); its failure is a user error."""
    import importlib

    provider = catalog.provider(kind, name)
    if provider is None:
        return
    try:
        importlib.import_module(provider.module.split(":")[0])
    except Exception as err:  # the plugin's fault, reported in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{kind} {name!r} comes from plugin {provider.name!r} ({provider.distribution} "
            f"{provider.version}), which fails to import: {type(err).__name__}: {first}"
        ) from None


@app.command("info")
def info_command(
    name: Annotated[str, typer.Argument(help="Registered name.")],
    kind: Annotated[str, typer.Option("--kind", help="Kind of the entry.")] = "model",
    params: Annotated[
        bool, typer.Option("--params", help="Count parameters (builds the model: imports torch).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Summary, paper, tags, presets and default config of an entry (``--params``: sizes)."""
    if kind not in KINDS:
        raise ConfigError(f"--kind: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    catalog = _catalog()
    entry = catalog.get(kind, name)
    if entry is None:
        get_entry(kind, name)  # the registry's error: close matches, or the plugin that failed
        raise UserError(f"{kind} {name!r} is registered but missing from the manifests")
    _check_importable(catalog, kind, name)
    info = entry.to_dict()
    if params and kind == "model":
        info["parameters"] = _parameter_counts(name, entry.dims, "ndim" in entry.config)
    if as_json:
        _echo_json(info)
        return
    typer.echo(f"{entry.name} ({entry.kind}, from {entry.plugin})\n  {entry.summary}")
    if entry.paper:
        typer.echo(f"  paper: {entry.paper_text()}")
    if entry.tags:
        typer.echo(f"  tags: {', '.join(entry.tags)}")
    if "parameters" in info:
        typer.echo(
            "  parameters: " + ", ".join(f"{k} {v:,}" for k, v in info["parameters"].items())
        )
    if entry.presets:
        typer.echo(f"  presets: {', '.join(entry.presets)}")
    typer.echo("  default config:")
    for line in OmegaConf.to_yaml(OmegaConf.create(entry.config)).splitlines():
        typer.echo(f"    {line}")


@app.command("plugins")
def plugins_command(
    check: Annotated[
        bool, typer.Option("--check", help="Import every plugin and report its errors.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Installed plugins and what each declares; ``--check`` imports them and reports errors."""
    if check:
        found = [
            {
                "name": p.name,
                "module": p.module,
                "distribution": p.distribution,
                "version": p.version,
                "entries": p.entries,
                "problem": p.error or ("; ".join(p.rejected) if p.rejected else None),
            }
            for p in plugins()
        ]
    else:
        found = [vars(p) for p in _catalog().plugins]
    if as_json:
        _echo_json(found)
        return
    if not found:
        typer.echo("no plugins installed")
    for p in found:
        status = f"FAILED: {p['problem']}" if p["problem"] else f"{len(p['entries'])} entries"
        typer.echo(f"{p['name']}  {p['distribution']} {p['version']}  ({p['module']})  {status}")
    if check and any(p["problem"] for p in found):
        raise typer.Exit(1)


def _run_torchrun(nproc: int) -> int:
    args = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "-m",
        "regzoo",
        *cleaned,
    ]
    return subprocess.call(cmd)


@app.command("train")
def train_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    overrides: Overrides = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML config file.")] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run directory (default runs/NAME).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the run in --out (its files are removed).")
    ] = False,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="Initial weights file.")
    ] = None,
    nproc: Annotated[int, typer.Option("--nproc", help="Processes (torchrun shortcut).")] = 1,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a model; ends by evaluating held-out pairs (identity vs trained Dice)."""
    from ..config import resolve_config
    from ..engine import train
    from ..engine.checkpoint import load_checkpoint
    from ..engine.rundir import check_resumable

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_run_torchrun(nproc))
    out = out or Path("runs") / name
    items = list(overrides or [])
    if weights is not None:
        items.append(f"train.weights={weights}")
    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        check_resumable(ckpt, out / "last.pt", name)
        cfg = resolve_config(name, config, items, base=ckpt["config"])
    else:
        cfg = resolve_config(name, config, items)
    result = train(cfg, out, resume=resume, device=device, threads=threads, force=force)
    if result.metrics is None:
        return
    if as_json:
        _echo_json({k: result.metrics[k] for k in ("summary", "identity", "spread")})
        return
    _print_summary(result.metrics, f"{len(result.metrics['cases'])} held-out pairs")
    typer.echo(f"run directory: {out}")


def _print_summary(metrics: dict[str, Any], what: str) -> None:
    s, i = metrics["summary"], metrics["identity"]
    if "dice" in s:
        typer.echo(f"Dice ({what}): identity {i['dice']:.3f} -> trained {s['dice']:.3f}")
    for key, value in s.items():
        if key in ("dice", "runtime_s"):
            continue
        if key in i:
            typer.echo(f"  {key}: identity {i[key]:.4g} -> trained {value:.4g}")
        else:  # a measure of the model's own outputs (e.g. its segmentations)
            typer.echo(f"  {key}: {value:.4g}")
    typer.echo(f"  runtime: {s['runtime_s'] * 1000:.1f} ms per pair")


def _data_overrides(path: Path) -> list[str]:
    """``--data PATH``: a Learn2Reg dataset.json (or a folder holding one), else a NIfTI folder."""
    if path.is_file() and path.suffix == ".json":
        return ["data.name=learn2reg", f"data.root={path.parent}", f"data.json_file={path.name}"]
    if path.is_dir() and any(path.glob("*dataset*.json")):
        return ["data.name=learn2reg", f"data.root={path}"]
    if path.is_dir():
        return ["data.name=folder", f"data.root={path}"]
    raise UserError(f"--data: not a folder or dataset.json: {path}")


def read_model_argument(model: str) -> dict[str, Any] | None:
    """A command's MODEL argument: the regzoo checkpoint it names, or None for a registered name.

    An existing file, a name ending in ``.pt``/``.pth``/``.ckpt`` or a path with ``/`` is a
    checkpoint: missing, unreadable or foreign files are one-line errors naming the file.
    """
    from ..engine.checkpoint import load_checkpoint

    if not (Path(model).is_file() or model.endswith((".pt", ".pth", ".ckpt")) or "/" in model):
        return None
    ckpt = load_checkpoint(model)
    if "config" not in ckpt or "state_dict" not in ckpt:
        raise UserError(
            f"{model}: not a regzoo checkpoint (no config/state_dict); "
            "for other weights give a model name and --weights"
        )
    return ckpt


def preprocessing_of(name: str, ckpt: Any, model: str, weights: Path | None) -> tuple[Any, str]:
    """The preprocessing of a run and the line to say about it.

    What checkpoint ``model`` (``ckpt``) or a ``--weights`` checkpoint records, else the model's
    defaults (:func:`regzoo.data.preprocess.recorded_preprocessing`); the line (for stderr, once
    the weights have loaded) is empty unless a given file recorded none.
    """
    from ..data.preprocess import recorded_preprocessing
    from ..engine.checkpoint import load_checkpoint

    recorded = ckpt if ckpt is not None or weights is None else load_checkpoint(weights)
    config = recorded.get("config") if isinstance(recorded, Mapping) else None
    prep, found = recorded_preprocessing(
        config.get("data") if isinstance(config, Mapping) else None, name
    )
    note = ""
    if not found and recorded is not None:
        source = model if ckpt is not None else weights
        note = f"{source} records no preprocessing; using {name}'s defaults ({prep.describe()})"
    return prep, note


def _preprocessing_overrides(
    ckpt: Any, model: str, weights: Path | None = None
) -> tuple[list[str], str]:
    """``--data``: the recorded preprocessing (:func:`preprocessing_of`) as ``data.*`` overrides."""
    name = ckpt["config"]["model"]["name"] if ckpt is not None else get_entry("model", model).name
    prep, note = preprocessing_of(name, ckpt, model, weights)
    return [f"data.{k}={json.dumps(v)}" for k, v in prep.to_config().items()], note


def _evaluated_model(
    model: str, data: Path | None, weights: Path | None, items: list[str]
) -> tuple[Any, Any]:
    """The config and the model that ``evaluate MODEL [--data] [--weights] [key=value]`` measures:
    a checkpoint's, or a registered name's defaults and preset (with ``--weights`` loaded); with
    ``--data``, that data preprocessed as the model was trained. The note about preprocessing a
    given file did not record goes to stderr."""
    from ..config import resolve_config
    from ..engine.checkpoint import load_state, load_weights
    from ..engine.trainer import build_model
    from ..labels import LabelTable

    note = ""
    ckpt = read_model_argument(model)
    if data:
        preprocessing, note = _preprocessing_overrides(ckpt, model, None if ckpt else weights)
        items = _data_overrides(data) + preprocessing + items
    if ckpt is not None:
        cfg = resolve_config(None, None, items, base=ckpt["config"])
    else:
        cfg = resolve_config(model, None, items)
    net = build_model(cfg, model if ckpt is not None else None)
    if ckpt is not None:
        load_state(net, ckpt["state_dict"], model)
        net.label_table = LabelTable.from_checkpoint(ckpt)
    if weights is not None:
        load_weights(net, weights)
    if note:
        typer.echo(note, err=True)
    return cfg, net


@app.command("evaluate")
def evaluate_command(
    model: Annotated[
        str,
        typer.Argument(help="A checkpoint (last.pt / best.pt), or a registered model name."),
    ],
    overrides: Overrides = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="NIfTI folder or Learn2Reg dataset.json.")
    ] = None,
    weights: Annotated[
        Optional[Path],
        typer.Option("--weights", help="Weights for a registered model name (e.g. official ones)."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Folder for metrics.json and cases.csv (a run directory: its evaluation/).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a checkpoint (by default on the held-out split of the data it was trained on).

    A registered model name is evaluated with its default config and preset (``--weights`` loads
    weights into it, e.g. an official release), on ``--data`` or the preset's data.
    ``--out`` naming a run directory writes into its ``evaluation/`` subfolder, never over the
    run's own files.
    """
    from ..engine import build_dataset, evaluate, setup_runtime
    from ..engine.rundir import make_folder, report_dir

    runtime = setup_runtime(device, threads)
    cfg, net = _evaluated_model(model, data, weights, list(overrides or []))
    net.to(runtime.device)
    dataset = build_dataset(cfg, cfg.eval.split)
    if out is not None:
        out = make_folder(report_dir(out))
    overview = out / "overview.png" if out is not None and cfg.eval.overview else None
    res = evaluate(
        net,
        dataset,
        runtime.device,
        list(cfg.eval.metrics),
        cfg.eval.max_pairs,
        cfg.eval.label_warp,
        overview,
    )
    if out is not None:
        from ..engine.report import write_report

        write_report(res, out)
    if as_json:
        _echo_json({k: res[k] for k in ("summary", "identity", "spread", "cases")})
        return
    _print_summary(res, f"{len(res['cases'])} pairs")
    if out is not None:
        typer.echo(f"report: {out}")


@app.command("benchmark")
def benchmark_command(
    models: Annotated[
        list[str],
        typer.Argument(help="Checkpoints (last.pt) or registered model names, two or more."),
    ],
    data: Annotated[Path, typer.Option("--data", help="NIfTI folder or Learn2Reg dataset.json.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the tables and figures.")],
    max_pairs: Annotated[
        Optional[int], typer.Option("--max-pairs", help="Measure the first N pairs only.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Finish an interrupted benchmark in --out.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the benchmark in --out.")] = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Register every pair of --data with every model and compare them in one table.

    Writes table.md and table.csv (per model and metric: mean, std, median, 30th percentile),
    cases.csv (every pair), wilcoxon.csv (paired two-sided Wilcoxon signed-rank p-values),
    box_<metric>.png, overview_<model>.png (the model's median pair) and environment.json
    (device, threads, versions). Each model sees the pairs preprocessed as it was trained, and
    is measured as `regzoo evaluate` measures it. Finished pairs are kept as they finish:
    --resume continues an interrupted benchmark without redoing them.
    """
    from ..engine import build_dataset, setup_runtime
    from ..engine.benchmark import (
        Contender,
        check_out,
        run_benchmark,
        start_benchmark,
        summary_table,
    )

    if len(models) < 2:
        raise UserError("benchmark compares two or more models; give each checkpoint or name")
    if len(set(models)) != len(models):
        raise UserError(f"benchmark: a model is given twice in {models}")
    if max_pairs is not None and max_pairs < 1:
        raise UserError(f"--max-pairs must be 1 or more, got {max_pairs}")
    if resume and force:
        raise UserError("give --resume or --force, not both")
    if not data.exists():
        raise UserError(f"--data: not found: {data}")
    check_out(out, resume, force)
    runtime = setup_runtime(device, threads)
    contenders, metrics = [], None
    for name in models:
        cfg, net = _evaluated_model(name, data, None, [])
        wanted = list(cfg.eval.metrics)
        if metrics is not None and wanted != metrics:
            raise UserError(
                f"{name} is evaluated with metrics {wanted}, {models[0]} with {metrics}; "
                "a benchmark measures every model alike"
            )
        metrics = wanted
        net.to(runtime.device)
        contenders.append(Contender(name, net, build_dataset(cfg, cfg.eval.split)))
    assert metrics is not None
    start_benchmark(out, models, str(data), metrics, runtime.device, resume)
    bar = _PairProgress(len(models))
    report = run_benchmark(
        contenders, out, runtime.device, metrics, max_pairs, cfg.eval.label_warp, bar.update
    )
    bar.close()
    typer.echo(summary_table(report), nl=False)
    typer.echo(f"{report['pairs']} pairs, {len(models)} models: {out}")


class _PairProgress:
    """A rich progress bar over models and pairs on a terminal; a line per model otherwise."""

    def __init__(self, models: int) -> None:
        self.models, self.done_models = models, 0
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
            )
            self._bar.start()
            self._task = None

    def update(self, label: str, done: int, total: int) -> None:
        if self._bar is not None:
            if self._task is None or done == 1:
                self.done_models += self._task is not None
                description = f"[{self.done_models + 1}/{self.models}] {label}"
                self._task = self._bar.add_task(description, total=total)
            self._bar.update(self._task, completed=done)
        elif done == total:
            self.done_models += 1
            print(f"[{self.done_models}/{self.models}] {label}: {total} pairs", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
