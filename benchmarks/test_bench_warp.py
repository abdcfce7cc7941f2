"""Warping a volume by a displacement field: regzoo beside MONAI's ``Warp``, voxelmorph's
``SpatialTransformer`` and bare ``grid_sample`` fed a grid built from the field in one fused op.

Cases (issue 7): 3D 1x1x160x192x224 and 2D 8x1x256x256, bilinear, zero padding; ``forward`` under
``no_grad`` and ``forward+backward`` (gradients for image and field from a fixed output gradient).
On CUDA regzoo runs the Triton kernel, and ``regzoo-grid-sample`` its grid_sample path beside it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regzoo.spatial import warp
from regzoo.spatial.grid import normalised_grid_affine

SHAPES = {"3d": (1, 1, 160, 192, 224), "2d": (8, 1, 256, 256)}
QUICK = {"3d": (1, 1, 32, 40, 48), "2d": (2, 1, 64, 64)}
IMPLS = ("regzoo", "regzoo-grid-sample", "grid_sample", "monai", "voxelmorph")


def implementation(name: str, monkeypatch: pytest.MonkeyPatch):
    if name == "regzoo":
        return warp
    if name == "regzoo-grid-sample":
        monkeypatch.setenv("REGZOO_DISABLE_TRITON", "1")
        return warp
    if name == "grid_sample":

        def bare(image, ddf):
            scale, offset = normalised_grid_affine(ddf.shape[2:], ddf.device, ddf.dtype)
            grid = torch.addcmul(offset, ddf.movedim(1, -1).flip(-1), scale)
            return F.grid_sample(image, grid, align_corners=True)

        return bare
    if name == "monai":
        from monai.networks.blocks import Warp

        return Warp(mode="bilinear", padding_mode="zeros")
    from voxelmorph.nn.modules import SpatialTransformer

    return SpatialTransformer()


def warp_bytes(shape: tuple[int, ...], pass_: str, itemsize: int = 4) -> int:
    """Bytes a fused kernel must move: each input read once, each output written once; the
    backward also reads the output gradient, image and field, zeroes and read-modify-writes the
    image gradient and writes the field gradient."""
    channels, ndim, voxels = shape[1], len(shape) - 2, shape[0] * torch.Size(shape[2:]).numel()
    forward = (2 * channels + ndim) * voxels
    backward = (5 * channels + 2 * ndim) * voxels
    return itemsize * (forward + (backward if pass_ == "forward+backward" else 0))


@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_warp(measure, make, quick, device, monkeypatch, dim, impl, pass_):
    if impl == "regzoo-grid-sample" and device.type != "cuda":
        pytest.skip("on CPU regzoo is its grid_sample path")
    shape = (QUICK if quick else SHAPES)[dim]
    fn = implementation(impl, monkeypatch)
    image = make.image(shape, 0).to(device)
    ddf = make.field((shape[0], len(shape) - 2, *shape[2:]), 4.0, 1).to(device)
    if pass_ == "forward":

        def step():
            with torch.no_grad():
                return fn(image, ddf)

    else:
        image.requires_grad_()
        ddf.requires_grad_()
        grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(device)

        def step():
            image.grad = ddf.grad = None
            fn(image, ddf).backward(grad_out)

    measure(
        step,
        device=device,
        case=f"warp {dim} {'x'.join(map(str, shape))}",
        impl=impl,
        pass_=pass_,
        bytes=warp_bytes(shape, pass_),
    )


def test_copy_bandwidth(measure, quick, device):
    """Measured copy bandwidth: the floor of a memory-bound kernel is its bytes over this."""
    numel = (16 if quick else 256) * 2**20
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    measure(
        lambda: dst.copy_(src),
        device=device,
        case="copy",
        impl="copy",
        pass_="copy",
        bytes=2 * 4 * numel,
    )


@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_implementations_agree(make, monkeypatch, dim):
    """Not a timing: the compared implementations compute the same warp."""
    shape = QUICK[dim]
    image = make.image(shape, 0)
    ddf = make.field((shape[0], len(shape) - 2, *shape[2:]), 4.0, 1)
    ref = warp(image, ddf)
    for impl in IMPLS[2:]:
        assert (implementation(impl, monkeypatch)(image, ddf) - ref).abs().max() < 1e-4, impl
