"""Evaluation on held-out pairs with the Learn2Reg challenge's metrics.

For every pair: the model's field and runtime, the moving labels warped with it (nearest, or
linear on one-hot), then Dice, HD95 (mm), SDlogJ, the folded fraction and, with landmarks, TRE.
The same metrics for the identity transform ("before") come alongside. Summaries follow Learn2Reg:
mean and standard deviation per metric and the robustness figure ``dice30`` (mean Dice of the
hardest 30% of cases).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..registry import build
from ..spatial import warp_labels
from .overview import render_overview

__all__ = ["evaluate", "summarize", "evaluate_case", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("dice", "hd95", "sdlogj", "folding", "runtime_s")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate_case(
    batch: Mapping[str, Any],
    ddf: torch.Tensor,
    metrics: Mapping[str, Any],
    label_warp: str = "nearest",
) -> dict[str, torch.Tensor]:
    """Metric values ``(B,)`` by name for one batch and its field ``ddf``."""
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
        "spacing": spacing,
        "fixed_landmarks": batch.get("fixed_landmarks"),
        "moving_landmarks": batch.get("moving_landmarks"),
    }
    out = {}
    for name, metric in metrics.items():
        needs_labels = name in ("dice", "hd95")
        needs_landmarks = name == "tre"
        if needs_labels and (warped_label is None or inputs["fixed_label"] is None):
            continue
        if needs_landmarks and inputs["fixed_landmarks"] is None:
            continue
        out[name] = metric(**inputs).detach().float().cpu()
    return out


def _robust(values: Sequence[float], fraction: float = 0.3) -> float:
    """Mean of the lowest ``fraction`` of values (Learn2Reg's robustness figure)."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return float("nan")
    k = max(1, int(round(len(ordered) * fraction)))
    return float(sum(ordered[:k]) / k)


def summarize(cases: Iterable[Mapping[str, float]]) -> dict[str, Any]:
    """Means (``summary``-style numbers), standard deviations and ``dice30`` over cases."""
    cases = list(cases)
    keys = sorted({k for c in cases for k, v in c.items() if isinstance(v, (int, float))})
    mean, std = {}, {}
    for k in keys:
        vals = torch.tensor([float(c[k]) for c in cases if k in c], dtype=torch.float64)
        vals = vals[~torch.isnan(vals)]
        mean[k] = float(vals.mean()) if len(vals) else float("nan")
        std[k] = float(vals.std(unbiased=False)) if len(vals) else float("nan")
    out = {"mean": mean, "std": std}
    if "dice" in keys:
        out["dice30"] = _robust([float(c["dice"]) for c in cases if "dice" in c])
    return out


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

    Returns a JSON-ready dict: ``summary`` and ``identity`` (means of each metric and
    ``runtime_s``), ``spread`` (standard deviations and ``dice30`` of both), and ``cases``
    (per-pair values, ``before_``-prefixed for the identity).
    """
    device = torch.device(device)
    if max_pairs is not None and len(dataset) > max_pairs:
        dataset = Subset(dataset, range(int(max_pairs)))
    built = {name: build("metric", name) for name in metrics}
    was_training = model.training
    model.eval()
    cases: list[dict[str, Any]] = []
    try:
        for i, batch in enumerate(DataLoader(dataset, batch_size=1)):
            batch = _to_device(batch, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            runtime = time.perf_counter() - start
            after = evaluate_case(batch, out.ddf, built, label_warp)
            before = evaluate_case(batch, torch.zeros_like(out.ddf), built, label_warp)
            if i == 0 and overview is not None:
                render_overview(
                    batch["moving"][0], batch["fixed"][0], out.warped[0], out.ddf[0], overview,
                    title=f"pair 0: Dice {float(after['dice'][0]):.3f}" if "dice" in after else "pair 0",
                )
            case: dict[str, Any] = {"pair": i}
            for key in ("moving_path", "fixed_path"):
                if key in batch:
                    case[key] = batch[key][0]
            case.update({k: float(v[0]) for k, v in after.items()})
            case["runtime_s"] = runtime
            case.update({f"before_{k}": float(v[0]) for k, v in before.items()})
            cases.append(case)
    finally:
        model.train(was_training)
    after_cases = [{k: v for k, v in c.items() if not k.startswith("before_")} for c in cases]
    before_cases = [
        {k[len("before_") :]: v for k, v in c.items() if k.startswith("before_")} | {"runtime_s": 0.0}
        for c in cases
    ]
    trained, identity = summarize(after_cases), summarize(before_cases)
    return {
        "summary": trained["mean"],
        "identity": identity["mean"],
        "spread": {
            "summary": {"std": trained["std"], "dice30": trained.get("dice30")},
            "identity": {"std": identity["std"], "dice30": identity.get("dice30")},
        },
        "cases": cases,
    }
