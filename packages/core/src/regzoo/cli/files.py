"""Commands on files: ``regzoo register`` (pairs of NIfTI images) and ``regzoo apply`` (a written field)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import DataError, UserError
from .app import DeviceOpt, JsonOpt, ThreadsOpt, app

PathOpt = Optional[Path]


def _read_pairs(path: Path):
    from ..engine.register import PairFiles

    if not path.is_file():
        raise DataError(f"--pairs: file not found: {path}")
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() == "moving":
        rows = rows[1:]
    pairs = []
    for n, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if len(cells) < 2 or len(cells) > 4:
            raise DataError(
                f"{path}:{n}: expected moving,fixed[,moving_seg[,fixed_seg]], got {len(cells)} columns"
            )
        files = [(path.parent / c) if c else None for c in cells] + [None] * (4 - len(cells))
        pairs.append(PairFiles(*files))
    if not pairs:
        raise DataError(f"{path}: no pairs listed")
    return pairs


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _check_exists(*paths: Path | None) -> None:
    for p in paths:
        if p is not None and not Path(p).is_file():
            raise DataError(f"file not found: {p}")


def _load_model(model: str, weights: Path | None, ndim: int):
    """A checkpoint path, or a registered name (optionally with ``--weights``) built for ``ndim``."""
    import torch

    from ..engine.checkpoint import load_checkpoint, load_weights, model_from_checkpoint
    from ..registry import create_model, get_entry

    if Path(model).is_file():
        ckpt = load_checkpoint(model)
        if "config" not in ckpt or "state_dict" not in ckpt:
            raise UserError(
                f"{model}: not a regzoo checkpoint; for other weights give a model name and --weights"
            )
        net, normalize = (
            model_from_checkpoint(ckpt),
            ckpt["config"].get("data", {}).get("normalize"),
        )
    else:
        entry = get_entry("model", model)
        kwargs = {"ndim": ndim} if "ndim" in entry.default_config() else {}
        torch.manual_seed(0)  # an untrained network (instance optimisation alone) repeats
        net, normalize = create_model(model, **kwargs), None
    if weights is not None:
        load_weights(net, weights)
    return net, normalize or "percentile"


@app.command("register")
def register_command(
    model: Annotated[
        str, typer.Argument(help="A checkpoint, or a registered model name (with --weights).")
    ],
    moving: Annotated[PathOpt, typer.Option("--moving", help="Moving image (NIfTI).")] = None,
    fixed: Annotated[PathOpt, typer.Option("--fixed", help="Fixed image (NIfTI).")] = None,
    moving_seg: Annotated[PathOpt, typer.Option("--moving-seg", help="Moving label map.")] = None,
    fixed_seg: Annotated[
        PathOpt, typer.Option("--fixed-seg", help="Fixed label map (for Dice).")
    ] = None,
    pairs: Annotated[
        PathOpt, typer.Option("--pairs", help="CSV of moving,fixed[,moving_seg[,fixed_seg]].")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("registered"),
    weights: Annotated[
        PathOpt, typer.Option("--weights", help="Weights for a registered model name.")
    ] = None,
    iterations: Annotated[
        Optional[int],
        typer.Option("--iterations", help="Instance-optimisation steps (model default)."),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option("--lr", help="Instance-optimisation learning rate (model default)."),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="Monte-Carlo samples (sampling models).")
    ] = 0,
    learn2reg: Annotated[
        bool, typer.Option("--learn2reg", help="Write disp_FIXED_MOVING.nii.gz only.")
    ] = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register moving images to fixed ones; write warped image, field and warped labels."""
    from ..engine.register import PairFiles, learn2reg_name, load_pair, register_pair, write_outputs
    from ..engine.runtime import setup_runtime

    if pairs is not None:
        if moving or fixed:
            raise UserError("give either --pairs or --moving/--fixed, not both")
        todo = _read_pairs(pairs)
    elif moving is None or fixed is None:
        raise UserError("register needs --moving and --fixed (or --pairs FILE)")
    else:
        todo = [PairFiles(moving, fixed, moving_seg, fixed_seg)]
    if lr is not None and not lr > 0:
        raise UserError(f"--lr must be a positive learning rate, got {lr}")
    for p in todo:
        _check_exists(p.moving, p.fixed, p.moving_seg, p.fixed_seg)
    runtime = setup_runtime(device, threads)
    net, normalize, report = None, "percentile", []
    for p in todo:
        loaded = load_pair(p, normalize)
        if net is None:  # the first pair tells the dimensionality a model name is built for
            net, wanted = _load_model(model, weights, loaded.fixed_info.ndim)
            net = net.to(runtime.device).eval()
            if wanted != normalize:
                normalize, loaded = wanted, load_pair(p, wanted)
        steps = net.io_iterations if iterations is None else iterations
        result, history = register_pair(net, loaded, steps, samples, runtime.device, lr)
        name = learn2reg_name(p.fixed, p.moving) if learn2reg else None
        target = out
        if not learn2reg and len(todo) > 1:
            target = out / f"{_stem(p.moving)}_to_{_stem(p.fixed)}"
        written = write_outputs(target, loaded, result, name, net.label_table)
        entry = {"moving": str(p.moving), "fixed": str(p.fixed), "files": [str(w) for w in written]}
        if history:
            entry["objective"] = {"before": history[0], "after": history[-1], "iterations": steps}
        report.append(entry)
        if not as_json:
            extra = f"  (objective {history[0]:.4g} -> {history[-1]:.4g})" if history else ""
            typer.echo(
                f"{p.moving.name} -> {p.fixed.name}: {', '.join(w.name for w in written)} in {target}{extra}"
            )
    if as_json:
        typer.echo(json.dumps(report, indent=2))


@app.command("apply")
def apply_command(
    ddf: Annotated[
        Path, typer.Argument(help="A displacement field written by regzoo register (ddf.nii.gz).")
    ],
    image: Annotated[Path, typer.Argument(help="The image (or label map) to warp.")],
    out: Annotated[Path, typer.Option("--out", help="Output file.")] = Path("warped.nii.gz"),
    labels: Annotated[
        bool, typer.Option("--labels", help="A label map: nearest-neighbour sampling.")
    ] = False,
) -> None:
    """Apply a written field to another image on the fixed grid (nearest for labels)."""
    import numpy as np
    import torch

    from ..data.grid import resample
    from ..data.io import load_ddf, load_image, save_image
    from ..labels import warp_labels
    from ..spatial import warp

    _check_exists(ddf, image)
    field, finfo = load_ddf(ddf)
    array, info = load_image(image, label=labels)
    if info.ndim != finfo.ndim:
        raise DataError(f"{image}: a {info.ndim}D image does not fit the {finfo.ndim}D field {ddf}")
    t = torch.from_numpy(np.ascontiguousarray(array))[None]
    same_grid = info.shape == finfo.shape and np.allclose(
        info.grid_affine, finfo.grid_affine, atol=1e-4
    )
    if not same_grid:
        t = resample(
            t, info.grid_affine, finfo.shape, finfo.grid_affine, "nearest" if labels else "bilinear"
        )
    u = torch.from_numpy(field)[None]
    warped = warp_labels(t[None], u) if labels else warp(t[None].float(), u)
    save_image(warped[0], info if same_grid else finfo, out)
    typer.echo(f"wrote {out}")
