"""Evaluation on held-out pairs with the Learn2Reg challenge's metrics.

For every pair: the model's field and runtime, the moving labels warped with it (nearest, or
linear on one-hot), then Dice, HD95 (mm), SDlogJ, the folded fraction and, with landmarks, TRE.
The same metrics for the identity transform ("before") come alongside. Summaries follow Learn2Reg:
mean, standard deviation, median and the 30th percentile per metric (for Dice, the robustness
figure DSC30).

A field or warped image holding NaN or Inf is an error naming the pair, never a result: metrics of
such a field would look like a valid registration (no folding). A NaN *metric* keeps its meaning,
"nothing to measure" (e.g. Dice of a label absent from both images).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import DataError, UserError
from ..labels import LabelTable, warp_labels
from ..metrics import dice_per_label, summarize
from ..models import RegistrationOutput
from ..registry import build
from .overview import render_overview

__all__ = [
    "evaluate",
    "evaluate_pair",
    "summarize_cases",
    "evaluate_case",
    "check_finite_output",
    "draw_overview",
    "split_cases",
    "figures",
]


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate_case(
    batch: Mapping[str, Any],
    ddf: torch.Tensor,
    metrics: Mapping[str, Any],
    label_warp: str = "nearest",
    out: RegistrationOutput | None = None,
    label_table: LabelTable | None = None,
) -> dict[str, torch.Tensor]:
    """Metric values ``(B,)`` by name for one batch and its field ``ddf``.

    ``out`` (the model's output) gives metrics its segmentations (``moving_seg``, ``fixed_seg``).
    ``label_table`` (the dataset's; the batch's maps hold its indices) adds ``dice_per_label``,
    ``(B, K-1)``: the Dice of every non-zero label of the table, in its order.
    """
    warped_label = None
    if "moving_label" in batch:
        warped_label = warp_labels(batch["moving_label"], ddf, mode=label_warp)
    spacing = batch.get("spacing")
    if spacing is None:
        spacing = torch.ones(ddf.shape[0], ddf.shape[1], device=ddf.device)
    inputs = {
        "ddf": ddf,
        "warped_label": warped_label,
        "fixed_label": batch.get("fixed_label"),
        "moving_label": batch.get("moving_label"),
        "moving_seg": None if out is None else out.moving_seg,
        "fixed_seg": None if out is None else out.fixed_seg,
        "spacing": spacing,
        "fixed_landmarks": batch.get("fixed_landmarks"),
        "moving_landmarks": batch.get("moving_landmarks"),
        "true_ddf": batch.get("true_ddf"),
    }
    out = {}
    for name, metric in metrics.items():
        if any(inputs.get(k) is None for k in getattr(metric, "requires", ())):
            continue  # e.g. no labels for Dice, no landmarks for TRE
        out[name] = metric(**inputs).detach().float().cpu()
    if label_table is not None and warped_label is not None and "fixed_label" in batch:
        labels = range(1, label_table.num_classes)
        out["dice_per_label"] = dice_per_label(warped_label, batch["fixed_label"], labels)
    return out


def check_finite_output(out: RegistrationOutput, pair: str) -> None:
    """Refuse a model output whose ``ddf`` or ``warped`` holds NaN or Inf; ``pair`` names it."""
    for name in ("ddf", "warped"):
        value = getattr(out, name)
        if value is not None and not bool(torch.isfinite(value).all()):
            raise DataError(
                f"{pair}: the model's {name} holds NaN or Inf values (check the input images and "
                "their headers, the weights, the learning rate)"
            )


def _pair_name(batch: Mapping[str, Any], index: int) -> str:
    paths = [batch[k][0] for k in ("moving_path", "fixed_path") if k in batch]
    return f"pair {index}" + (f" ({' -> '.join(map(str, paths))})" if paths else "")


def summarize_cases(cases: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, std, median and 30th percentile over cases (:func:`regzoo.metrics.summarize`)."""
    cases = list(cases)
    keys = dict.fromkeys(k for c in cases for k, v in c.items() if isinstance(v, (int, float)))
    return {k: summarize([float(c[k]) for c in cases if k in c]) for k in keys}


def split_cases(
    cases: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's values and the identity's (``before_`` stripped, runtime 0) of each case."""
    after = [
        {k: v for k, v in c.items() if k != "pair" and not k.startswith("before_")} for c in cases
    ]
    before = [
        {k[len("before_") :]: v for k, v in c.items() if k.startswith("before_")}
        | {"runtime_s": 0.0}
        for c in cases
    ]
    return after, before


def figures(
    summaries: Mapping[str, Mapping[str, float]],
    cases: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
) -> dict[str, float]:
    """One figure per key: the mean, or for a metric its :meth:`~regzoo.metrics.Metric.aggregate`
    of the cases' values (e.g. ``success-auc``, a figure of the whole set)."""
    return {
        k: metrics[k].aggregate([c[k] for c in cases if k in c]) if k in metrics else v["mean"]
        for k, v in summaries.items()
    }


def _dice_title(case: Mapping[str, Any]) -> str:
    return f": Dice {case['dice']:.3f}" if "dice" in case else ""


def draw_overview(
    batch: Mapping[str, Any], out: RegistrationOutput, path: Path, title: str
) -> None:
    """The overview of a batch's first pair (:func:`render_overview`); one line if unwritable."""
    try:
        render_overview(
            batch["moving"][0], batch["fixed"][0], out.warped[0], out.ddf[0], path, title=title
        )
    except OSError as err:
        raise UserError(f"{path}: cannot write ({err.strerror or err})") from None


@torch.no_grad()
def evaluate_pair(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    index: int,
    metrics: Mapping[str, Any],
    label_warp: str = "nearest",
    label_table: LabelTable | None = None,
) -> tuple[dict[str, Any], RegistrationOutput, dict[str, torch.Tensor]]:
    """Register one pair (a batch of one, on the model's device) and measure it.

    Returns the case (``pair``, the paths, each metric of the model's field, ``runtime_s``, and
    each metric of the identity prefixed ``before_``), the model's output, and the metric values
    of the model's field (with ``dice_per_label`` when ``label_table`` is given).
    """
    device = batch["fixed"].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = model(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    runtime = time.perf_counter() - start
    check_finite_output(out, _pair_name(batch, index))
    after = evaluate_case(batch, out.ddf, metrics, label_warp, out, label_table)
    before = evaluate_case(batch, torch.zeros_like(out.ddf), metrics, label_warp)
    case: dict[str, Any] = {"pair": index}
    for key in ("moving_path", "fixed_path"):
        if key in batch:
            case[key] = batch[key][0]
    case.update({k: float(v[0]) for k, v in after.items() if k != "dice_per_label"})
    case["runtime_s"] = runtime
    case.update({f"before_{k}": float(v[0]) for k, v in before.items()})
    return case, out, after


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    metrics: Sequence[str] = ("dice", "hd95", "sdlogj", "folding"),
    max_pairs: int | None = None,
    label_warp: str = "nearest",
    overview: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on every pair of ``dataset`` (one pair at a time).

    ``overview`` names a PNG to draw the first pair into (:func:`render_overview`).

    Returns a JSON-ready dict: ``summary`` and ``identity`` (each metric's summary figure, its
    mean over pairs for most, and the mean ``runtime_s``), ``spread`` (standard deviations and ``dice30`` of both), and ``cases``
    (per-pair values, ``before_``-prefixed for the identity). With ``dice`` and a dataset that
    has a ``label_table`` (its items hold table indices), ``dice_per_label`` gives the mean Dice of
    every non-zero label over the pairs (NaN where no pair has it), keyed by the original value.
    """
    device = torch.device(device)
    table = getattr(dataset, "label_table", None) if "dice" in metrics else None
    per_label: list[torch.Tensor] = []
    if max_pairs is not None and len(dataset) > max_pairs:
        dataset = Subset(dataset, range(int(max_pairs)))
    built = {name: build("metric", name) for name in metrics}
    was_training = model.training
    model.eval()
    cases: list[dict[str, Any]] = []
    try:
        for i, batch in enumerate(DataLoader(dataset, batch_size=1)):
            batch = _to_device(batch, device)
            case, out, after = evaluate_pair(model, batch, i, built, label_warp, table)
            if "dice_per_label" in after:
                per_label.append(after["dice_per_label"][0])
            if i == 0 and overview is not None:
                draw_overview(batch, out, overview, f"pair 0{_dice_title(case)}")
            cases.append(case)
    finally:
        model.train(was_training)
    if not cases:
        raise DataError("no pairs to evaluate: the evaluation split is empty")
    after_cases, before_cases = split_cases(cases)
    trained, identity = summarize_cases(after_cases), summarize_cases(before_cases)
    result = {
        "summary": figures(trained, after_cases, built),
        "identity": figures(identity, before_cases, built),
        "spread": {"summary": trained, "identity": identity},
        "cases": cases,
    }
    if per_label:
        means = torch.stack(per_label).nanmean(0).tolist()
        result["dice_per_label"] = dict(zip((str(v) for v in table.values[1:]), means))
    return result
