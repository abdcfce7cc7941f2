"""The fused Triton warp against the grid_sample path of ``regzoo.spatial.warp``.

Without a GPU the kernels run on CPU tensors through Triton's interpreter, which reads
``TRITON_INTERPRET=1`` when the kernels are defined; so the comparisons run in a child process (this
file run as a script) and the tests here read its results, leaving this process's Triton untouched.
Tolerances (issue 7): output within 1e-5, both gradients within 1e-4 of the largest reference value
(the image gradient is summed with atomic adds, in another order than grid_sample's).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from regzoo.spatial import triton_warp
from regzoo.spatial.warp import sampling_grid, warp

warp_module = importlib.import_module(
    "regzoo.spatial.warp"
)  # the package exports `warp`, the function

# (name, batch of image, batch of field, channels, spatial shape, displacement scale)
SETUPS = [
    ("3d", 2, 2, 3, (5, 7, 6), 2.0),
    ("2d", 2, 2, 2, (7, 9), 3.0),
    ("3d-thin", 1, 1, 1, (1, 5, 6), 1.5),  # an axis of size 1: grid_sample ignores its displacement
    ("2d-broadcast", 1, 3, 1, (5, 8), 2.0),  # one image, three fields
]
MODES = ("bilinear", "nearest")
PADDINGS = ("zeros", "border")
CASES = [f"{s[0]}-{m}-{p}" for s in SETUPS for m in MODES for p in PADDINGS]
GRAD_CASES = ["3d-bilinear-zeros-ddf-only", "3d-bilinear-border-image-only"]


def _reference(image, ddf, mode, padding):
    if image.shape[0] != ddf.shape[0]:
        image = image.expand(ddf.shape[0], *image.shape[1:])
    grid = sampling_grid(ddf)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def _errors(image, ddf, mode, padding) -> dict[str, float]:
    out = triton_warp.warp(image, ddf, mode, padding)
    ref = _reference(image, ddf, mode, padding)
    result = {"out": (out - ref).abs().max().item()}
    go = torch.randn_like(ref)
    inputs = [(k, t) for k, t in (("grad_image", image), ("grad_ddf", ddf)) if t.requires_grad]
    grads = torch.autograd.grad(out, [t for _, t in inputs], go)
    refs = torch.autograd.grad(ref, [t for _, t in inputs], go)
    for (key, _), g, r in zip(inputs, grads, refs):
        result[key] = ((g - r).abs().max() / r.abs().max().clamp(min=1e-30)).item()
        result[key + "_zero"] = bool(r.abs().max() == 0 and g.abs().max() == 0)
    return result


def _child() -> None:
    """Run every case through the interpreted kernels; print the errors as one JSON line."""
    torch.manual_seed(0)
    results = {}
    for name, bi, bf, channels, shape, scale in SETUPS:
        for mode in MODES:
            for padding in PADDINGS:
                image = torch.randn(bi, channels, *shape, requires_grad=True)
                ddf = (scale * torch.randn(bf, len(shape), *shape)).requires_grad_()
                results[f"{name}-{mode}-{padding}"] = _errors(image, ddf, mode, padding)
    image = torch.randn(1, 2, 5, 7, 6)
    ddf = 2 * torch.randn(1, 3, 5, 7, 6)
    results[GRAD_CASES[0]] = _errors(image, ddf.requires_grad_(), "bilinear", "zeros")
    results[GRAD_CASES[1]] = _errors(image.requires_grad_(), ddf.detach(), "bilinear", "border")
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict[str, float]]:
    if triton_warp.triton is None:
        pytest.skip("Triton is not installed (CPU-only torch build): the fused warp is not built")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES + GRAD_CASES)
def test_kernel_matches_grid_sample(interpreted, case):
    errors = interpreted[case]
    assert errors["out"] <= 1e-5
    for key in ("grad_image", "grad_ddf"):
        if key in errors:
            assert errors[key] <= 1e-4 or errors[key + "_zero"], (key, errors[key])
    if "nearest" in case:  # nearest: the field gets a zero gradient, as from grid_sample
        assert errors["grad_ddf_zero"]


def _signature(kernel, constants: dict[str, object]) -> dict[str, str]:
    floats = {"last_d", "last_h", "last_w", "ext_d", "ext_h", "ext_w"}
    types = {}
    for name in kernel.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*fp32"
        else:
            types[name] = "fp32" if name in floats else "i32"
    return types


def test_kernels_compile_for_a_gpu_ahead_of_time():
    """The interpreter does not type-check like the compiler: build real sm_90 code (no GPU needed).

    Integer arguments equal to 1 (``D`` of every 2D field, one channel) are compile-time constants
    at launch; the cases here include them.
    """
    if triton_warp.triton is None or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("needs Triton's compiler (not the interpreter)")
    compiler = pytest.importorskip("triton.compiler")
    target = pytest.importorskip("triton.backends.compiler").GPUTarget("cuda", 90, 32)
    cases = [
        (triton_warp._warp_fwd_kernel, {"NDIM": 2, "MODE": 0, "PADDING": 1, "BLOCK": 512, "D": 1, "C": 1}),
        (triton_warp._warp_bwd_kernel, {"NDIM": 3, "MODE": 0, "PADDING": 1, "NEED_IMG": True, "NEED_DDF": True, "BLOCK": 512}),
        (triton_warp._warp_bwd_kernel, {"NDIM": 2, "MODE": 1, "PADDING": 0, "NEED_IMG": True, "NEED_DDF": False, "BLOCK": 512, "D": 1}),
    ]  # fmt: skip
    for kernel, constants in cases:
        source = compiler.ASTSource(kernel, _signature(kernel, constants), constants)
        compiled = compiler.compile(source, target=target, options={"num_warps": 4})
        assert compiled.asm["cubin"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_warp_uses_the_kernel_on_cuda():
    torch.manual_seed(0)
    image = torch.randn(2, 2, 9, 10, 11, device="cuda", requires_grad=True)
    ddf = (2 * torch.randn(2, 3, 9, 10, 11, device="cuda")).requires_grad_()
    out = warp(image, ddf)
    assert triton_warp.available() and type(out.grad_fn).__name__ == "_TritonWarpBackward"
    ref = _reference(image, ddf, "bilinear", "zeros")
    assert (out - ref).abs().max() <= 1e-5
    go = torch.randn_like(out)
    for g, r in zip(
        torch.autograd.grad(out, (image, ddf), go), torch.autograd.grad(ref, (image, ddf), go)
    ):
        assert (g - r).abs().max() <= 1e-4 * r.abs().max()


def test_available_needs_cuda_and_respects_the_switch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert triton_warp.available() == (triton_warp.triton is not None)
    monkeypatch.setenv("REGZOO_DISABLE_TRITON", "1")
    assert not triton_warp.available()


@pytest.mark.parametrize("shape", [(6, 5, 7), (5, 5, 7), (8, 9)])
@pytest.mark.parametrize("mode, padding", [("bilinear", "zeros"), ("nearest", "border")])
def test_grid_sample_path_equals_autograd_grid_sample(monkeypatch, shape, mode, padding):
    """The CPU path (one autograd node; one volume split into a batch over threads)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    torch.manual_seed(0)
    for channels, batch in [(1, 1), (3, 1), (2, 2)]:
        assert warp_module._folds(torch.ones(batch, 1, *shape), torch.ones(batch, 1, *shape)) == (
            2 if batch == 1 and shape[0] % 2 == 0 else 1
        )
        image = torch.randn(batch, channels, *shape, dtype=torch.float64, requires_grad=True)
        ddf = (2 * torch.randn(batch, len(shape), *shape, dtype=torch.float64)).requires_grad_()
        out, ref = warp(image, ddf, mode, padding), _reference(image, ddf, mode, padding)
        assert torch.equal(out, ref)
        go = torch.randn_like(out)
        grads = torch.autograd.grad(out.mul(go).sum(), (image, ddf))
        refs = torch.autograd.grad(ref, (image, ddf), go)
        for g, r in zip(grads, refs):
            assert torch.allclose(g, r, rtol=0, atol=1e-12)


if __name__ == "__main__":
    _child()
