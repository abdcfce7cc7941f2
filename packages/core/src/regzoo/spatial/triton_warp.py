"""Fused Triton warp kernel for CUDA tensors (DESIGN.md "Performance").

Placeholder-free contract: :func:`available` reports whether the kernel can run; until the kernel
lands, it reports ``False`` and :func:`regzoo.spatial.warp` uses ``grid_sample``.
"""

from __future__ import annotations

import torch

__all__ = ["available", "warp"]


def available() -> bool:
    """Whether the fused kernel can be used in this process."""
    return False


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    raise RuntimeError("the Triton warp kernel is not available in this build")
