"""Field regularisers: ``grad`` (diffusion), ``bending`` and the ``kl-prior``.

``grad`` and ``bending`` are called as ``loss(field)`` on a displacement or velocity field
``(B, ndim, *spatial)`` in voxel units; ``kl-prior`` as ``loss(mean, log_sigma)``. All return a
scalar to minimise.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from ..registry import Paper, register_loss
from ..spatial.transformers import RUECKERT_1999
from .lncc import VOXELMORPH_2019

__all__ = ["Grad", "BendingEnergy", "KLPrior", "degree_map"]

DALCA_2018 = Paper(
    "A. V. Dalca, G. Balakrishnan, J. Guttag, M. R. Sabuncu",
    "Unsupervised Learning for Fast Probabilistic Diffeomorphic Registration",
    "MICCAI",
    2018,
    "https://doi.org/10.1007/978-3-030-00928-1_82",
)


def _check_field(field: torch.Tensor) -> int:
    ndim = field.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(
            f"field must be (B, C, *spatial) with 2 or 3 spatial axes, got {tuple(field.shape)}"
        )
    return ndim


@register_loss(
    "grad",
    summary="Gradient (diffusion) regulariser, VoxelMorph Grad: mean forward differences per axis.",
    paper=VOXELMORPH_2019,
    tags=("2d", "3d", "regularizer"),
)
class Grad(nn.Module):
    """``mean_i mean(|d_i u|^p)`` with forward differences ``d_i u`` along each spatial axis i.

    VoxelMorph's ``Grad``: each axis' differences (every channel, every voxel pair) are averaged,
    then the axes are averaged. ``p`` is 2 for ``penalty="l2"`` and 1 for ``"l1"``.

    Args:
        penalty: ``"l2"`` (squared differences, the usual diffusion term) or ``"l1"``.
        loss_mult: optional factor on the result (VoxelMorph passes ``int_downsize`` when it
            regularises a velocity field predicted at reduced resolution).
    """

    def __init__(self, penalty: str = "l2", loss_mult: float | None = None) -> None:
        super().__init__()
        if penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
        self.penalty = penalty
        self.loss_mult = loss_mult

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """``field``: ``(B, C, *spatial)``. Returns a scalar."""
        ndim = _check_field(field)
        total = field.new_zeros(())
        for axis in range(ndim):
            d = torch.diff(field, dim=axis + 2)
            total = total + (d.square() if self.penalty == "l2" else d.abs()).mean()
        grad = total / ndim
        return grad * self.loss_mult if self.loss_mult is not None else grad

    def extra_repr(self) -> str:
        return f"penalty={self.penalty!r}, loss_mult={self.loss_mult}"


def _second_difference(u: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """``d^2 u / dx_i dx_j`` on the interior ``[1:-1]`` of every spatial axis (compact stencils).

    ``[1, -2, 1]`` for ``i == j``; ``(u[+,+] - u[+,-] - u[-,+] + u[-,-]) / 4`` otherwise.
    """

    def shifted(offsets: dict[int, int]) -> torch.Tensor:
        index = [slice(None), slice(None)]
        for axis in range(u.dim() - 2):
            o = offsets.get(axis, 0)
            index.append(slice(1 + o, u.shape[axis + 2] - 1 + o))
        return u[tuple(index)]

    if i == j:
        return shifted({i: 1}) - 2.0 * shifted({}) + shifted({i: -1})
    return (
        shifted({i: 1, j: 1})
        - shifted({i: 1, j: -1})
        - shifted({i: -1, j: 1})
        + shifted({i: -1, j: -1})
    ) / 4.0


@register_loss(
    "bending",
    summary="Bending energy: mean of squared second derivatives, mixed terms counted twice.",
    paper=RUECKERT_1999,
    tags=("2d", "3d", "regularizer"),
)
class BendingEnergy(nn.Module):
    """Thin-plate bending energy ``sum_i u_ii^2 + 2 sum_{i<j} u_ij^2``, averaged.

    Second derivatives by compact central differences (``[1, -2, 1]`` and the 4-point mixed
    stencil) on the voxels at least one voxel from the border, in voxel units; the energy is
    averaged over batch, channels and those voxels (MONAI's ``BendingEnergyLoss`` with
    ``normalize=False``). Every spatial size must exceed 2.
    """

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """``field``: ``(B, C, *spatial)``. Returns a scalar."""
        ndim = _check_field(field)
        if min(field.shape[2:]) <= 2:
            raise ValueError(
                f"bending energy needs every spatial size > 2, got {tuple(field.shape[2:])}"
            )
        energy = 0.0
        for i in range(ndim):
            energy = energy + _second_difference(field, i, i).square()
            for j in range(i + 1, ndim):
                energy = energy + 2.0 * _second_difference(field, i, j).square()
        return energy.mean()


@lru_cache(maxsize=16)
def _degree(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    degree = torch.zeros(shape, device=device, dtype=dtype)
    for axis, n in enumerate(shape):
        count = torch.full((n,), 2.0, device=device, dtype=dtype)
        count[0] -= 1
        count[-1] -= 1
        view = [1] * len(shape)
        view[axis] = n
        degree = degree + count.view(view)
    return degree


def degree_map(
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Number of face neighbours of each voxel inside an image of ``shape`` (``2 ndim`` inside).

    The diagonal of the degree matrix D of the grid graph whose Laplacian ``D - A`` is the
    precision of VoxelMorph-diff's smoothness prior; cached, not to be modified in place.
    """
    return _degree(tuple(int(s) for s in shape), torch.device(device or "cpu"), dtype)


@register_loss(
    "kl-prior",
    summary="KL of a Gaussian velocity posterior from the Laplacian smoothness prior (VoxelMorph-diff).",
    paper=DALCA_2018,
    tags=("2d", "3d", "regularizer", "probabilistic"),
)
class KLPrior(nn.Module):
    """KL divergence of ``q(v) = N(mu, diag(exp(log_sigma)))`` from the prior ``N(0, (lambda L)^-1)``.

    Up to constants, with ``L = D - A`` the Laplacian of the voxel grid (D the
    :func:`degree_map`) and ``s = log_sigma``::

        KL = ndim / 2 * [ mean(lambda D exp(s) - s) + lambda * sum_i mean(½ (d_i mu)^2) / ndim ]

    where ``d_i mu`` are forward differences along axis i and the means run over batch, channels
    and voxels. This is VoxelMorph-diff's ``KL`` loss (also DDIR's). As in that code,
    ``log_sigma`` is the log of the *variance* of each component (``exp(s)`` multiplies D).

    Args:
        prior_lambda: precision of the prior, lambda (VoxelMorph-diff: 10; DDIR: 100).

    Called as ``loss(mean, log_sigma)`` with both ``(B, ndim, *spatial)`` (the velocity field's
    resolution), or ``loss(stacked)`` with ``stacked = cat([mean, log_sigma], 1)``.
    """

    def __init__(self, prior_lambda: float = 10.0) -> None:
        super().__init__()
        self.prior_lambda = prior_lambda

    def forward(self, mean: torch.Tensor, log_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Returns a scalar."""
        if log_sigma is None:
            mean, log_sigma = mean.chunk(2, dim=1)
        if mean.shape != log_sigma.shape:
            raise ValueError(
                f"kl-prior: mean {tuple(mean.shape)} and log_sigma {tuple(log_sigma.shape)} differ"
            )
        ndim = _check_field(mean)
        if mean.shape[1] != ndim:
            raise ValueError(
                f"kl-prior needs a mean and a log_sigma of {ndim} channels each, got {mean.shape[1]}"
            )
        degree = degree_map(mean.shape[2:], mean.device, mean.dtype)
        sigma_term = (self.prior_lambda * degree * log_sigma.exp() - log_sigma).mean()
        prec_term = (
            sum(torch.diff(mean, dim=a + 2).square().mean() for a in range(ndim)) * 0.5 / ndim
        )
        return 0.5 * ndim * (sigma_term + self.prior_lambda * prec_term)

    def extra_repr(self) -> str:
        return f"prior_lambda={self.prior_lambda}"
