"""Field quality per region of the fixed label map: where organs slide, a field may be smooth
inside each region and tear at their boundaries (DDIR, Chen et al., "Deformable image registration
with discontinuity preservation", 2021), so regularity is measured inside the regions and accuracy
at their boundaries.

- ``region-folding``: per region (every label of the fixed map, background included), the fraction
  of its voxels with J <= 0, J = det(I + grad u) by central differences, inside the region eroded
  by one voxel (so no difference crosses a boundary or the image border); averaged over regions.
- ``region-grad``: the same regions, the Grad-l2 energy per voxel (squared forward differences,
  averaged over axes and components, as the ``grad`` loss averages them); averaged over regions.
- ``boundary-error``: the mean distance in voxels between the field and the true field
  (``true_ddf``, carried by the synthetic data) over the voxels within ``distance`` voxels (3) of
  a region boundary.

A case where no region survives the erosion (or no boundary exists) gives NaN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..labels import labels_around, one_hot
from ..registry import register_metric
from ..spatial import jacobian_determinant
from .base import Metric, nanmean_rows

__all__ = [
    "eroded_regions",
    "region_folding",
    "region_grad",
    "boundary_error",
    "RegionFolding",
    "RegionGrad",
    "BoundaryError",
]


def eroded_regions(labels: torch.Tensor, voxels: int = 1) -> torch.Tensor:
    """One mask per label index present anywhere in the batch, each eroded by ``voxels`` (with
    the image border outside every region): ``(B, K, *S)`` bool, ``K = labels.max() + 1``.

    ``labels``: ``(B, 1, *S)`` label indices.
    """
    maps = one_hot(labels, int(labels.max()) + 1)
    width = 2 * voxels + 1
    pool = F.max_pool2d if maps.dim() == 4 else F.max_pool3d
    outside = F.pad(1.0 - maps, [voxels] * 2 * (maps.dim() - 2), value=1.0)
    return pool(outside, width, stride=1) == 0


def _region_means(values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, *S)`` within each region ``(B, K, *S)``, then over the regions
    with voxels: ``(B,)`` float64 (NaN where none has)."""
    regions = regions.double()
    count = regions.flatten(2).sum(2)
    total = (regions * values.double().unsqueeze(1)).flatten(2).sum(2)
    return nanmean_rows(torch.where(count > 0, total / count.clamp(min=1), torch.nan))


def region_folding(ddf: torch.Tensor, fixed_label: torch.Tensor) -> torch.Tensor:
    """Fraction of voxels with J <= 0 inside each eroded region, averaged over regions: ``(B,)``."""
    folded = (jacobian_determinant(ddf.detach().double()) <= 0).double()
    return _region_means(folded, eroded_regions(fixed_label))


def region_grad(ddf: torch.Tensor, fixed_label: torch.Tensor) -> torch.Tensor:
    """Grad-l2 energy per voxel (squared forward differences, mean over axes and components)
    inside each eroded region, averaged over regions: ``(B,)`` float64 (voxels^2)."""
    u = ddf.detach().double()
    ndim = u.dim() - 2
    energy = torch.zeros_like(u[:, 0])
    for axis in range(ndim):
        d = torch.diff(u, dim=axis + 2).square().mean(1)
        energy = energy + F.pad(d, [0, 0] * (ndim - 1 - axis) + [0, 1])
    return _region_means(energy / ndim, eroded_regions(fixed_label))


def boundary_error(
    ddf: torch.Tensor, true_ddf: torch.Tensor, fixed_label: torch.Tensor, distance: int = 3
) -> torch.Tensor:
    """Mean ``|ddf - true_ddf|`` (voxels) within ``distance`` voxels of a boundary of the fixed
    label map (a voxel whose 3^ndim neighbourhood holds two labels or more): ``(B,)`` float64."""
    boundary = (labels_around(fixed_label, int(fixed_label.max()) + 1) > 1).double()
    pool = F.max_pool2d if boundary.dim() == 4 else F.max_pool3d
    near = pool(boundary, 2 * distance + 1, stride=1, padding=distance)[:, 0] > 0
    error = (ddf.detach().double() - true_ddf.to(ddf.device).double()).norm(dim=1)
    count = near.flatten(1).sum(1)
    total = torch.where(near, error, 0.0).flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan)


class _RegionMetric(Metric):
    requires = ("ddf", "fixed_label")
    higher_is_better = False


@register_metric(
    "region-folding",
    summary="Folded fraction (J <= 0) inside each fixed-label region eroded by one voxel, "
    "averaged over regions.",
    tags=("2d", "3d", "field", "labels"),
)
class RegionFolding(_RegionMetric):
    """:func:`region_folding` of the field on the fixed label map."""

    def compute(self, *, ddf: torch.Tensor, fixed_label: torch.Tensor, **_: Any) -> torch.Tensor:
        return region_folding(ddf, fixed_label)


@register_metric(
    "region-grad",
    summary="Grad-l2 energy inside each fixed-label region eroded by one voxel, averaged over "
    "regions.",
    tags=("2d", "3d", "field", "labels"),
)
class RegionGrad(_RegionMetric):
    """:func:`region_grad` of the field on the fixed label map (voxels^2)."""

    unit = "voxels^2"

    def compute(self, *, ddf: torch.Tensor, fixed_label: torch.Tensor, **_: Any) -> torch.Tensor:
        return region_grad(ddf, fixed_label)


@register_metric(
    "boundary-error",
    summary="Mean distance to the true field within 3 voxels of the fixed labels' boundaries "
    "(data with true_ddf).",
    tags=("2d", "3d", "field", "labels", "synthetic"),
)
class BoundaryError(_RegionMetric):
    """:func:`boundary_error` of the field (voxels).

    Args:
        distance: how far from a boundary a voxel counts (voxels).
    """

    requires = ("ddf", "fixed_label", "true_ddf")
    unit = "voxels"

    def __init__(self, distance: int = 3) -> None:
        self.distance = int(distance)

    def compute(
        self,
        *,
        ddf: torch.Tensor,
        fixed_label: torch.Tensor,
        true_ddf: torch.Tensor,
        **_: Any,
    ) -> torch.Tensor:
        return boundary_error(ddf, true_ddf, fixed_label, self.distance)
