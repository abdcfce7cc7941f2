"""LNCC (window 9) forward+backward: regzoo beside MONAI's ``LocalNormalizedCrossCorrelationLoss``
(rectangular kernel) and neurite's ``NCC`` (what voxelmorph 0.3 points to for its NCC).

Cases (issue 7): 3D 1x1x160x192x224 and 2D 8x1x256x256; the gradient is taken for the prediction
(the warped image), as in training.
"""

from __future__ import annotations

import pytest
import torch

from regzoo.losses.lncc import lncc

SHAPES = {"3d": (1, 1, 160, 192, 224), "2d": (8, 1, 256, 256)}
QUICK = {"3d": (1, 1, 32, 40, 48), "2d": (2, 1, 64, 64)}
IMPLS = ("regzoo", "monai", "neurite")


def implementation(name: str, ndim: int):
    if name == "regzoo":
        return lncc
    if name == "monai":
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        return LocalNormalizedCrossCorrelationLoss(
            spatial_dims=ndim, kernel_size=9, kernel_type="rectangular"
        )
    from neurite.nn.modules import NCC

    ncc = NCC(window_size=9)
    return lambda pred, target: -ncc(pred, target).mean()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_lncc(measure, make, quick, device, dim, impl):
    shape = (QUICK if quick else SHAPES)[dim]
    loss = implementation(impl, len(shape) - 2)
    pred = make.image(shape, 0).to(device).requires_grad_()
    target = make.image(shape, 1).to(device)

    def step():
        pred.grad = None
        loss(pred, target).backward()

    voxels = torch.Size(shape).numel()
    measure(
        step,
        device=device,
        case=f"lncc {dim} {'x'.join(map(str, shape))}",
        impl=impl,
        pass_="forward+backward",
        bytes=3 * 4 * voxels,  # a fully fused kernel reads both images and writes one gradient
    )


@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_implementations_agree(make, dim):
    """Not a timing: the compared losses have the same value (MONAI's differs by its epsilon)."""
    shape = QUICK[dim]
    pred, target = make.image(shape, 0), make.image(shape, 1)
    ref = lncc(pred, target).item()
    for impl in IMPLS[1:]:
        assert abs(implementation(impl, len(shape) - 2)(pred, target).item() - ref) < 1e-4, impl
