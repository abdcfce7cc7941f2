"""Affine pre-alignment: an affine transform optimised on one pair's intensities.

For pairs that differ in pose (scanner position, a rotated head), before a deformable model
that expects affinely aligned inputs: the classical intensity-based affine registration (as ANTs'
and elastix's affine stages; Klein et al., "elastix: a toolbox for intensity-based medical image
registration", IEEE TMI 29(1), 2010), here by Adam on a multi-resolution pyramid. The similarity
is global normalised cross-correlation for images of one contrast, or mutual information for
pairs of different contrast. Translations start from the alignment of the intensity centres of
mass, as ANTs and elastix initialise them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..registry import build
from ..spatial import affine_to_ddf, resize_image, warp

__all__ = ["AFFINE_SIMILARITIES", "affine_align"]

#: ``--affine-similarity`` choices: the registered loss each one builds.
AFFINE_SIMILARITIES: dict[str, dict[str, object]] = {"ncc": {"name": "ncc"}, "mi": {"name": "mi"}}


def _centre_of_mass(image: torch.Tensor) -> torch.Tensor:
    """Intensity centre of mass ``(B, ndim)``, centred voxel coordinates, of ``(B, C, *S)``."""
    shape = image.shape[2:]
    weight = image.sum(1).clamp_min(0)
    total = weight.flatten(1).sum(1).clamp_min(1e-12)
    centres = []
    for axis, n in enumerate(shape):
        coords = torch.arange(n, dtype=image.dtype, device=image.device) - (n - 1) / 2
        view = [1] * len(shape)
        view[axis] = n
        centres.append((weight * coords.view(1, *view)).flatten(1).sum(1) / total)
    return torch.stack(centres, 1)


def affine_align(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    similarity: str = "ncc",
    levels: Sequence[int] = (4, 2, 1),
    iterations: Sequence[int] = (200, 100, 50),
    lr: float = 0.01,
) -> torch.Tensor:
    """The affine transform ``(B, ndim, ndim + 1)`` that best aligns ``moving`` to ``fixed``.

    ``theta`` maps centred voxel coordinates of the fixed grid to the moving image's
    (:func:`~regzoo.spatial.affine_to_ddf` gives its displacement, voxels), the convention of the
    datasets' ``true_affine``.

    Args:
        moving, fixed: ``(B, C, *S)`` images on one grid.
        similarity: ``"ncc"`` (one contrast) or ``"mi"`` (different contrasts).
        levels: downsampling factor of each level, coarse to fine.
        iterations: Adam steps per level.
        lr: Adam's learning rate for the matrix entries and for the translation as a fraction
            of half the image size.

    Raises:
        ConfigError: an unknown ``similarity``, or ``levels`` and ``iterations`` of different
            lengths.
    """
    if similarity not in AFFINE_SIMILARITIES:
        raise ConfigError(
            f"affine similarity must be one of {', '.join(AFFINE_SIMILARITIES)}, got {similarity!r}"
        )
    if len(levels) != len(iterations) or not levels:
        raise ConfigError(f"affine levels {list(levels)} and iterations {list(iterations)} differ")
    loss = build("loss", AFFINE_SIMILARITIES[similarity]).to(fixed.device)
    batch, ndim, shape = fixed.shape[0], fixed.dim() - 2, fixed.shape[2:]
    half = torch.tensor([(n - 1) / 2 for n in shape], dtype=fixed.dtype, device=fixed.device)
    matrix = torch.zeros(batch, ndim, ndim, dtype=fixed.dtype, device=fixed.device)
    shift = ((_centre_of_mass(moving) - _centre_of_mass(fixed)) / half).detach()
    matrix.requires_grad_(True)
    shift.requires_grad_(True)
    optimiser = torch.optim.Adam([matrix, shift], lr=lr)
    eye = torch.eye(ndim, dtype=fixed.dtype, device=fixed.device)

    def theta() -> torch.Tensor:
        return torch.cat([eye + matrix, (shift * half)[..., None]], 2)

    with torch.enable_grad():
        for factor, steps in zip(levels, iterations):
            size = [max(2, -(-n // int(factor))) for n in shape]
            m, f = resize_image(moving, size), resize_image(fixed, size)
            # the same transform in this level's voxels: x -> S A S^-1 x + S b
            scale = torch.tensor(
                [(s - 1) / (n - 1) for s, n in zip(size, shape)],
                dtype=fixed.dtype,
                device=fixed.device,
            )
            for _ in range(int(steps)):
                t = theta()
                linear = scale[:, None] * t[:, :, :ndim] / scale[None, :]
                coarse = torch.cat([linear, scale[:, None] * t[:, :, ndim:]], 2)
                optimiser.zero_grad(set_to_none=True)
                loss(warp(m, affine_to_ddf(coarse, size)), f).backward()
                optimiser.step()
    return theta().detach()
