"""Spatial transforms: warping, integration, composition, affine, B-spline.

Fields are ``(B, ndim, *spatial)`` displacements in voxel units; ``warped[x] = moving[x + ddf[x]]``.
Label maps are warped through :mod:`regzoo.labels` (``warp_labels``, ``one_hot``).
"""

from .affine import (
    affine_from_normalised,
    affine_inverse,
    affine_to_ddf,
    affine_to_normalised,
    affine_to_physical,
    compose_affine,
)
from .bspline import bspline_kernel, bspline_to_ddf, control_grid_shape
from .fields import (
    compose,
    integrate_velocity,
    invert,
    jacobian_determinant,
    jacobian_matrix,
    resize_field,
    resize_image,
)
from .grid import identity_grid, spatial_shape
from .warp import sampling_grid, warp

__all__ = [
    "warp",
    "sampling_grid",
    "identity_grid",
    "spatial_shape",
    "integrate_velocity",
    "compose",
    "resize_field",
    "resize_image",
    "invert",
    "jacobian_determinant",
    "jacobian_matrix",
    "affine_to_ddf",
    "affine_inverse",
    "affine_to_normalised",
    "affine_from_normalised",
    "affine_to_physical",
    "compose_affine",
    "bspline_kernel",
    "bspline_to_ddf",
    "control_grid_shape",
]
