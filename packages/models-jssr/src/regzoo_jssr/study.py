"""The joint stage against its controls: the README's "Measured" table, for one seed.

From JSSR's quick preset (or any overrides of it), one run trains stages 1 and 2 and stops with a
checkpoint; two runs resume it for the steps of stage 3: as the joint stage, and as stage 2
continued (G and Phi on F alone, S frozen). The MI baseline (``jssr-mi-baseline``, same backbone,
same total steps) trains alongside. Each model is then measured by
:func:`~regzoo_jssr.evaluation.evaluate_jssr` on held-out pairs of unseen subjects::

    python -m regzoo_jssr.study --seed 0 --out runs/jssr-study
    python -m regzoo_jssr.study --seed 1 model.seg_weight=1    # any override of the quick preset

prints ``{"stage2": {...}, "joint": {...}, "continued": {...}, "mi": {...}}`` as JSON. Several
seeds (``--seed 0 1 2 3``) run one after the other and print ``{"seeds": {seed: {...}}, "spread":
{...}}``: :func:`seed_spread`, each measure's mean, std, min and max over the seeds, with the
registration Dice gains the README claims (``joint - continued``, ``joint - mi``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from regzoo.config import resolve_config
from regzoo.engine import Trainer, build_dataset
from regzoo.errors import UserError
from regzoo.metrics.summary import summarize

from .evaluation import evaluate_jssr

__all__ = ["run_study", "seed_spread", "main"]

# fit()'s own final evaluation is made cheap: the study measures with evaluate_jssr.
_CHEAP_EVAL = ["eval.metrics=[dice]", "eval.max_pairs=1", "eval.overview=false"]


def run_study(
    seed: int, out: Path, test_pairs: int = 32, overrides: Sequence[str] = ()
) -> dict[str, dict[str, float]]:
    """Train the four models of one seed under ``out`` and measure them.

    Args:
        seed: ``train.seed`` of every run (the data stream and the initial weights).
        out: folder for the runs (``joint``, ``continued``, ``mi``).
        test_pairs: held-out pairs (the test split's subjects) to measure on.
        overrides: ``key=value`` overrides of JSSR's quick preset; those outside ``model.`` apply
            to the MI baseline as well.
    Returns:
        ``evaluate_jssr``'s means for ``stage2``, ``joint``, ``continued`` and ``mi``.
    """
    common = [*_CHEAP_EVAL, f"train.seed={seed}"]
    shared = [o for o in overrides if not o.startswith("model.")]
    cfg = resolve_config("jssr", None, [*common, *overrides])
    held_out = resolve_config(
        "jssr", None, [*common, *overrides, f"data.num_subjects={test_pairs}"]
    )
    test = build_dataset(held_out, "test")
    s1, s2, s3 = (int(s) for s in cfg.model.stage_steps)

    first = Trainer(cfg, out / "joint", progress=False)
    first.fit(stop_at=s1 + s2)
    results = {"stage2": evaluate_jssr(first.model, test)}
    shutil.copytree(out / "joint", out / "continued")

    joint = Trainer(cfg, out / "joint", progress=False)
    joint.fit(resume=True)
    results["joint"] = evaluate_jssr(joint.model, test)

    continued_cfg = resolve_config(
        "jssr", None, [*common, *overrides, f"model.stage_steps=[{s1},{s2 + s3},0]"]
    )
    continued = Trainer(continued_cfg, out / "continued", progress=False)
    continued.fit(resume=True)
    results["continued"] = evaluate_jssr(continued.model, test)

    baseline_cfg = resolve_config("jssr-mi-baseline", None, [*common, *shared])
    baseline = Trainer(baseline_cfg, out / "mi", progress=False)
    baseline.fit()
    results["mi"] = evaluate_jssr(baseline.model, test)
    return results


def seed_spread(
    by_seed: Mapping[int, Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """The spread over seeds of :func:`run_study`'s results.

    Returns:
        For each model (and ``gain``: the Dice differences ``joint - continued`` and
        ``joint - mi``) and each measure: ``mean``, ``std`` (population), ``min``, ``max`` and
        ``n`` over the seeds.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for results in by_seed.values():
        gains = {
            "joint - continued": results["joint"]["dice"] - results["continued"]["dice"],
            "joint - mi": results["joint"]["dice"] - results["mi"]["dice"],
        }
        for model, measures in {**results, "gain": gains}.items():
            for key, value in measures.items():
                values.setdefault(model, {}).setdefault(key, []).append(float(value))
    spread: dict[str, dict[str, dict[str, float]]] = {}
    for model, measures in values.items():
        for key, found in measures.items():
            stats = summarize(found)
            spread.setdefault(model, {})[key] = {
                "mean": stats["mean"],
                "std": stats["std"],
                "min": min(found),
                "max": max(found),
                "n": stats["n"],
            }
    return spread


def _rounded(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _rounded(v) for k, v in tree.items()}
    return round(tree, 4) if isinstance(tree, float) else tree


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m regzoo_jssr.study [--seed N] [--out DIR] [overrides...]``."""
    parser = argparse.ArgumentParser(prog="python -m regzoo_jssr.study", description=__doc__)
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="train.seed of every run (several: spread)"
    )
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--pairs", type=int, default=32, help="held-out pairs to measure on")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the quick preset")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="jssr-study-"))
    by_seed = {}
    try:
        for seed in args.seed:
            folder = out if len(args.seed) == 1 else out / f"seed{seed}"
            by_seed[seed] = run_study(seed, folder, args.pairs, args.overrides)
    except UserError as err:  # a bad override, as the regzoo command line reports it
        parser.exit(2, f"{parser.prog}: {err}\n")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    if len(by_seed) == 1:
        print(json.dumps(_rounded(next(iter(by_seed.values())))))
    else:
        print(json.dumps(_rounded({"seeds": by_seed, "spread": seed_spread(by_seed)})))


if __name__ == "__main__":
    main()
