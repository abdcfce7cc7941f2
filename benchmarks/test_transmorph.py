"""TransMorph at full size (160x192x224) on the CPU: time and peak memory, with and without
activation checkpointing.

Every measurement runs in a fresh Python process, so its peak resident memory (``VmHWM``) is its
own: that process imports torch, builds the model, makes one random pair and runs either an
inference forward pass (``no_grad``) or one training step (forward, loss, backward, Adam update).

Run all and write the JSON that the BENCHMARKS.md section is made from (and print the section)::

    python benchmarks/test_transmorph.py --out benchmarks/results/transmorph_cpu.json

Render the section of a committed results file without running anything::

    python benchmarks/test_transmorph.py --render benchmarks/results/transmorph_cpu.json

or through pytest with ``REGZOO_BENCH_TRANSMORPH=1 pytest benchmarks/test_transmorph.py``, which
writes the same file; without that variable the pytest entry is skipped, as the run takes about
half an hour and up to ~14 GiB of memory. Timings are never asserted.
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
# (model, mode, activation checkpointing)
CASES = [
    ("transmorph", "baseline", False),
    ("transmorph", "inference", False),
    ("transmorph", "train-step", False),
    ("transmorph", "train-step", True),
]
# The official TransMorph on this kind of machine, as quoted by the issue that asked for this
# benchmark: figures of a peer that this suite does not run, so the report marks them as quoted.
OFFICIAL_REFERENCE = {"forward_s": 38.8, "train_step_s": 126.0, "peak_gib": 13.6}

# Peak memory is the process's VmHWM (reset by exec, unlike ru_maxrss, which a child inherits
# from the process that forked it).
_WORKER = r"""
import json, resource, sys, time
import torch, regzoo
def peak_gib():
    try:
        with open("/proc/self/status") as f:
            kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except OSError:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20
name, mode, ckpt, threads, shape = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), [int(s) for s in sys.argv[5].split("x")]
torch.set_num_threads(threads)
torch.manual_seed(0)
model = regzoo.create_model(name, use_checkpoint=ckpt)
g = torch.Generator().manual_seed(0)
batch = {"moving": torch.rand(1, 1, *shape, generator=g), "fixed": torch.rand(1, 1, *shape, generator=g)}
out = {"built_peak_gib": peak_gib()}
if mode == "inference":
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        model(batch)
    out["forward_s"] = time.perf_counter() - t
elif mode == "train-step":
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4, amsgrad=True)
    t = time.perf_counter()
    loss = model.loss(batch, model(batch))["loss"]
    t1 = time.perf_counter()
    optim.zero_grad()
    loss.backward()
    optim.step()
    t2 = time.perf_counter()
    out.update(forward_s=t1 - t, backward_s=t2 - t1, step_s=t2 - t)
out["peak_gib"] = peak_gib()
print("RESULT " + json.dumps(out))
"""


def run_case(name: str, mode: str, checkpointing: bool, threads: int = 2, shape=SHAPE) -> dict:
    """One measurement in a fresh process; returns its timings (s) and peak RSS (GiB)."""
    args = [name, mode, "1" if checkpointing else "0", str(threads), "x".join(map(str, shape))]
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} {mode}: worker failed\n{proc.stderr[-2000:]}")
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result.update(
        model=name, mode=mode, checkpointing=checkpointing, threads=threads, load_average_1min=load
    )
    return result


def make_report(results: list[dict], threads: int) -> dict:
    """The JSON document: machine, the issue's reference numbers and one entry per case."""
    import torch

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
        "official_reference": OFFICIAL_REFERENCE,
        "results": results,
    }


def run_all(threads: int = 2) -> dict:
    started = time.time()
    report = make_report(
        [run_case(name, mode, ckpt, threads) for name, mode, ckpt in CASES], threads
    )
    report["wall_s"] = time.time() - started
    return report


def to_markdown(report: dict) -> str:
    """The BENCHMARKS.md section for a report written by :func:`run_all`."""
    shape = "x".join(map(str, report["shape"]))
    ref = report["official_reference"]
    machine = report["machine"]
    lines = [
        f"## TransMorph on the CPU ({shape})",
        "",
        f"One pair, {machine['cpus']} cores, {machine['torch_threads']} threads, torch "
        f"{machine['torch']}; each row is a fresh process (peak = its maximum resident memory, "
        "torch and the model included). Activation checkpointing (`model.use_checkpoint=true`) "
        "recomputes the Swin and decoder blocks in the backward pass. The load average (1 min, "
        "when the row started) says how busy the machine was: times taken under load are upper "
        "bounds.",
        "",
        "| run | checkpointing | forward (s) | backward + update (s) | step (s) "
        "| peak memory (GiB) | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        keys = ("forward_s", "backward_s", "step_s")
        times = " | ".join(f"{r[key]:.1f}" if key in r else "-" for key in keys)
        lines.append(
            f"| {r['model']} {r['mode']} | {'yes' if r['checkpointing'] else 'no'} | {times} | "
            f"{r['peak_gib']:.2f} | {r['load_average_1min']:.1f} |"
        )
    lines += [
        "",
        "Reference, quoted and not measured in this run (the official TransMorph is not run by "
        f"this suite): forward {ref['forward_s']} s, training step {ref['train_step_s']} s, "
        f"peak {ref['peak_gib']} GiB, the figures the issue that asked for this benchmark gives "
        "for the official code on this kind of machine.",
        "",
    ]
    return "\n".join(lines)


@pytest.mark.benchmark
@pytest.mark.skipif(
    os.environ.get("REGZOO_BENCH_TRANSMORPH") != "1",
    reason="full-size TransMorph on the CPU: ~30 min, ~14 GiB; set REGZOO_BENCH_TRANSMORPH=1",
)
def test_transmorph_cpu_full_size():
    report = run_all()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    assert {r["mode"] for r in report["results"]} == {"baseline", "inference", "train-step"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2)
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
    report = run_all(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(to_markdown(report))


if __name__ == "__main__":
    main()
