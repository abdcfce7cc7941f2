"""Commands on files: ``regzoo register`` (pairs of NIfTI images), ``regzoo apply`` (a written
field) and ``regzoo segment`` (an image, by a model that segments)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import DataError, UserError
from .app import DeviceOpt, JsonOpt, ThreadsOpt, app, preprocessing_of, read_model_argument

PathOpt = Optional[Path]


def _read_pairs(path: Path):
    from ..engine.register import PairFiles

    if not path.is_file():
        raise DataError(f"--pairs: file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save the CSV as UTF-8"
        ) from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
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


def _check_exists(*paths: Path | None) -> None:
    for p in paths:
        if p is not None and not Path(p).is_file():
            raise DataError(f"file not found: {p}")


def _check_counts(iterations: int | None, samples: int) -> None:
    """Counts a user gives on the command line: steps and samples >= 0 (threads: ThreadsOpt)."""
    if iterations is not None and iterations < 0:
        raise UserError(f"--iterations must be 0 or more steps, got {iterations}")
    if samples < 0:
        raise UserError(f"--samples must be 0 or more, got {samples}")


def _check_trajectory(
    steps: int | None, iterations: int | None, samples: int, learn2reg: bool
) -> None:
    """``--trajectory N``: N >= 1 states of the network's own registration (one pass)."""
    if steps is None:
        return
    if steps < 1:
        raise UserError(f"--trajectory must be 1 or more steps, got {steps}")
    if learn2reg:
        raise UserError("--trajectory writes a pair's folder; --learn2reg writes the field only")
    if samples:
        raise UserError("--trajectory follows one registration; it does not combine with --samples")
    if iterations:
        raise UserError(
            "--trajectory shows the network's states, which instance optimisation does not "
            "follow; give --iterations 0"
        )


def _check_affine(affine: bool, similarity: str, trajectory: int | None) -> None:
    """``--affine`` with a known ``--affine-similarity``; not with ``--trajectory``."""
    from ..engine.affine import AFFINE_SIMILARITIES

    if similarity not in AFFINE_SIMILARITIES:
        raise UserError(
            f"--affine-similarity must be one of {', '.join(AFFINE_SIMILARITIES)}, got "
            f"{similarity!r}"
        )
    if affine and trajectory is not None:
        raise UserError("--trajectory shows the network's own states; it does not follow --affine")


def _pair_ndim(p) -> int:
    """2 or 3, from the headers of a pair's images (checked, data not read)."""
    from ..data.io import image_ndim

    ndim = image_ndim(p.fixed)
    for path in (p.moving, p.moving_seg, p.fixed_seg):
        if path is not None and image_ndim(path) != ndim:
            raise DataError(
                f"{path}: a {image_ndim(path)}D image cannot be registered to the {ndim}D {p.fixed}"
            )
    return ndim


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def _write_error(target: Path, err: OSError) -> DataError:
    return DataError(f"{target}: cannot write ({err.strerror or err}); nothing written there")


def _plan_outputs(todo: list, out: Path, names: list[Path], force: bool, resume: bool) -> set[int]:
    """Check the outputs before any work; returns the indices of pairs to skip (``--resume``).

    An output (a pair's folder, or a ``--learn2reg`` file) that exists is skipped with
    ``resume``, replaced with ``force`` (only a folder of regzoo's outputs), else refused.
    """
    from ..engine.register import is_output_name

    if force and resume:
        raise UserError("give --force (replace outputs) or --resume (keep them), not both")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    for p in todo:
        for path in (p.moving, p.fixed, p.moving_seg, p.fixed_seg):
            if path is not None and _inside(path, out):
                raise UserError(f"--out {out} holds the input {path}; write the outputs elsewhere")
    done = {i for i, t in enumerate(names) if t.is_file() or (t.is_dir() and any(t.iterdir()))}
    if done and not (force or resume):
        first = names[min(done)]
        raise UserError(
            f"{first} exists ({len(done)} of {len(names)} outputs do); "
            "--force replaces them, --resume keeps them and registers the rest"
        )
    for i in sorted(done) if force else ():
        if names[i].is_dir():
            foreign = sorted(f.name for f in names[i].iterdir() if not is_output_name(f.name))
            if foreign:
                raise UserError(
                    f"--force replaces {names[i]} as a whole, but it holds {foreign[0]}, "
                    "which regzoo does not write; move it or choose another --out"
                )
    return done if resume else set()


def _load_model(model: str, weights: Path | None, ndim: int):
    """A checkpoint path, or a registered name (optionally with ``--weights``) built for ``ndim``.

    Returns ``(network, preprocessing)``: the preprocessing the checkpoint (or ``--weights``
    checkpoint) records, else the model's defaults, said in one line on stderr once the weights
    have loaded. A checkpoint whose config names another dimensionality than ``ndim`` is refused
    before the network is built.
    """
    import torch

    from ..engine.checkpoint import load_weights, model_from_checkpoint
    from ..registry import create_model, get_entry

    ckpt = read_model_argument(model)
    if ckpt is not None:
        cfg = ckpt["config"]
        net_ndim = cfg.get("model", {}).get("ndim") or cfg.get("data", {}).get("ndim")
        if net_ndim is not None and int(net_ndim) != ndim:
            raise DataError(
                f"{model}: a {int(net_ndim)}D model cannot register {ndim}D images; "
                f"use a {ndim}D checkpoint"
            )
        name = cfg["model"]["name"]
    else:
        name = get_entry("model", model).name
    prep, note = preprocessing_of(name, ckpt, model, weights)
    if ckpt is not None:
        net = model_from_checkpoint(ckpt, model)
    else:
        kwargs = {"ndim": ndim} if "ndim" in get_entry("model", name).default_config() else {}
        torch.manual_seed(0)  # an untrained network (instance optimisation alone) repeats
        net = create_model(name, **kwargs)
    if weights is not None:
        load_weights(net, weights)
    if note:
        typer.echo(note, err=True)
    return net, prep


REGISTER_HELP = """Register moving images to fixed ones; write warped image, field and warped labels.

A pair's outputs are written as one folder, complete or absent: --out itself for one pair;
with --pairs, one folder per pair in --out, named <moving>__to__<fixed> from the image paths
below the folder common to each column, without extension, "/" written "_"
(data/sub-01/T1w.nii.gz against atlas.nii.gz: sub-01_T1w__to__atlas); a pair listed twice
gets __row<N> appended (N: its row, 1 = first pair). --learn2reg writes
disp_<fixed id>_<moving id>.nii.gz files into --out instead, ids from Learn2Reg's names
(TASK_0001_0000.nii.gz). Existing outputs are refused unless --force (replace each pair's
folder as a whole) or --resume (skip pairs already written).
"""


@app.command("register", help=REGISTER_HELP)
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
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing outputs (each pair's whole folder).")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Skip pairs whose outputs exist (an interrupted batch)."),
    ] = False,
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
    trajectory: Annotated[
        Optional[int],
        typer.Option(
            "--trajectory",
            help="Also write N intermediate states: ddf_stepNN.nii.gz and warped_trajectory.nii.gz.",
        ),
    ] = None,
    learn2reg: Annotated[
        bool, typer.Option("--learn2reg", help="Write disp_FIXED_MOVING.nii.gz only.")
    ] = False,
    affine: Annotated[
        bool,
        typer.Option(
            "--affine",
            help="Pre-align each pair affinely first (intensity-based); the written field "
            "composes the affine and the model's field.",
        ),
    ] = False,
    affine_similarity: Annotated[
        str,
        typer.Option(
            "--affine-similarity",
            help="Similarity of --affine: ncc (same contrast) or mi (different contrasts).",
        ),
    ] = "ncc",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """``regzoo register`` (its help text is :data:`REGISTER_HELP`)."""
    from ..atomic import remove_stale
    from ..engine.register import (
        PairFiles,
        check_result,
        learn2reg_name,
        load_pair,
        output_names,
        register_pair,
        trajectory_of,
        write_outputs,
    )
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
    _check_counts(iterations, samples)
    _check_trajectory(trajectory, iterations, samples, learn2reg)
    _check_affine(affine, affine_similarity, trajectory)
    for p in todo:
        _check_exists(p.moving, p.fixed, p.moving_seg, p.fixed_seg)
    if learn2reg:
        targets = [out / learn2reg_name(p.fixed, p.moving) for p in todo]
        for i, t in enumerate(targets):
            if targets.index(t) != i:
                j = targets.index(t)
                raise DataError(
                    f"--learn2reg: {todo[j].moving} -> {todo[j].fixed} and {todo[i].moving} -> "
                    f"{todo[i].fixed} would both be written to {t.name}"
                )
    else:
        targets = [out / n for n in output_names(todo)] if pairs is not None else [out]
    skip = _plan_outputs(todo, out, targets, force, resume)
    ndims = {_pair_ndim(p) for p in todo}
    if len(ndims) > 1:
        raise DataError(f"{pairs}: lists both 2D and 3D pairs; one model registers one kind")
    ndim = ndims.pop()
    if out.is_dir() and (pairs is not None or learn2reg):
        remove_stale(out)  # left by a killed batch
    runtime = setup_runtime(device, threads)
    net, preprocessing = _load_model(model, weights, ndim)
    net = net.to(runtime.device).eval()
    if net.reads_labels:
        for p in todo:
            if p.moving_seg is None or p.fixed_seg is None:
                raise UserError(
                    f"{model} reads both images' label maps (its regions): give --moving-seg "
                    f"and --fixed-seg{' (seg columns in --pairs)' if pairs is not None else ''}"
                )
    steps = net.io_iterations if iterations is None else iterations
    if trajectory is not None:  # the states of the network's own pass (checked above)
        steps = 0
    report = []
    for i, (p, target) in enumerate(zip(todo, targets, strict=True)):
        entry = {"moving": str(p.moving), "fixed": str(p.fixed)}
        if i in skip:
            report.append({**entry, "skipped": str(target)})
            if not as_json:
                typer.echo(f"{target}: written by an earlier run, skipped (--resume)")
            continue
        loaded = load_pair(p, preprocessing, net.label_table if net.reads_labels else None)
        result, history = register_pair(
            net, loaded, steps, samples, runtime.device, lr, affine_similarity if affine else None
        )
        check_result(p, result, net, 0 if samples else steps, lr)
        states = None
        if trajectory is not None:
            states = trajectory_of(net, p, loaded, trajectory, runtime.device)
        try:
            if learn2reg:
                written = write_outputs(out, loaded, result, target.name)
            else:
                written = write_outputs(
                    target,
                    loaded,
                    result,
                    label_table=net.label_table,
                    replace=force,
                    trajectory=states,
                )
        except OSError as err:
            raise _write_error(target, err) from None
        entry["files"] = [str(w) for w in written]
        if history:
            entry["objective"] = {"before": history[0], "after": history[-1], "iterations": steps}
        report.append(entry)
        if not as_json:
            extra = f"  (objective {history[0]:.4g} -> {history[-1]:.4g})" if history else ""
            where = target.parent if learn2reg else target
            typer.echo(
                f"{p.moving.name} -> {p.fixed.name}: {', '.join(w.name for w in written)} in {where}{extra}"
            )
    if as_json:
        typer.echo(json.dumps(report, indent=2))


@app.command("apply")
def apply_command(
    ddf: Annotated[
        Path, typer.Argument(help="A displacement field written by regzoo register (ddf.nii.gz).")
    ],
    image: Annotated[Path, typer.Argument(help="The image (or label map) to warp.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output file; an existing folder gets the image's file name in it "
            "(an input's own path is refused).",
        ),
    ] = Path("warped.nii.gz"),
    labels: Annotated[
        bool, typer.Option("--labels", help="A label map: nearest-neighbour sampling.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
) -> None:
    """Apply a written field to another image on the fixed grid (nearest for labels)."""
    import numpy as np
    import torch

    from ..data.grid import resample, same_grid
    from ..data.io import load_ddf, load_image, save_image

    _check_exists(ddf, image)
    if out.is_dir():
        out = out / image.name
    for given in (ddf, image):
        if os.path.abspath(out) == os.path.abspath(given) or (out.exists() and out.samefile(given)):
            raise UserError(f"--out {out} is the input {given}; write the result elsewhere")
    if out.is_dir():
        raise UserError(f"--out {out}: a folder is in the way")
    if out.exists() and not force:
        raise UserError(f"--out {out} exists; --force replaces it")
    field, finfo = load_ddf(ddf)
    array, info = load_image(image, label=labels)
    if info.ndim != finfo.ndim:
        raise DataError(f"{image}: a {info.ndim}D image does not fit the {finfo.ndim}D field {ddf}")
    t = torch.from_numpy(np.ascontiguousarray(array))[None]
    # one interpolation in physical space, whichever grid the image lies on
    warped = resample(
        t,
        info.grid_affine,
        finfo.shape,
        finfo.grid_affine,
        "nearest" if labels else "bilinear",
        ddf=torch.from_numpy(field),
    )
    on_field_grid = same_grid(info.shape, info.grid_affine, finfo.shape, finfo.grid_affine)
    try:
        save_image(warped, info if on_field_grid else finfo, out)
    except OSError as err:
        raise _write_error(out, err) from None
    typer.echo(f"wrote {out}")


@app.command("segment")
def segment_command(
    model: Annotated[
        str,
        typer.Argument(help="A checkpoint of a model that segments, or a registered name."),
    ],
    image: Annotated[Path, typer.Option("--image", help="The image to segment.")],
    out: Annotated[Path, typer.Option("--out", help="The label map to write (.nii.gz).")],
    pair_with: Annotated[
        PathOpt,
        typer.Option(
            "--pair-with",
            help="The other image of the pair, for models that segment pairs (default: the "
            "image itself).",
        ),
    ] = None,
    weights: Annotated[
        PathOpt, typer.Option("--weights", help="Weights for a registered model name.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Segment an image with a model that segments (its moving_seg / fixed_seg output).

    The image is the pair's fixed image (its moving image --pair-with, or itself); a model that
    segments only moving images segments it as the moving image instead. The label map is written
    atomically in the image's own geometry, with the original label values of the model's
    training data, never over an existing file without --force.
    """
    import torch

    from ..atomic import atomic_path
    from ..data.io import load_image, save_image
    from ..engine import setup_runtime
    from ..engine.register import PairFiles, load_pair, predicted_labels

    _check_exists(image, pair_with)
    other = image if pair_with is None else pair_with
    for given in (image, other):
        if os.path.abspath(out) == os.path.abspath(given):
            raise UserError(f"--out {out} is the input {given}; write the result elsewhere")
    if out.is_dir():
        raise UserError(f"--out {out}: a folder is in the way")
    if out.exists() and not force:
        raise UserError(f"--out {out} exists; --force replaces it")
    ndim = load_image(image)[1].ndim
    runtime = setup_runtime(device, threads)
    net, preprocessing = _load_model(model, weights, ndim)
    net = net.to(runtime.device).eval()
    if net.reads_labels:
        raise UserError(f"{model} needs label maps to register; it does not segment images")
    result = None
    for files, key in (
        (PairFiles(other, image), "fixed_seg"),
        (PairFiles(image, other), "moving_seg"),
    ):
        pair = load_pair(files, preprocessing)
        batch = {k: v.to(runtime.device) for k, v in net.test_inputs(pair.batch).items()}
        with torch.no_grad():
            logits = getattr(net(batch), key)
        if logits is not None:
            info = pair.fixed_info if key == "fixed_seg" else pair.moving_info
            result = predicted_labels(logits, net.label_table)[0], info, pair.grid_affine
            break
    if result is None:
        raise UserError(f"{model} does not segment images (no moving_seg or fixed_seg output)")
    labels, info, grid_affine = result
    try:
        with atomic_path(out, suffix=".nii.gz") as tmp:
            save_image(labels, info, tmp, affine=grid_affine)
    except OSError as err:
        raise _write_error(out, err) from None
    typer.echo(f"wrote {out}")
