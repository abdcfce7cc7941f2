"""Local normalised cross-correlation (LNCC), VoxelMorph form.

For every voxel x the window sums over a cube of ``window`` voxels per axis (zero padding
``window // 2``, ``n = window ** ndim`` voxels counted everywhere, as in VoxelMorph) give::

    cross = ΣIJ − ΣI ΣJ / n,   var_I = ΣI² − (ΣI)² / n,   var_J = ΣJ² − (ΣJ)² / n
    cc = cross² / (var_I var_J + eps),   loss = −mean(cc)

``cross`` is the expansion ``ΣIJ − μ_J ΣI − μ_I ΣJ + μ_I μ_J n`` of the VoxelMorph code, simplified.
``cc`` is the *squared* local correlation, in [0, 1], so the loss lies in [−1, 0].

The window sums are separable: each axis is summed with ``O(log window)`` shifted adds (binary
doubling), never with a dense ``window ** ndim`` kernel, and the gradient is written in closed form
through the same box sums (see :class:`_LNCCFunction`), so no dense intermediate is kept for
autograd. Reference: Balakrishnan et al., "VoxelMorph: A Learning Framework for Deformable Medical
Image Registration", IEEE TMI 38(8), 2019 (``ncc`` loss of the official code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..registry import Paper, register_loss

__all__ = ["LNCC", "lncc", "local_cc", "box_sum"]

VOXELMORPH_2019 = Paper(
    authors="G. Balakrishnan, A. Zhao, M. R. Sabuncu, J. Guttag, A. V. Dalca",
    title="VoxelMorph: A Learning Framework for Deformable Medical Image Registration",
    venue="IEEE Transactions on Medical Imaging 38(8):1788-1800",
    year=2019,
    url="https://doi.org/10.1109/TMI.2019.2897538",
)


def _windows(window: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    wins = (int(window),) * ndim if isinstance(window, int) else tuple(int(w) for w in window)
    if len(wins) != ndim:
        raise ValueError(f"window {tuple(wins)} must give one size per spatial axis ({ndim})")
    if any(w < 1 or w % 2 == 0 for w in wins):
        raise ValueError(f"window sizes must be odd and positive, got {tuple(wins)}")
    return wins


def _box_axis(x: torch.Tensor, dim: int, window: int) -> torch.Tensor:
    """Zero-padded sums of ``window`` consecutive values along ``dim`` (same length as ``x``).

    Binary doubling: ``s_2k[i] = s_k[i] + s_k[i + k]``, and the window is assembled from the
    ``s_{2^j}`` of its set bits, so a window of 9 costs 4 adds per element instead of 8, and every
    value is an exact tree sum of its window (no running-sum drift in float32).
    """
    if window == 1:
        return x
    length = x.shape[dim]
    half = window // 2
    pad = [0, 0] * (x.dim() - 1 - dim) + [half, half]
    s = F.pad(x, pad)
    span, offset, bits = 1, 0, window
    out = None
    while True:
        if bits & 1:
            term = s.narrow(dim, offset, length)
            out = term if out is None else out + term
            offset += span
        bits >>= 1
        if not bits:
            return out
        n = s.shape[dim] - span
        s = s.narrow(dim, 0, n) + s.narrow(dim, span, n)
        span *= 2


def box_sum(x: torch.Tensor, window: int | Sequence[int]) -> torch.Tensor:
    """Window sums of ``x`` ``(B, C, *spatial)`` over an odd ``window`` per spatial axis.

    Zero padding ``window // 2`` on each side, so the output has the input's shape and equals a
    convolution with a ones kernel of size ``window`` per axis, channel by channel.
    """
    wins = _windows(window, x.dim() - 2)
    for axis, w in enumerate(wins):
        x = _box_axis(x, axis + 2, w)
    return x


def _local_moments(
    pred: torch.Tensor, target: torch.Tensor, windows: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """Window sums ``ΣI``, ``ΣJ`` and the local ``cross``, ``var_I``, ``var_J`` (all freshly made)."""
    inv_n = 1.0 / math.prod(windows)
    s_i = box_sum(pred, windows)
    s_j = box_sum(target, windows)
    cross = box_sum(pred * target, windows).addcmul_(s_i, s_j, value=-inv_n)
    var_i = box_sum(pred * pred, windows).addcmul_(s_i, s_i, value=-inv_n)
    var_j = box_sum(target * target, windows).addcmul_(s_j, s_j, value=-inv_n)
    return s_i, s_j, cross, var_i, var_j


def local_cc(
    pred: torch.Tensor,
    target: torch.Tensor,
    window: int | Sequence[int] = 9,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The map ``cc = cross² / (var_I var_J + eps)`` ``(B, C, *spatial)`` whose mean :func:`lncc` negates.

    For inspection and per-voxel weighting; differentiable through plain autograd (the loss itself
    uses the closed-form backward).
    """
    _, _, cross, var_i, var_j = _local_moments(pred, target, _windows(window, pred.dim() - 2))
    return cross.square() / (var_i * var_j + eps)


class _LNCCFunction(torch.autograd.Function):
    """``−mean(cc)`` with its gradient in closed form through box sums.

    With ``α = ∂cc/∂cross = 2 cross / D`` and ``β = ∂cc/∂var_I = −cc var_J / D``
    (``D = var_I var_J + eps``), and ``B`` the (self-adjoint) box sum::

        ∂L/∂I = −1/N [ J B(α) + 2 I B(β) − B((α ΣJ + 2 β ΣI) / n) ]

    and symmetrically for ``J`` with ``γ = −cc var_I / D``: three box sums for one input, five for
    both, against five in the forward.
    """

    @staticmethod
    def forward(ctx, pred, target, windows, eps):  # type: ignore[override]
        s_i, s_j, cross, var_i, var_j = _local_moments(pred, target, windows)
        inv_d = torch.mul(var_i, var_j).add_(eps).reciprocal_()
        cc = cross.mul(cross).mul_(inv_d)
        loss = -cc.mean()
        need_i, need_j = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_i or need_j:
            alpha = cross.mul_(inv_d).mul_(2.0)
            cc_over_d = cc.mul_(inv_d).mul_(-2.0)  # 2·(−cc/D): the factor 2 of ∂var/∂I folded in
            beta = torch.mul(cc_over_d, var_j) if need_i else None
            gamma = torch.mul(cc_over_d, var_i) if need_j else None
            ctx.save_for_backward(pred, target, s_i, s_j, alpha, beta, gamma)
        ctx.windows, ctx.inv_n, ctx.numel = windows, 1.0 / math.prod(windows), pred.numel()
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        pred, target, s_i, s_j, alpha, beta, gamma = ctx.saved_tensors
        windows, inv_n = ctx.windows, ctx.inv_n
        scale = grad / -ctx.numel
        alpha = alpha * scale
        b_alpha = box_sum(alpha, windows)
        grad_i = grad_j = None
        if beta is not None:
            beta = beta * scale
            grad_i = target * b_alpha
            grad_i.addcmul_(pred, box_sum(beta, windows))
            rest = torch.mul(alpha, s_j).addcmul_(beta, s_i).mul_(inv_n)
            grad_i.sub_(box_sum(rest, windows))
        if gamma is not None:
            gamma = gamma * scale
            grad_j = pred * b_alpha
            grad_j.addcmul_(target, box_sum(gamma, windows))
            rest = torch.mul(alpha, s_i).addcmul_(gamma, s_j).mul_(inv_n)
            grad_j.sub_(box_sum(rest, windows))
        return grad_i, grad_j, None, None


def lncc(
    pred: torch.Tensor,
    target: torch.Tensor,
    window: int | Sequence[int] = 9,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The LNCC loss ``−mean(cc)`` of two images ``(B, C, *spatial)`` (2D or 3D), a scalar.

    Channels are treated independently (depthwise windows) and averaged with the voxels. Half
    precision inputs are computed in float32 (the squared window sums overflow float16).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() < 3:
        raise ValueError(f"images must be (B, C, *spatial), got {tuple(pred.shape)}")
    windows = _windows(window, pred.dim() - 2)
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    target = target.to(pred.dtype)
    return _LNCCFunction.apply(pred, target, windows, float(eps))


@register_loss(
    "lncc",
    summary="Local normalised cross-correlation, VoxelMorph form: -mean(cross^2/(var_I var_J+eps))",
    paper=VOXELMORPH_2019,
    tags=("2d", "3d", "similarity"),
)
class LNCC(nn.Module):
    """Local (windowed) squared normalised cross-correlation loss, to minimise (in [−1, 0]).

    Args:
        window: odd window size in voxels, one int for every axis or one per axis (default 9).
        eps: added to ``var_I var_J`` in the denominator (VoxelMorph: 1e-5).

    Called as ``loss(pred, target)`` on ``(B, C, *spatial)`` images; returns a scalar.
    """

    def __init__(self, window: int = 9, eps: float = 1e-5) -> None:
        super().__init__()
        if isinstance(window, int):
            _windows(window, 1)
        self.window = window
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lncc(pred, target, self.window, self.eps)

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps}"
