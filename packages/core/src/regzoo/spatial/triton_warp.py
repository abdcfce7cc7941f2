"""Fused Triton warp kernel for CUDA tensors (docs/conventions.md).

``warped[b, c, p] = image[b, c, p + ddf[b, :, p]]`` with ``ddf`` in voxel units, bilinear
(trilinear in 3D) or nearest interpolation, ``zeros`` or ``border`` padding, forward and backward,
2D and 3D, any number of channels. The sample coordinate of each voxel is computed inside the kernel
from its index and its displacement: the normalised ``grid_sample`` grid is never built, and the
backward accumulates the image gradient with atomic adds (so its float sums are reordered).

The results are those of :func:`torch.nn.functional.grid_sample` with ``align_corners=True`` fed the
normalised grid of ``identity + ddf``, which is the path :func:`regzoo.spatial.warp` takes elsewhere:

- a sample coordinate on an axis of size 1 is 0 whatever the displacement (grid_sample's
  un-normalisation multiplies by ``size - 1``), and its displacement gets no gradient;
- ``border`` clamps the coordinate to ``[0, size - 1]`` and, as grid_sample does, gives the
  coordinate a zero gradient where it lies on or beyond the border;
- ``nearest`` rounds half to even (``nearbyint``) and gives the field a zero gradient.

The same code runs on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before
Triton is imported), which is how the test suite checks it without a GPU. Set
``REGZOO_DISABLE_TRITON=1`` to make :func:`regzoo.spatial.warp` use ``grid_sample`` on CUDA too.
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only builds of torch ship without Triton
    triton = None
    tl = None

__all__ = ["available", "warp"]

_BLOCK = 512
_NUM_WARPS = 4
_MODES = {"bilinear": 0, "nearest": 1}
_PADDINGS = {"zeros": 0, "border": 1}


def available() -> bool:
    """Whether the fused kernel can be used for CUDA tensors in this process."""
    if triton is None or os.environ.get("REGZOO_DISABLE_TRITON", "0") == "1":
        return False
    return torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _coordinate(index, disp, last, extent, PADDING: tl.constexpr):
        """Sample coordinate on an axis with voxels ``0..last`` and the factor of its gradient.

        The coordinate is first clipped to ``[-2, last + 2]``, which changes no sample (every
        neighbour there is outside) and keeps the float-to-int conversions in range.
        """
        x = index.to(tl.float32) + disp * extent
        x = tl.minimum(tl.maximum(x, -2.0), last + 2.0)
        if PADDING == 1:
            inside = (x > 0.0) & (x < last)
            x = tl.minimum(tl.maximum(x, 0.0), last)
            return x, tl.where(inside, extent, 0.0)
        return x, extent + 0.0 * x

    @triton.jit
    def _nearest(x, last):
        """Round half to even (grid_sample's ``nearbyint``); the index clamped for addressing."""
        r = tl.floor(x + 0.5)
        tie = (r - x) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        r = tl.where(tie & odd, r - 1.0, r)
        inside = (r >= 0.0) & (r <= last)
        return tl.minimum(tl.maximum(r, 0.0), last).to(tl.int32), inside

    @triton.jit
    def _floor_pair(x, last):
        """The two neighbours of ``x`` on one axis: indices (clamped), in-bounds flags, weight."""
        f = tl.floor(x)
        g = f + 1.0
        ok0 = (f >= 0.0) & (f <= last)
        ok1 = (g >= 0.0) & (g <= last)
        i0 = tl.minimum(tl.maximum(f, 0.0), last).to(tl.int32)
        i1 = tl.minimum(tl.maximum(g, 0.0), last).to(tl.int32)
        return i0, i1, ok0, ok1, x - f

    @triton.jit
    def _setup(
        ddf_ptr,
        b,
        offs,
        mask,
        D,
        H,
        W,
        ddf_sb,
        last_d,
        last_h,
        last_w,
        ext_d,
        ext_h,
        ext_w,
        NDIM: tl.constexpr,
        PADDING: tl.constexpr,
    ):
        """Coordinates ``(z, y, x)`` of the voxels ``offs`` and their gradient factors."""
        hw = H * W
        vol = D * hw
        xi = offs % W
        yi = (offs // W) % H
        zi = offs // hw
        ddf = ddf_ptr + b.to(tl.int64) * ddf_sb + offs
        if NDIM == 3:
            uz = tl.load(ddf, mask=mask, other=0.0).to(tl.float32)
            uy = tl.load(ddf + vol, mask=mask, other=0.0).to(tl.float32)
            ux = tl.load(ddf + 2 * vol, mask=mask, other=0.0).to(tl.float32)
        else:
            uy = tl.load(ddf, mask=mask, other=0.0).to(tl.float32)
            ux = tl.load(ddf + vol, mask=mask, other=0.0).to(tl.float32)
            uz = 0.0 * ux
        z, gz = _coordinate(zi, uz, last_d, ext_d, PADDING)
        y, gy = _coordinate(yi, uy, last_h, ext_h, PADDING)
        x, gx = _coordinate(xi, ux, last_w, ext_w, PADDING)
        return z, y, x, gz, gy, gx

    @triton.jit
    def _warp_fwd_kernel(
        img_ptr,
        ddf_ptr,
        out_ptr,
        C,
        D,
        H,
        W,
        img_sb,
        ddf_sb,
        out_sb,
        last_d,
        last_h,
        last_w,
        ext_d,
        ext_h,
        ext_w,
        NDIM: tl.constexpr,
        MODE: tl.constexpr,
        PADDING: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        b = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        vol = D * H * W
        mask = offs < vol
        z, y, x, _gz, _gy, _gx = _setup(
            ddf_ptr, b, offs, mask, D, H, W, ddf_sb, last_d, last_h, last_w, ext_d, ext_h, ext_w,
            NDIM, PADDING,
        )  # fmt: skip
        img = img_ptr + b.to(tl.int64) * img_sb
        out = out_ptr + b.to(tl.int64) * out_sb + offs
        if MODE == 1:
            iz, okz = _nearest(z, last_d)
            iy, oky = _nearest(y, last_h)
            ix, okx = _nearest(x, last_w)
            ok = mask & okz & oky & okx
            idx = (iz * H + iy) * W + ix
            for c in range(C):
                v = tl.load(img + c * vol + idx, mask=ok, other=0.0)
                tl.store(out + c * vol, v, mask=mask)
        else:
            z0, z1, okz0, okz1, fz = _floor_pair(z, last_d)
            y0, y1, oky0, oky1, fy = _floor_pair(y, last_h)
            x0, x1, okx0, okx1, fx = _floor_pair(x, last_w)
            r00 = (z0 * H + y0) * W
            r01 = (z0 * H + y1) * W
            r10 = (z1 * H + y0) * W
            r11 = (z1 * H + y1) * W
            m00 = mask & okz0 & oky0
            m01 = mask & okz0 & oky1
            m10 = mask & okz1 & oky0
            m11 = mask & okz1 & oky1
            wy0 = 1.0 - fy
            wx0 = 1.0 - fx
            w00 = (1.0 - fz) * wy0
            w01 = (1.0 - fz) * fy
            w10 = fz * wy0
            w11 = fz * fy
            for c in range(C):
                base = img + c * vol
                v = w00 * (
                    wx0 * tl.load(base + r00 + x0, mask=m00 & okx0, other=0.0).to(tl.float32)
                    + fx * tl.load(base + r00 + x1, mask=m00 & okx1, other=0.0).to(tl.float32)
                )
                v += w01 * (
                    wx0 * tl.load(base + r01 + x0, mask=m01 & okx0, other=0.0).to(tl.float32)
                    + fx * tl.load(base + r01 + x1, mask=m01 & okx1, other=0.0).to(tl.float32)
                )
                if NDIM == 3:
                    v += w10 * (
                        wx0 * tl.load(base + r10 + x0, mask=m10 & okx0, other=0.0).to(tl.float32)
                        + fx * tl.load(base + r10 + x1, mask=m10 & okx1, other=0.0).to(tl.float32)
                    )
                    v += w11 * (
                        wx0 * tl.load(base + r11 + x0, mask=m11 & okx0, other=0.0).to(tl.float32)
                        + fx * tl.load(base + r11 + x1, mask=m11 & okx1, other=0.0).to(tl.float32)
                    )
                tl.store(out + c * vol, v.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _row_grad(
        base, gbase, row, x0, x1, mrow, okx0, okx1, wx0, fx, w, go,
        NEED_IMG: tl.constexpr, NEED_DDF: tl.constexpr,
    ):  # fmt: skip
        """Scatter ``go`` to the two voxels of one row; their value and x-slope for the field."""
        a = 0.0 * fx
        b = 0.0 * fx
        if NEED_DDF:
            a = tl.load(base + row + x0, mask=mrow & okx0, other=0.0).to(tl.float32)
            b = tl.load(base + row + x1, mask=mrow & okx1, other=0.0).to(tl.float32)
        if NEED_IMG:
            tl.atomic_add(gbase + row + x0, go * w * wx0, mask=mrow & okx0)
            tl.atomic_add(gbase + row + x1, go * w * fx, mask=mrow & okx1)
        return wx0 * a + fx * b, b - a

    @triton.jit
    def _warp_bwd_kernel(
        img_ptr,
        ddf_ptr,
        gout_ptr,
        gimg_ptr,
        gddf_ptr,
        C,
        D,
        H,
        W,
        img_sb,
        ddf_sb,
        gout_sb,
        gimg_sb,
        last_d,
        last_h,
        last_w,
        ext_d,
        ext_h,
        ext_w,
        NDIM: tl.constexpr,
        MODE: tl.constexpr,
        PADDING: tl.constexpr,
        NEED_IMG: tl.constexpr,
        NEED_DDF: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        b = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        vol = D * H * W
        mask = offs < vol
        z, y, x, gz, gy, gx = _setup(
            ddf_ptr, b, offs, mask, D, H, W, ddf_sb, last_d, last_h, last_w, ext_d, ext_h, ext_w,
            NDIM, PADDING,
        )  # fmt: skip
        img = img_ptr + b.to(tl.int64) * img_sb
        gimg = gimg_ptr + b.to(tl.int64) * gimg_sb
        gout = gout_ptr + b.to(tl.int64) * gout_sb + offs
        if MODE == 1:
            if NEED_IMG:
                iz, okz = _nearest(z, last_d)
                iy, oky = _nearest(y, last_h)
                ix, okx = _nearest(x, last_w)
                ok = mask & okz & oky & okx
                idx = (iz * H + iy) * W + ix
                for c in range(C):
                    go = tl.load(gout + c * vol, mask=mask, other=0.0).to(tl.float32)
                    tl.atomic_add(gimg + c * vol + idx, go, mask=ok)
        else:
            z0, z1, okz0, okz1, fz = _floor_pair(z, last_d)
            y0, y1, oky0, oky1, fy = _floor_pair(y, last_h)
            x0, x1, okx0, okx1, fx = _floor_pair(x, last_w)
            r00 = (z0 * H + y0) * W
            r01 = (z0 * H + y1) * W
            r10 = (z1 * H + y0) * W
            r11 = (z1 * H + y1) * W
            m00 = mask & okz0 & oky0
            m01 = mask & okz0 & oky1
            m10 = mask & okz1 & oky0
            m11 = mask & okz1 & oky1
            wz0 = 1.0 - fz
            wy0 = 1.0 - fy
            wx0 = 1.0 - fx
            acc_z = tl.zeros([BLOCK], dtype=tl.float32)
            acc_y = tl.zeros([BLOCK], dtype=tl.float32)
            acc_x = tl.zeros([BLOCK], dtype=tl.float32)
            for c in range(C):
                base = img + c * vol
                gbase = gimg + c * vol
                go = tl.load(gout + c * vol, mask=mask, other=0.0).to(tl.float32)
                v00, s00 = _row_grad(
                    base, gbase, r00, x0, x1, m00, okx0, okx1, wx0, fx, wz0 * wy0, go,
                    NEED_IMG, NEED_DDF,
                )  # fmt: skip
                v01, s01 = _row_grad(
                    base, gbase, r01, x0, x1, m01, okx0, okx1, wx0, fx, wz0 * fy, go,
                    NEED_IMG, NEED_DDF,
                )  # fmt: skip
                if NEED_DDF:
                    plane0 = wy0 * v00 + fy * v01
                    acc_y += go * wz0 * (v01 - v00)
                    acc_x += go * wz0 * (wy0 * s00 + fy * s01)
                if NDIM == 3:
                    v10, s10 = _row_grad(
                        base, gbase, r10, x0, x1, m10, okx0, okx1, wx0, fx, fz * wy0, go,
                        NEED_IMG, NEED_DDF,
                    )  # fmt: skip
                    v11, s11 = _row_grad(
                        base, gbase, r11, x0, x1, m11, okx0, okx1, wx0, fx, fz * fy, go,
                        NEED_IMG, NEED_DDF,
                    )  # fmt: skip
                    if NEED_DDF:
                        plane1 = wy0 * v10 + fy * v11
                        acc_z += go * (plane1 - plane0)
                        acc_y += go * fz * (v11 - v10)
                        acc_x += go * fz * (wy0 * s10 + fy * s11)
            if NEED_DDF:
                gddf = gddf_ptr + b.to(tl.int64) * (NDIM * vol) + offs
                if NDIM == 3:
                    tl.store(gddf, acc_z * gz, mask=mask)
                    gddf += vol
                tl.store(gddf, acc_y * gy, mask=mask)
                tl.store(gddf + vol, acc_x * gx, mask=mask)


def _geometry(image: torch.Tensor, ddf: torch.Tensor) -> tuple:
    """``D, H, W`` (a 2D field has ``D = 1``), the last index and the displacement factor per axis."""
    sizes = tuple(ddf.shape[2:])
    d, h, w = sizes if len(sizes) == 3 else (1, *sizes)
    if image.shape[1] * d * h * w >= 2**31:
        raise ValueError(f"{image.shape[1]} channels of {sizes} overflow 32-bit voxel indices")
    lasts = tuple(float(n - 1) for n in (d, h, w))
    # grid_sample ignores the displacement along an axis of size 1 (see module docstring)
    extents = tuple(float(n > 1) for n in (d, h, w))
    return (d, h, w), lasts, extents


def _grid(ddf: torch.Tensor) -> tuple[int, int]:
    return triton.cdiv(ddf[0, 0].numel(), _BLOCK), ddf.shape[0]


class _TritonWarp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, ddf, mode, padding):  # type: ignore[override]
        ndim = ddf.shape[1]
        batch, channels = ddf.shape[0], image.shape[1]
        image = image.contiguous()
        ddf = ddf.contiguous()
        img_sb = 0 if image.shape[0] == 1 else image.stride(0)
        out = torch.empty((batch, channels, *ddf.shape[2:]), dtype=image.dtype, device=image.device)
        sizes, lasts, extents = _geometry(image, ddf)
        _warp_fwd_kernel[_grid(ddf)](
            image, ddf, out, channels, *sizes, img_sb, ddf.stride(0), out.stride(0), *lasts,
            *extents, NDIM=ndim, MODE=_MODES[mode], PADDING=_PADDINGS[padding], BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
        )  # fmt: skip
        ctx.save_for_backward(image, ddf)
        ctx.mode, ctx.padding = mode, padding
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        image, ddf = ctx.saved_tensors
        need_img, need_ddf = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nearest = ctx.mode == "nearest"
        grad_out = grad_out.contiguous()
        grad_img = None
        if need_img:
            grad_img = torch.zeros(image.shape, dtype=torch.float32, device=image.device)
        grad_ddf = None
        if need_ddf:
            make = torch.zeros if nearest else torch.empty
            grad_ddf = make(ddf.shape, dtype=torch.float32, device=ddf.device)
        if need_img or (need_ddf and not nearest):
            sizes, lasts, extents = _geometry(image, ddf)
            img_sb = 0 if image.shape[0] == 1 else image.stride(0)
            gimg_sb = 0 if image.shape[0] == 1 else grad_img.stride(0) if need_img else 0
            _warp_bwd_kernel[_grid(ddf)](
                image, ddf, grad_out,
                grad_img if need_img else grad_out,
                grad_ddf if need_ddf else grad_out,
                image.shape[1], *sizes, img_sb, ddf.stride(0), grad_out.stride(0), gimg_sb,
                *lasts, *extents,
                NDIM=ddf.shape[1], MODE=_MODES[ctx.mode], PADDING=_PADDINGS[ctx.padding],
                NEED_IMG=need_img, NEED_DDF=need_ddf and not nearest, BLOCK=_BLOCK,
                num_warps=_NUM_WARPS,
            )  # fmt: skip
        if grad_img is not None:
            grad_img = grad_img.to(image.dtype)
        if grad_ddf is not None:
            grad_ddf = grad_ddf.to(ddf.dtype)
        return grad_img, grad_ddf, None, None


def warp(
    image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding: str = "zeros"
) -> torch.Tensor:
    """Warp ``image`` ``(B or 1, C, *spatial)`` by ``ddf`` ``(B, ndim, *spatial)`` (voxel units).

    Same contract as :func:`regzoo.spatial.warp` (which validates the arguments and calls this on
    CUDA tensors): bilinear or nearest, ``zeros`` or ``border`` padding, differentiable in both
    inputs (once). Computes in float32 whatever the input dtype and returns the image dtype.
    """
    if triton is None:
        raise RuntimeError("the Triton warp kernel needs Triton, which is not installed")
    if mode not in _MODES or padding not in _PADDINGS:
        raise ValueError(f"mode {mode!r} / padding {padding!r} not supported")
    return _TritonWarp.apply(image, ddf, mode, padding)
