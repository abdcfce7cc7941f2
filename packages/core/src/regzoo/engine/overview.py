"""The overview PNG of a registration: what a person looks at before reading numbers.

Six panels: fixed, moving, warped, a checkerboard of fixed and warped, the deformation grid and
the Jacobian-determinant map with folded voxels (J <= 0) marked. 3D volumes show their middle
slice along the first axis, with the in-plane field components. The PNG's ``Description`` text
chunk lists the panels' titles, left to right and top to bottom.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_path
from ..spatial import jacobian_determinant

__all__ = ["render_overview"]


def _slice(x: torch.Tensor) -> torch.Tensor:
    """``(C, *S)`` to a 2D ``(C', H, W)`` middle slice (channels kept)."""
    return x[:, x.shape[1] // 2] if x.dim() == 4 else x


def render_overview(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    warped: torch.Tensor,
    ddf: torch.Tensor,
    path: str | Path,
    title: str = "",
) -> Path:
    """Write the overview of one pair (tensors without batch dim: images ``(C, *S)``, ddf ``(ndim, *S)``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ndim = ddf.shape[0]
    jac = jacobian_determinant(ddf[None].float())[0]
    m, f, w = (_slice(t.detach().float().cpu())[0] for t in (moving, fixed, warped))
    if ndim == 3:
        u = ddf[1:, ddf.shape[1] // 2].detach().float().cpu()
        jac = jac[jac.shape[0] // 2]
    else:
        u = ddf.detach().float().cpu()
    jac = jac.detach().cpu()

    h, wdt = f.shape
    tile = max(4, min(h, wdt) // 8)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(wdt), indexing="ij")
    checker = ((yy // tile + xx // tile) % 2).bool()

    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    vmin, vmax = float(f.min()), float(f.max())
    for ax, img, name in zip(axes[0], (f, m, w), ("fixed", "moving", "warped")):
        ax.imshow(img.numpy(), cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(name)
    axes[1, 0].imshow(torch.where(checker, f, w).numpy(), cmap="gray", vmin=vmin, vmax=vmax)
    axes[1, 0].set_title("checkerboard fixed / warped")

    ax = axes[1, 1]
    step = max(1, min(h, wdt) // 24)
    gy, gx = (yy.float() + u[0]).numpy(), (xx.float() + u[1]).numpy()
    for i in range(0, h, step):
        ax.plot(gx[i], gy[i], color="tab:blue", lw=0.6)
    for j in range(0, wdt, step):
        ax.plot(gx[:, j], gy[:, j], color="tab:blue", lw=0.6)
    ax.set_xlim(0, wdt - 1)
    ax.set_ylim(h - 1, 0)
    ax.set_aspect("equal")
    ax.set_title("deformation grid")

    ax = axes[1, 2]
    im = ax.imshow(jac.numpy(), cmap="RdBu", vmin=0, vmax=2)
    folds = (jac <= 0).nonzero()
    if len(folds):
        ax.scatter(folds[:, 1].numpy(), folds[:, 0].numpy(), s=4, c="black", marker="x")
    folded = float((jac <= 0).float().mean()) * 100
    ax.set_title(f"Jacobian determinant ({folded:.3f}% folded)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    panels = "; ".join(ax.get_title() for ax in axes.flat)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=80, metadata={"Title": title, "Description": panels})
    finally:
        plt.close(fig)
    return path
