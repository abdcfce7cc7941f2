"""Summaries of per-case metric values, as the Learn2Reg scorer aggregates them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["summarize"]


def summarize(values: torch.Tensor | np.ndarray | Iterable[float]) -> dict[str, float]:
    """Mean, standard deviation, median and 30th percentile of per-case values.

    The Learn2Reg scorer reports for each metric the mean, the population standard deviation
    (``np.std``) and ``np.quantile(values, 0.3)`` as its robustness figure ("30"; for Dice the
    DSC30, the value below which the worst 30% of cases fall), with linear interpolation between
    cases. Cases with NaN (nothing to measure) are left out; ``n`` counts the cases used. With no
    case every figure is NaN.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    elif not isinstance(values, np.ndarray):
        values = list(values)
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "median": nan, "p30": nan, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "median": float(np.median(arr)),
        "p30": float(np.quantile(arr, 0.3)),
        "n": int(arr.size),
    }
