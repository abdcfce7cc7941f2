"""Registered evaluation metrics, computed as the Learn2Reg challenge computes them.

Each registered metric is built from its config and called with keyword arguments
``metric(ddf=, warped_label=, fixed_label=, spacing=, fixed_landmarks=, moving_landmarks=)``
(taking what it needs), returning a float64 CPU tensor ``(B,)``:

- ``dice``: mean Dice over the labels present (background excluded).
- ``hd95``: 95th percentile Hausdorff distance of label surfaces in mm, mean over labels present
  in both maps (equal to the ``surface-distance`` package the Learn2Reg scorer uses).
- ``sdlogj``: the scorer's ``std(log(clip(J + 3, 1e-9, 1e9)))`` over the interior;
  ``sdlogj-plain``: ``std(log(clip(J, 1e-9, 1e9)))``; ``folding``: fraction of J <= 0.
- ``tre``: mean landmark error in mm.

The per-label functions (:func:`dice_per_label`, :func:`hd95_per_label`) and :func:`summarize`
(mean, std, median, 30th percentile over cases) serve evaluation reports.
"""

from .base import Metric, as_label_map
from .jacobian import (
    Folding,
    SDLogJ,
    SDLogJPlain,
    folding,
    interior_jacobian,
    sdlogj,
    sdlogj_plain,
)
from .landmarks import TRE, landmark_errors, sample_field, tre
from .overlap import DiceMetric, dice_per_label, label_ids
from .summary import summarize
from .surface import HD95, hd95_per_label, robust_hausdorff, surfel_area_table

__all__ = [
    "Metric",
    "as_label_map",
    "label_ids",
    "dice_per_label",
    "DiceMetric",
    "hd95_per_label",
    "robust_hausdorff",
    "surfel_area_table",
    "HD95",
    "interior_jacobian",
    "sdlogj",
    "sdlogj_plain",
    "folding",
    "SDLogJ",
    "SDLogJPlain",
    "Folding",
    "sample_field",
    "landmark_errors",
    "tre",
    "TRE",
    "summarize",
]
