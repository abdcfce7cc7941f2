"""The one training engine every model uses.

The model owns its step (:meth:`RegistrationModel.training_step`); the engine owns the rest:
device and distributed set-up, seeding, the data stream, mixed precision, progress display, the
CSV log, checkpoints (atomic, resumable, with config and versions), validation and stopping on a
non-finite loss with the last good checkpoint kept.

The data order is a pure function of ``(seed, step)`` (:class:`~regzoo.data.loader.StepSampler`,
fed through a DataLoader with ``train.workers`` worker processes), and the checkpoint holds the RNG
states, so a resumed run continues exactly where an uninterrupted one would have gone, whatever
the number of workers. At the first step the engine checks the model's output against the
contract (:func:`regzoo.models.contract_problem`) and stops with a :class:`PluginError` naming the
model and its plugin.
"""

from __future__ import annotations

import contextlib
import csv
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from ..atomic import atomic_path, write_text
from ..data.loader import StepSampler, make_loader
from ..errors import ConfigError, DataError, NonFiniteLossError, PluginError, UserError
from ..faults import plugin_label
from ..models import Optimizers, contract_problem
from ..registry import build, create_model, get_entry
from .checkpoint import (
    first_line,
    load_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
    versions,
)
from .evaluate import evaluate
from .optim import make_optimizer
from .report import write_report
from .rundir import check_resumable, claim_run_dir
from .runtime import Runtime, autocast, seed_everything, setup_runtime

__all__ = ["Trainer", "train", "build_model", "build_dataset", "TrainResult", "lr_factor"]


def build_model(cfg: DictConfig, source: str | Path | None = None) -> torch.nn.Module:
    """The model a resolved run config describes (``cfg.model``).

    ``source`` names the file the config was read from (a checkpoint): a config that cannot be
    built (negative widths, say) is then one line naming it rather than an internal error.
    """
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    name = model_cfg.pop("name")
    try:
        return create_model(name, **model_cfg)
    except UserError:
        raise
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as err:
        where = f"{source}: its" if source is not None else "the"
        raise (DataError if source is not None else ConfigError)(
            f"{where} model config cannot be built ({type(err).__name__}: {first_line(err)})"
        ) from None


def build_dataset(cfg: DictConfig, split: str, augment: bool = False) -> Dataset:
    """The ``split`` (``train``/``val``/``test``) of the dataset ``cfg.data`` describes.

    ``data.augment`` is kept only with ``augment=True`` (the training set): evaluation and
    registration never augment.
    """
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if not augment and data_cfg.get("augment"):
        data_cfg["augment"] = None
    return build("dataset", {**data_cfg, "split": split})


class CsvLog:
    """``log.csv``: one row per logged step; the header grows when a new term appears.

    Created at the first row. A resumed run drops the rows past its checkpoint's step. Whole
    rewrites go through :mod:`regzoo.atomic`, so the file is never seen empty or half written.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            self.rows = [r for r in rows if int(r["step"]) <= resume_step]
            if len(self.rows) < len(rows):
                self._rewrite(list(rows[0].keys()))
        self.fields: list[str] = list(self.rows[0].keys()) if self.rows else []

    def _rewrite(self, fields: list[str]) -> None:
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        new = [k for k in row if k not in self.fields]
        if new or not self.path.is_file():
            self.fields += new
            self._rewrite(self.fields)
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(row)


@dataclass
class TrainResult:
    """Where a run left its files and what its final evaluation said."""

    out_dir: Path
    step: int
    metrics: dict[str, Any] | None


def _scalar(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


def lr_factor(train: Any) -> Callable[[int], float]:
    """The multiplier of ``train.lr`` at step ``s`` (the ``train`` section; :class:`TrainConfig`):
    the scheduler's factor times the linear warm-up's."""
    steps, power = max(int(train.steps), 1), float(train.poly_power)
    milestones, gamma = sorted(int(m) for m in train.lr_milestones), float(train.lr_gamma)
    warmup = int(train.warmup_steps)
    if train.scheduler not in ("none", "poly", "step"):
        raise ConfigError(f"train.scheduler must be none, poly or step, got {train.scheduler!r}")

    def factor(s: int) -> float:
        if train.scheduler == "poly":
            value = max(0.0, 1 - s / steps) ** power
        elif train.scheduler == "step":
            value = gamma ** sum(s >= m for m in milestones)
        else:
            value = 1.0
        return value * min(1.0, (s + 1) / warmup) if warmup else value

    return factor


class Trainer:
    """Trains the model of a resolved run config into ``out_dir``.

    Args:
        cfg: the resolved config (:func:`regzoo.config.resolve_config`).
        out_dir: run directory: ``config.yaml``, ``last.pt``, ``best.pt``, ``log.csv``,
            ``metrics.json``.
        device: ``auto``, ``cpu``, ``cuda[:N]``.
        threads: torch CPU threads.
        progress: show a progress bar (on a terminal) or periodic log lines.
    """

    def __init__(
        self,
        cfg: DictConfig,
        out_dir: str | Path,
        device: str = "auto",
        threads: int | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.runtime: Runtime = setup_runtime(device, threads)
        self.progress = progress and self.runtime.is_main
        seed_everything(int(cfg.train.seed))
        self.model = build_model(cfg).to(self.runtime.device)
        if cfg.train.weights:
            load_weights(self.model, cfg.train.weights)
        if self.runtime.distributed:
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, 0)
            seed_everything(int(cfg.train.seed) + self.runtime.rank)
        self.train_set = build_dataset(cfg, "train", augment=True)
        # one label table for the run: heads, label warping and the checkpoint use it
        self.model.label_table = getattr(self.train_set, "label_table", None)
        self.sampler = StepSampler(
            len(self.train_set),
            int(cfg.train.batch_size),
            int(cfg.train.seed),
            self.runtime.rank,
            self.runtime.world_size,
        )
        self.optim = self._make_optimizers() if self.model.trainable else Optimizers({})
        self.step = 0
        self.best: float | None = None
        if cfg.train.compile:
            self.model.compile()

    # -- set-up ---------------------------------------------------------------------------------
    def _make_optimizers(self) -> Optimizers:
        t = self.cfg.train
        optimizers, schedulers = {}, {}
        factor = lr_factor(t)
        for name, params in self.model.parameter_groups().items():
            opt = make_optimizer(params, t.optimizer, t.lr, t.weight_decay, t.amsgrad)
            optimizers[name] = opt
            if t.scheduler != "none" or t.warmup_steps:
                schedulers[name] = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        scaler = None
        if t.amp == "fp16" and self.runtime.device.type == "cuda":
            scaler = torch.amp.GradScaler("cuda")
        return Optimizers(optimizers, schedulers, t.grad_clip, scaler)

    def _batches(self, stop: int) -> Iterator[dict[str, Any]]:
        """The batches of steps ``self.step`` to ``stop - 1``, on the device."""
        self.sampler.start, self.sampler.stop = self.step, stop
        loader = make_loader(
            self.train_set,
            self.sampler,
            workers=int(self.cfg.train.workers),
            seed=int(self.cfg.train.seed),
            pin_memory=self.runtime.device.type == "cuda",
        )
        dev = self.runtime.device
        for batch in loader:
            yield {
                k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }

    def _checked_step(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """``training_step``, checking the model's first output on ``batch`` against the contract.

        The output is checked where the model is called (a forward hook), before any loss or
        update uses it, at no extra cost; a model whose step never calls it is run once more on
        the batch, in evaluation mode, without gradients and with the RNG state restored.
        """
        checked = False

        def check(_module: Any, args: tuple[Any, ...], out: Any) -> None:
            nonlocal checked
            if not checked:
                checked = True  # against the batch of this call: a step may pass a sub-batch
                first = args[0] if args else None
                called = first if isinstance(first, Mapping) and "moving" in first else batch
                self._check_output(out, called, step)

        handle = self.model.register_forward_hook(check)
        try:
            terms = self.model.training_step(batch, self.optim, step)
        finally:
            handle.remove()
        if not checked:
            devices = [self.runtime.device] if self.runtime.device.type == "cuda" else []
            self.model.eval()  # no running statistics updated by this extra pass
            try:
                with torch.no_grad(), torch.random.fork_rng(devices):
                    self._check_output(self.model(batch), batch, step)
            finally:
                self.model.train()
        return terms

    def _check_output(self, out: Any, batch: dict[str, Any], step: int) -> None:
        problem = contract_problem(out, batch)
        if problem is not None:
            name = str(self.cfg.model.name)
            raise PluginError(
                f"model {name!r} ({plugin_label(get_entry('model', name).plugin)}) broke the "
                f"output contract at step {step + 1}: {problem}"
            )

    # -- checkpoints ----------------------------------------------------------------------------
    def _payload(self, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": "regzoo-checkpoint-1",
            "model": self.cfg.model.name,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "state_dict": self.model.state_dict(),
            "step": self.step,
            "optim": self.optim.state_dict(),
            "rng": rng,
            "best": self.best,
            "versions": versions(),
            "metrics": dict(metrics) if metrics else None,
            "labels": None if self.model.label_table is None else self.model.label_table.to_list(),
        }

    def save(self, name: str = "last.pt", metrics: Mapping[str, Any] | None = None) -> None:
        if self.runtime.is_main:
            save_checkpoint(self.out_dir / name, self._payload(metrics))

    def resume(self) -> None:
        """Continue from ``out_dir/last.pt``: weights, optimisers, step, RNG state.

        The checkpoint must be a run of the same model (:func:`check_resumable`) whose weights fit.
        """
        path = self.out_dir / "last.pt"
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, path, str(self.cfg.model.name))
        load_state(self.model, ckpt["state_dict"], path)
        self.optim.load_state_dict(ckpt["optim"])
        self.step = int(ckpt["step"])
        self.best = ckpt.get("best")
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    # -- the loop -------------------------------------------------------------------------------
    def fit(
        self, resume: bool = False, stop_at: int | None = None, force: bool = False
    ) -> TrainResult:
        """Train until ``train.steps``, then evaluate on held-out pairs (rank 0).

        ``stop_at`` ends the run earlier, after that many steps, as an interrupted run would: a
        checkpoint and no evaluation (``metrics`` is ``None``); ``resume`` continues it, on the
        same schedule. Branching experiments train to a step once and resume from there.

        ``out_dir`` is owned (:func:`regzoo.engine.rundir.claim_run_dir`): a folder that holds a
        run needs ``resume`` or ``force`` (replace it), and rank 0 holds its lock until the end.
        """
        held = (
            claim_run_dir(self.out_dir, resume, force)
            if self.runtime.is_main
            else contextlib.nullcontext()
        )
        with held:
            return self._fit(resume, stop_at)

    def _fit(self, resume: bool, stop_at: int | None) -> TrainResult:
        t = self.cfg.train
        if resume:
            self.resume()
        if self.runtime.is_main:
            write_text(self.out_dir / "config.yaml", OmegaConf.to_yaml(self.cfg))
            log = CsvLog(self.out_dir / "log.csv", self.step if resume else None)
        total = int(t.steps)
        end = total if stop_at is None else min(int(stop_at), total)
        display = _Progress(total, self.step, enabled=self.progress)
        start = time.perf_counter()
        if not self.model.trainable:
            end = self.step
            if self.runtime.is_main:
                print(
                    f"regzoo: model {self.cfg.model.name!r} is not trainable (a classical "
                    "method): no optimisation, evaluating",
                    file=sys.stderr,
                )
        self.model.train()
        try:
            for batch in self._batches(end):
                step = self.step
                stage = self.model.stage(step)
                with autocast(self.runtime.device, t.amp):
                    if step == 0:
                        terms = self._checked_step(batch, step)
                    else:
                        terms = self.model.training_step(batch, self.optim, step)
                self.step = step + 1
                values = {k: _scalar(v) for k, v in terms.items()}
                if self.runtime.is_main:
                    if self.step % int(t.log_every) == 0 or self.step == total:
                        lr = next(iter(self.optim.optimizers.values())).param_groups[0]["lr"]
                        log.append(
                            {
                                "step": self.step,
                                "stage": stage,
                                "elapsed_s": round(time.perf_counter() - start, 3),
                                "lr": lr,
                                **values,
                            }
                        )
                    display.update(self.step, stage, values.get("loss"))
                if int(t.val_every) and self.step % int(t.val_every) == 0 and self.step < total:
                    self._validate()
                if self.step % int(t.ckpt_every) == 0 and self.step < total:
                    self.save()
        except NonFiniteLossError as err:
            display.close()
            raise NonFiniteLossError(
                f"stopped at step {self.step + 1}: {err}"
                + (f" ({self.out_dir / 'last.pt'})" if (self.out_dir / "last.pt").exists() else "")
            ) from None
        display.close()
        if self.runtime.distributed:
            self._check_ranks_in_sync()
        self.save()
        metrics = None
        if self.runtime.is_main and (self.step >= total or not self.model.trainable):
            metrics = self.final_evaluation()
        if self.runtime.distributed:
            dist.barrier()
        return TrainResult(self.out_dir, self.step, metrics)

    def _check_ranks_in_sync(self, tol: float = 1e-6) -> None:
        """Every rank must hold rank 0's weights after data-parallel training."""
        flat = torch.cat([p.detach().reshape(-1).float() for p in self.model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = (flat - ref).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        if float(diff) > tol:
            raise RuntimeError(
                f"data-parallel ranks diverged: max parameter difference {float(diff):.3g}"
            )

    def _validate(self) -> None:
        if not self.runtime.is_main:
            return
        val = build_dataset(self.cfg, "val")
        res = evaluate(
            self.model, val, self.runtime.device, ("dice",), int(self.cfg.train.val_pairs)
        )
        dice = res["summary"].get("dice")
        if dice is not None and (self.best is None or dice > self.best):
            self.best = dice
            self.save("best.pt", res["summary"])

    def final_evaluation(self) -> dict[str, Any]:
        """Evaluate on ``eval.split`` and write ``metrics.json``."""
        e = self.cfg.eval
        test = build_dataset(self.cfg, e.split)
        overview = self.out_dir / "overview.png" if e.overview else None
        res = evaluate(
            self.model,
            test,
            self.runtime.device,
            list(e.metrics),
            e.max_pairs,
            e.label_warp,
            overview,
        )
        write_report(res, self.out_dir)
        return res


class _Progress:
    """A rich progress bar on a terminal; a line every 10% otherwise."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._last_pct = -1
        if enabled and self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.fields[stage]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(
                "train", total=total, completed=start, stage="", loss="-"
            )
            self._bar.start()

    def update(self, step: int, stage: str, loss: float | None) -> None:
        if not self.enabled:
            return
        text = f"{loss:.4g}" if loss is not None else "-"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stage=stage, loss=text)
            return
        pct = int(100 * step / max(self.total, 1)) // 10
        if pct != self._last_pct:
            self._last_pct = pct
            print(f"[{stage}] step {step}/{self.total} loss {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def train(
    cfg: DictConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> TrainResult:
    """Train a resolved config into ``out_dir`` (see :class:`Trainer`; ``force`` replaces a run
    that ``out_dir`` holds, ``resume`` continues it)."""
    if resume and not (Path(out_dir) / "last.pt").is_file():
        raise UserError(f"--resume: no checkpoint to resume from in {out_dir} (last.pt missing)")
    return Trainer(cfg, out_dir, device, threads, progress).fit(resume=resume, force=force)
