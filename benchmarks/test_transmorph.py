"""TransMorph at full size (160x192x224) on the CPU: time and peak memory, with and without
activation checkpointing, side by side with the authors' network.

Every measurement runs in a fresh Python process, so its peak resident memory (``VmHWM``) is its
own: that process imports torch, builds the model, makes one random pair and runs either an
inference forward pass (``no_grad``) or one training step (forward, loss, backward, Adam update
with amsgrad at lr 1e-4).

The official network is run from a checkout of the authors' repository
(junyuchen245/TransMorph_Transformer_for_Medical_Image_Registration), never from a copy in this
project: ``IXI/TransMorph/models/TransMorph.py`` with ``CONFIGS['TransMorph']`` and the step of
``IXI/TransMorph/train_TransMorph.py`` (``losses.NCC_vxm()`` + ``losses.Grad3d('l2')``, weights 1
and 1), the objective regzoo's ``transmorph`` trains by default. Its code puts a few tensors on
CUDA by name; the worker makes ``.cuda()`` and ``.to("cuda")`` the identity. It needs
``ml_collections`` (the official configs), which regzoo does not depend on.

Run all and write the JSON that the BENCHMARKS.md section is made from (and print the section)::

    python benchmarks/test_transmorph.py --official /path/to/TransMorph-checkout \
        --out benchmarks/results/transmorph_cpu.json

Render the section of a committed results file without running anything::

    python benchmarks/test_transmorph.py --render benchmarks/results/transmorph_cpu.json

or through pytest with ``REGZOO_BENCH_TRANSMORPH=1 pytest benchmarks/test_transmorph.py`` (the
official rows when ``REGZOO_OFFICIAL_TRANSMORPH`` names a checkout), which writes the same file;
without that variable the pytest entry is skipped, as the run takes about 15 minutes and up to
~14 GiB of memory. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

SHAPE = (160, 192, 224)
RESULTS = Path(__file__).parent / "results" / "transmorph_cpu.json"
# (model, mode, activation checkpointing); "official" rows run only with a checkout.
CASES = [
    ("transmorph", "baseline", False),
    ("transmorph", "inference", False),
    ("transmorph", "train-step", False),
    ("transmorph", "train-step", True),
    ("official", "inference", False),
    ("official", "train-step", False),
]
# The goals of the training step against the official one: time and peak memory ratios.
GOALS = {"step_s": 1.0, "peak_gib": 0.8}

# Peak memory is the process's VmHWM (reset by exec, unlike ru_maxrss, which a child inherits
# from the process that forked it).
_WORKER = r"""
import json, resource, sys, time
import torch
def peak_gib():
    try:
        with open("/proc/self/status") as f:
            kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except OSError:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20
name, mode, ckpt, threads, shape, official = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), tuple(int(s) for s in sys.argv[5].split("x")), sys.argv[6]
torch.set_num_threads(threads)
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
moving, fixed = torch.rand(1, 1, *shape, generator=g), torch.rand(1, 1, *shape, generator=g)
if name == "official":
    sys.path.insert(0, official + "/IXI/TransMorph")
    to = torch.Tensor.to
    torch.Tensor.to = lambda self, *a, **k: self if a and a[0] == "cuda" else to(self, *a, **k)
    torch.Tensor.cuda = lambda self, *a, **k: self
    import losses
    import models.TransMorph as official_transmorph
    config = official_transmorph.CONFIGS["TransMorph"]
    config.img_size, config.use_checkpoint = shape, ckpt
    model = official_transmorph.TransMorph(config)
    ncc, grad = losses.NCC_vxm(), losses.Grad3d(penalty="l2")
    forward = lambda: model(torch.cat([moving, fixed], dim=1))
    objective = lambda out: ncc(out[0], fixed) + grad(out[1], fixed)
else:
    import regzoo
    model = regzoo.create_model(name, use_checkpoint=ckpt)
    batch = {"moving": moving, "fixed": fixed}
    forward = lambda: model(batch)
    objective = lambda out: model.loss(batch, out)["loss"]
out = {"built_peak_gib": peak_gib()}
if mode == "inference":
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        forward()
    out["forward_s"] = time.perf_counter() - t
elif mode == "train-step":
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4, amsgrad=True)
    t = time.perf_counter()
    loss = objective(forward())
    t1 = time.perf_counter()
    optim.zero_grad()
    loss.backward()
    optim.step()
    t2 = time.perf_counter()
    out.update(forward_s=t1 - t, backward_s=t2 - t1, step_s=t2 - t)
out["parameters"] = sum(p.numel() for p in model.parameters())
out["peak_gib"] = peak_gib()
print("RESULT " + json.dumps(out))
"""


def run_case(
    name: str,
    mode: str,
    checkpointing: bool,
    threads: int = 2,
    shape=SHAPE,
    official: Path | None = None,
) -> dict:
    """One measurement in a fresh process; returns its timings (s) and peak RSS (GiB)."""
    args = [name, mode, "1" if checkpointing else "0", str(threads), "x".join(map(str, shape))]
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, *args, str(official or "")],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} {mode}: worker failed\n{proc.stderr[-2000:]}")
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result.update(
        model=name, mode=mode, checkpointing=checkpointing, threads=threads, load_average_1min=load
    )
    return result


def official_revision(official: Path) -> str | None:
    """The commit of the official checkout (``None`` when it is not a git work tree)."""
    proc = subprocess.run(
        ["git", "-C", str(official), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return proc.stdout.strip() or None


def run_all(threads: int = 2, official: Path | None = None) -> dict:
    """Every case (the official ones only with a checkout), one after another."""
    import torch

    started = time.time()
    results = [
        run_case(name, mode, ckpt, threads, official=official)
        for name, mode, ckpt in CASES
        if official is not None or name != "official"
    ]
    return {
        "suite": "transmorph-cpu",
        "shape": list(SHAPE),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "official_commit": official_revision(official) if official else None,
        "results": results,
        "wall_s": time.time() - started,
    }


def _row(r: dict) -> str:
    keys = ("forward_s", "backward_s", "step_s")
    times = " | ".join(f"{r[key]:.1f}" if key in r else "-" for key in keys)
    name = "official TransMorph" if r["model"] == "official" else r["model"]
    return (
        f"| {name} {r['mode']} | {'yes' if r['checkpointing'] else 'no'} | {times} | "
        f"{r['peak_gib']:.2f} | {r['load_average_1min']:.1f} |"
    )


def step_ratios(report: dict) -> list[tuple[str, float, float, bool]]:
    """(label, time ratio, peak ratio, both goals met) of each regzoo training step against the
    official one of the same run; empty when the official network was not run."""
    steps = [r for r in report["results"] if r["mode"] == "train-step"]
    official = next((r for r in steps if r["model"] == "official"), None)
    if official is None:
        return []
    out = []
    for r in steps:
        if r["model"] == "official":
            continue
        time_ratio = r["step_s"] / official["step_s"]
        peak_ratio = r["peak_gib"] / official["peak_gib"]
        label = f"{r['model']}{', checkpointing' if r['checkpointing'] else ''}"
        met = time_ratio <= GOALS["step_s"] and peak_ratio <= GOALS["peak_gib"]
        out.append((label, time_ratio, peak_ratio, met))
    return out


def to_markdown(report: dict) -> str:
    """The BENCHMARKS.md section for a report written by :func:`run_all`."""
    shape = "x".join(map(str, report["shape"]))
    machine = report["machine"]
    lines = [
        f"## TransMorph on the CPU ({shape})",
        "",
        f"One pair, {machine['cpus']} cores, {machine['torch_threads']} threads, torch "
        f"{machine['torch']}; each row is a fresh process (peak = its maximum resident memory, "
        "torch and the model included), all rows one run of `benchmarks/test_transmorph.py`. "
        "The training step is the forward pass, -LNCC(9) + Grad-l2 and the backward pass with "
        "an Adam(amsgrad) update. regzoo's network computes the official values (its "
        "official-fixture tests) with its convolutions in channels-last layout and each instance "
        "norm fused with its LeakyReLU (one tensor kept for the backward pass instead of two). "
        "Activation checkpointing (`model.use_checkpoint=true`) "
        "recomputes the Swin and decoder blocks in the backward pass. The load average (1 min, "
        "when the row started) says how busy the machine was: times taken under load are upper "
        "bounds.",
        "",
        "| run | checkpointing | forward (s) | backward + update (s) | step (s) "
        "| peak memory (GiB) | load average |",
        "|---|---|---|---|---|---|---|",
        *[_row(r) for r in report["results"]],
        "",
    ]
    ratios = step_ratios(report)
    if not ratios:
        lines += ["The official network was not run in this run: no ratios.", ""]
        return "\n".join(lines)
    commit = report.get("official_commit") or "unknown commit"
    lines += [
        f"The official TransMorph ran from the authors' repository at {commit} "
        "(`IXI/TransMorph`, the same objective and optimiser). Training step against it, goal "
        f"at most {GOALS['step_s']}x its time and {GOALS['peak_gib']}x its peak memory:",
        "",
        "| regzoo step | time ratio | peak memory ratio | goal |",
        "|---|---|---|---|",
        *[
            f"| {label} | {t:.2f}x | {m:.2f}x | {'met' if met else 'not met'} |"
            for label, t, m, met in ratios
        ],
        "",
    ]
    return "\n".join(lines)


def _official_checkout() -> Path | None:
    path = os.environ.get("REGZOO_OFFICIAL_TRANSMORPH")
    return Path(path) if path else None


@pytest.mark.benchmark
@pytest.mark.skipif(
    os.environ.get("REGZOO_BENCH_TRANSMORPH") != "1",
    reason="full-size TransMorph on the CPU: ~15 min, ~14 GiB; set REGZOO_BENCH_TRANSMORPH=1",
)
def test_transmorph_cpu_full_size():
    report = run_all(official=_official_checkout())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    assert {r["mode"] for r in report["results"]} == {"baseline", "inference", "train-step"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--official",
        type=Path,
        default=_official_checkout(),
        metavar="DIR",
        help="a checkout of the authors' TransMorph repository, to run its network beside ours",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="print the BENCHMARKS.md section of an existing results file and exit",
    )
    args = parser.parse_args()
    if args.render:
        print(to_markdown(json.loads(args.render.read_text())))
        return
    if args.official is not None and not (args.official / "IXI" / "TransMorph").is_dir():
        parser.error(f"--official {args.official}: no IXI/TransMorph directory there")
    report = run_all(args.threads, args.official)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(to_markdown(report))


if __name__ == "__main__":
    main()
