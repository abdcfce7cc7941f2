"""Registered evaluation metrics, computed as the Learn2Reg challenge computes them.

Each registered metric is built from its config and called with keyword arguments
``metric(ddf=, warped_label=, fixed_label=, spacing=, fixed_landmarks=, moving_landmarks=)``
(taking what it needs), returning a float64 CPU tensor ``(B,)``:

- ``dice``: mean Dice over the labels present (background excluded).
- ``precision``, ``recall``: mean over labels of the warped label's fraction inside the fixed
  one, and of the fixed label's fraction the warped one covers.
- ``hd95``: 95th percentile Hausdorff distance of label surfaces in mm, mean over labels present
  in both maps (equal to the ``surface-distance`` package the Learn2Reg scorer uses); ``hd``:
  the same at the 100th percentile; ``asd``: average symmetric surface distance in mm.
- ``sdlogj``: the scorer's ``std(log(clip(J + 3, 1e-9, 1e9)))`` over the interior;
  ``sdlogj-plain``: ``std(log(clip(J, 1e-9, 1e9)))``; ``folding``: fraction of J <= 0.
- ``tre``: mean landmark error in mm.
- ``success-auc``: per pair its mean landmark error in mm; its summary (:meth:`Metric.aggregate`)
  is the normalised area under the success-rate curve over all pairs (thresholds 0-25 mm: pixels
  of a photograph).
- ``seg-dice`` (``image: moving | fixed``; aliases ``seg-dice-moving``, ``seg-dice-fixed``): the
  Dice of a model's own segmentation (``moving_seg`` / ``fixed_seg``) against the labels.
- ``region-folding``, ``region-grad``: the folded fraction and the Grad-l2 energy inside each region
  of the fixed label map eroded by one voxel, averaged over regions; ``boundary-error``: mean
  distance in voxels to the true field (``true_ddf``) within 3 voxels of region boundaries.

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
from .landmarks import TRE, SuccessAUC, landmark_errors, sample_field, success_auc, tre
from .overlap import (
    DiceMetric,
    Precision,
    Recall,
    dice_per_label,
    label_ids,
    overlap_counts,
    precision_per_label,
    recall_per_label,
)
from .regions import (
    BoundaryError,
    RegionFolding,
    RegionGrad,
    boundary_error,
    eroded_regions,
    region_folding,
    region_grad,
)
from .segmentation import SegmentationDice, segmentation_dice
from .summary import summarize
from .surface import (
    ASD,
    HD95,
    average_surface_distance,
    hd,
    hd95_per_label,
    robust_hausdorff,
    surface_distance_per_label,
    surface_distances,
    surfel_area_table,
)

__all__ = [
    "Metric",
    "as_label_map",
    "label_ids",
    "overlap_counts",
    "dice_per_label",
    "precision_per_label",
    "recall_per_label",
    "DiceMetric",
    "Precision",
    "Recall",
    "surface_distances",
    "surface_distance_per_label",
    "hd95_per_label",
    "robust_hausdorff",
    "average_surface_distance",
    "surfel_area_table",
    "HD95",
    "ASD",
    "hd",
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
    "success_auc",
    "SuccessAUC",
    "summarize",
    "segmentation_dice",
    "SegmentationDice",
    "eroded_regions",
    "region_folding",
    "region_grad",
    "boundary_error",
    "RegionFolding",
    "RegionGrad",
    "BoundaryError",
]
