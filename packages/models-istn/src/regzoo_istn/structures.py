"""Structures of interest as single-channel maps: from label maps, or landmarks as Gaussian heatmaps.

ISTN (Lee et al., MICCAI 2019) supervises its image transformer with one map S per image that is
1 on the structures of interest and 0 elsewhere. The official 3D brain configuration makes S from a
segmentation by thresholding at zero (``normalizer_seg: threshold_zero``), i.e. the foreground of all
labels; landmarks come as Gaussian heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from regzoo.spatial import identity_grid

__all__ = ["label_structure", "landmark_heatmap"]


def label_structure(labels: torch.Tensor, structure_labels: Sequence[int] = ()) -> torch.Tensor:
    """Binary structure map of an integer label map.

    Args:
        labels: ``(B, 1, *S)`` integer labels.
        structure_labels: label values that make up the structure; empty means every non-zero
            label (the official ``threshold_zero``).

    Returns:
        ``(B, 1, *S)`` float32 in {0, 1}.
    """
    if structure_labels:
        wanted = torch.as_tensor(list(structure_labels), device=labels.device, dtype=labels.dtype)
        return torch.isin(labels, wanted).float()
    return (labels > 0).float()


def landmark_heatmap(landmarks: torch.Tensor, shape: Sequence[int], sigma: float) -> torch.Tensor:
    """Gaussian heatmap of landmarks: ``max_k exp(-|x - p_k|² / (2 σ²))``, 1 at each landmark.

    Args:
        landmarks: ``(B, N, ndim)`` voxel coordinates along tensor axes; rows holding NaN (missing
            landmarks) contribute nothing.
        shape: spatial size of the map.
        sigma: standard deviation in voxels.

    Returns:
        ``(B, 1, *shape)`` float in [0, 1].
    """
    b, n, ndim = landmarks.shape
    if ndim != len(shape):
        raise ValueError(f"landmarks have {ndim} coordinates for a {len(shape)}D image")
    grid = identity_grid(shape, landmarks.device, landmarks.dtype)  # (1, ndim, *S)
    heat = landmarks.new_zeros(b, 1, *shape)
    view = (b, ndim, *([1] * len(shape)))
    for k in range(n):
        p = landmarks[:, k]
        present = torch.isfinite(p).all(dim=1).view(b, *([1] * (len(shape) + 1)))
        d2 = ((grid - torch.nan_to_num(p).view(view)) ** 2).sum(dim=1, keepdim=True)
        g = torch.exp(-d2 / (2.0 * sigma**2))
        heat = torch.maximum(heat, torch.where(present, g, torch.zeros_like(g)))
    return heat
