"""Global image similarity losses: ``ncc`` (1 - Pearson r), ``mse`` and ``mi``.

Each is called as ``loss(pred, target)`` on images ``(B, C, *spatial)`` and returns a scalar to
minimise, averaged over the batch. The windowed LNCC lives in :mod:`regzoo.losses.lncc`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Paper, register_loss
from .lncc import VOXELMORPH_2019

__all__ = ["NCC", "MSE", "MutualInformation"]

RCN_2019 = Paper(
    "S. Zhao, Y. Dong, E. I-C. Chang, Y. Xu",
    "Recursive Cascaded Networks for Unsupervised Medical Image Registration",
    "ICCV",
    2019,
    "https://doi.org/10.1109/ICCV.2019.01070",
)
VIOLA_WELLS_1997 = Paper(
    "P. Viola, W. M. Wells III",
    "Alignment by Maximization of Mutual Information",
    "International Journal of Computer Vision 24(2):137-154",
    1997,
    "https://doi.org/10.1023/A:1007958904918",
)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() < 3:
        raise ValueError(f"images must be (B, C, *spatial), got {tuple(pred.shape)}")


@register_loss(
    "ncc",
    summary="Global normalised cross-correlation: 1 - Pearson r over the whole image (RCN).",
    paper=RCN_2019,
    tags=("2d", "3d", "similarity"),
)
class NCC(nn.Module):
    """``1 - r`` with r the Pearson correlation of all voxels (and channels) of each image.

    RCN's form: ``r = cov / sqrt((var_I + eps) (var_J + eps))`` with population (co)variances.
    RCN sums the per-image losses over the batch; here they are averaged, so that loss weights do
    not depend on the batch size. The loss lies in [0, 2]; 0 when ``pred = a * target + b``, a > 0.

    Args:
        eps: added to each variance (RCN: 1e-6).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``pred``, ``target``: ``(B, C, *spatial)``. Returns a scalar."""
        _check_pair(pred, target)
        x = pred.flatten(1)
        y = target.flatten(1)
        x = x - x.mean(1, keepdim=True)
        y = y - y.mean(1, keepdim=True)
        cov = (x * y).mean(1)
        r = cov / torch.sqrt((x.square().mean(1) + self.eps) * (y.square().mean(1) + self.eps))
        return (1.0 - r).mean()


@register_loss(
    "mse",
    summary="Mean squared intensity difference, optionally divided by image_sigma^2.",
    paper=VOXELMORPH_2019,
    tags=("2d", "3d", "similarity"),
)
class MSE(nn.Module):
    """``mean((pred - target)^2) / image_sigma^2``.

    ``image_sigma`` is the noise level of VoxelMorph-diff's Gaussian image likelihood (0.02 in the
    paper); the default 1 gives the plain mean squared error.
    """

    def __init__(self, image_sigma: float = 1.0) -> None:
        super().__init__()
        self.image_sigma = image_sigma

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``pred``, ``target``: ``(B, C, *spatial)``. Returns a scalar."""
        _check_pair(pred, target)
        return (pred - target).square().mean() / self.image_sigma**2


@register_loss(
    "mi",
    summary="Negative mutual information from a Gaussian Parzen-window joint histogram.",
    paper=VIOLA_WELLS_1997,
    tags=("2d", "3d", "similarity", "multimodal"),
)
class MutualInformation(nn.Module):
    """``-MI(pred, target)`` from a differentiable joint histogram, for multimodal pairs.

    Every voxel spreads a unit of mass over ``num_bins`` bins with centres evenly spaced in
    [0, 1] by a Gaussian of standard deviation ``sigma_ratio`` bin widths, normalised per voxel
    (the Parzen-window estimate of MONAI's ``GlobalMutualInformationLoss``, from DeepReg). With
    ``p_ab`` the joint and ``p_a``, ``p_b`` the marginal histograms of one image pair,
    ``MI = sum p_ab (log(p_ab + eps) - log(p_a p_b + eps))`` in nats; the loss is ``-MI``
    averaged over the batch. All channels of an image form one sample of intensities.

    Memory is ``O(B N num_bins)`` for N voxels per image.

    Args:
        num_bins: histogram bins per image (32).
        sigma_ratio: Gaussian width in bin widths (0.5).
        normalise: rescale each image to [0, 1] by its own minimum and maximum (held constant
            for the gradient), which makes the loss invariant to affine intensity changes. With
            ``False`` images are expected in [0, 1] and clamped to it (MONAI's convention).
        eps: keeps the logarithms finite.
    """

    def __init__(
        self,
        num_bins: int = 32,
        sigma_ratio: float = 0.5,
        normalise: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}")
        self.num_bins = num_bins
        self.sigma_ratio = sigma_ratio
        self.normalise = normalise
        self.eps = eps

    def _weights(self, image: torch.Tensor) -> torch.Tensor:
        """Per-voxel bin weights ``(B, N, num_bins)``, each row summing to 1."""
        x = image.flatten(1)
        if self.normalise:
            lo = x.detach().amin(1, keepdim=True)
            hi = x.detach().amax(1, keepdim=True)
            x = (x - lo) / (hi - lo).clamp(min=torch.finfo(x.dtype).tiny)
        else:
            x = x.clamp(0.0, 1.0)
        centres = torch.linspace(0.0, 1.0, self.num_bins, device=x.device, dtype=x.dtype)
        sigma = self.sigma_ratio / (self.num_bins - 1)
        return torch.softmax(-(x.unsqueeze(-1) - centres).square() / (2.0 * sigma**2), dim=-1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``pred``, ``target``: ``(B, C, *spatial)``. Returns the scalar ``-MI`` (nats)."""
        _check_pair(pred, target)
        wa = self._weights(pred)
        wb = self._weights(target.to(pred.dtype))
        pab = torch.bmm(wa.transpose(1, 2), wb) / wa.shape[1]
        papb = wa.mean(1).unsqueeze(2) * wb.mean(1).unsqueeze(1)
        mi = (pab * (torch.log(pab + self.eps) - torch.log(papb + self.eps))).sum((1, 2))
        return -mi.mean()

    def extra_repr(self) -> str:
        return (
            f"num_bins={self.num_bins}, sigma_ratio={self.sigma_ratio}, normalise={self.normalise}"
        )
