"""The engine: training loop, log, checkpoints (atomic, resumable, safe to load), NaN stop, config."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from regzoo.config import resolve_config
from regzoo.engine import Trainer, load_checkpoint, save_checkpoint, train
from regzoo.errors import ConfigError, DataError, NonFiniteLossError, UserError
from regzoo.models import Optimizers, RegistrationModel, RegistrationOutput
from regzoo.registry import register_dataset, register_model
from regzoo.spatial import warp

SHIFT = 2


@register_dataset("engine-test-shift", summary="Smooth images and copies shifted by 2 voxels.")
class ShiftPairs(torch.utils.data.Dataset):
    def __init__(
        self, ndim: int = 2, size: int = 16, count: int = 12, split: str = "train", seed: int = 0
    ):
        g = torch.Generator().manual_seed(seed + {"train": 0, "val": 1, "test": 2}[split])
        base = torch.nn.functional.avg_pool2d(
            torch.rand(count, 1, size, size, generator=g), 5, 1, 2
        )
        self.fixed = base
        self.moving = torch.roll(base, (SHIFT, SHIFT), (2, 3))  # moving[x] = fixed[x - s]: ddf = +s
        self.labels = (base > base.mean()).long()
        self.moving_labels = torch.roll(self.labels, (SHIFT, SHIFT), (2, 3))

    def __len__(self):
        return len(self.fixed)

    def __getitem__(self, i):
        return {
            "moving": self.moving[i],
            "fixed": self.fixed[i],
            "moving_label": self.moving_labels[i],
            "fixed_label": self.labels[i],
            "spacing": torch.ones(2),
        }


@register_dataset("engine-test-shift-pid", summary="engine-test-shift; items name their process.")
class ShiftPairsWithPid(ShiftPairs):
    def __getitem__(self, i):
        return {**super().__getitem__(i), "loaded_by": torch.tensor(os.getpid())}


@register_dataset("engine-test-mixed", summary="Pairs of two sizes (they cannot share a batch).")
class MixedSizes(torch.utils.data.Dataset):
    def __init__(self, ndim: int = 2, split: str = "train"):
        self.sizes = [8, 8, 12, 12]

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        image = torch.rand(1, self.sizes[i], self.sizes[i])
        return {"moving": image, "fixed": image, "fixed_path": f"case{i}.nii.gz"}


class GlobalShift(RegistrationModel):
    """Learns one translation; ``nan_at`` poisons the loss at that step (for the NaN test)."""

    def __init__(self, ndim: int = 2, nan_at: int = -1):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(ndim))
        self.nan_at = nan_at
        self.calls = 0
        self.loaded_by: set[int] = set()  # process ids that loaded the batches

    def forward(self, batch):
        if self.training and "loaded_by" in batch:
            self.loaded_by.update(batch["loaded_by"].tolist())
        m = batch["moving"]
        ddf = self.shift.view(1, -1, 1, 1).expand(m.shape[0], -1, *m.shape[2:])
        return RegistrationOutput(warped=warp(m, ddf), ddf=ddf)

    def loss(self, batch, out):
        loss = ((out.warped - batch["fixed"]) ** 2)[..., 3:-3, 3:-3].mean()
        self.calls += 1
        if self.calls - 1 == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}


register_model(
    "engine-test-shift",
    summary="Test model: one global translation.",
    tags=("2d",),
    presets={
        "quick": {
            "data": {"name": "engine-test-shift"},
            "train": {"steps": 30, "lr": 0.1, "batch_size": 4},
        }
    },
)(GlobalShift)


def _cfg(*overrides):
    return resolve_config("engine-test-shift", None, ["eval.metrics=[dice,folding]", *overrides])


def test_training_learns_writes_files_and_checkpoint_describes_itself(tmp_path):
    result = train(_cfg("train.log_every=5"), tmp_path, progress=False)
    assert result.step == 30
    for name in ("config.yaml", "last.pt", "log.csv", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["model"] == "engine-test-shift" and ckpt["step"] == 30
    assert ckpt["config"]["train"]["steps"] == 30 and "torch" in ckpt["versions"]
    assert torch.allclose(ckpt["state_dict"]["shift"], torch.full((2,), float(SHIFT)), atol=0.2)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert result.metrics["summary"]["dice"] > result.metrics["identity"]["dice"]
    assert "pair" not in result.metrics["summary"]  # an index, not a measure


def test_adamax_is_built_from_the_config_and_trains(tmp_path):
    trainer = Trainer(_cfg("train.optimizer=adamax", "train.weight_decay=0.001"), tmp_path / "a")
    opt = trainer.optim["model"]
    assert isinstance(opt, torch.optim.Adamax)
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.1, 0.001)
    train(_cfg("train.optimizer=adamax", "train.steps=60"), tmp_path / "b", progress=False)
    shift = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]["shift"]
    assert torch.allclose(shift, torch.full((2,), float(SHIFT)), atol=0.2)


def test_every_listed_optimizer_is_built_with_its_settings():
    from regzoo.config import OPTIMIZERS
    from regzoo.engine.optim import make_optimizer

    expected = {
        "adam": "Adam",
        "adamw": "AdamW",
        "radam": "RAdam",
        "sgd": "SGD",
        "adamax": "Adamax",
    }
    assert set(OPTIMIZERS) == set(expected)
    for name in OPTIMIZERS:
        opt = make_optimizer([nn.Parameter(torch.ones(1))], name, lr=0.5, weight_decay=0.25)
        assert type(opt).__name__ == expected[name]
        assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.5, 0.25)
    assert make_optimizer([nn.Parameter(torch.ones(1))], "adam", amsgrad=True).defaults["amsgrad"]


def test_updates_without_schedule_share_the_step_learning_rate():
    p = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    optim = Optimizers({"model": opt}, {"model": schedule})
    optim.step((p**2).sum(), schedule=False)  # p: 1 - 1 * 2 = -1, the schedule left as it is
    assert p.item() == -1.0 and opt.param_groups[0]["lr"] == 1.0
    optim.step((p**2).sum())  # the step's last update, at the same rate: -1 + 2 = 1
    assert p.item() == 1.0 and opt.param_groups[0]["lr"] == 0.5 and schedule.last_epoch == 1


def test_learning_rate_factor_of_each_schedule_with_warm_up():
    """``step`` multiplies by ``lr_gamma`` at each milestone (RCN's halving), ``poly`` decays to
    0 at ``train.steps``, and a warm-up ramps linearly over its first steps (Dual-PRNet's)."""
    from regzoo.engine.trainer import lr_factor

    cfg = _cfg("train.steps=100", "train.scheduler=step", "train.lr_milestones=[60,80]")
    step = lr_factor(cfg.train)
    assert [step(s) for s in (0, 59, 60, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cfg = _cfg(
        "train.steps=100",
        "train.scheduler=step",
        "train.lr_milestones=[80,60]",
        "train.lr_gamma=0.5",
        "train.warmup_steps=4",
    )
    warm = lr_factor(cfg.train)
    assert [warm(s) for s in (0, 1, 3, 4, 60, 80)] == [0.25, 0.5, 1.0, 1.0, 0.5, 0.25]
    poly = lr_factor(_cfg("train.steps=10", "train.scheduler=poly", "train.poly_power=1").train)
    assert [poly(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor(_cfg().train)(50) == 1.0
    with pytest.raises(ConfigError, match="train.warmup_steps must be >= 0"):
        _cfg("train.warmup_steps=-1")
    with pytest.raises(ConfigError, match="train.scheduler must be one of none, poly, step"):
        _cfg("train.scheduler=cosine")


def test_trainer_steps_the_learning_rate_of_its_schedule(tmp_path):
    cfg = _cfg(
        "train.steps=6", "train.scheduler=step", "train.lr_milestones=[3]", "train.lr_gamma=0.5"
    )
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.fit()
    lr = cfg.train.lr
    (opt,) = trainer.optim.optimizers.values()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * lr)


def test_resume_continues_to_the_same_weights(tmp_path):
    full = train(_cfg("train.steps=20"), tmp_path / "full", progress=False)
    train(_cfg("train.steps=8", "train.ckpt_every=4"), tmp_path / "part", progress=False)
    base = load_checkpoint(tmp_path / "part" / "last.pt")["config"]
    resumed = train(
        resolve_config(None, None, ["train.steps=20"], base=base),
        tmp_path / "part",
        resume=True,
        progress=False,
    )
    a = load_checkpoint(full.out_dir / "last.pt")["state_dict"]["shift"]
    b = load_checkpoint(resumed.out_dir / "last.pt")["state_dict"]["shift"]
    assert resumed.step == 20
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    steps = [int(r["step"]) for r in csv.DictReader((tmp_path / "part" / "log.csv").open())]
    assert steps == sorted(set(steps)) and steps[-1] == 20


def test_workers_load_off_the_training_process_and_change_no_weight(tmp_path):
    """``train.workers=2`` loads the batches in worker processes and trains to the same weights
    as loading them in the training process (the items of a step depend on (seed, step) only)."""
    weights, loaders = {}, {}
    for workers in (0, 2):
        cfg = _cfg("train.steps=20", "data.name=engine-test-shift-pid", f"train.workers={workers}")
        trainer = Trainer(cfg, tmp_path / str(workers), progress=False)
        trainer.fit(stop_at=20)
        weights[workers] = trainer.model.shift.detach().clone()
        loaders[workers] = trainer.model.loaded_by
    assert loaders[0] == {os.getpid()}
    assert loaders[2] and os.getpid() not in loaders[2]
    assert torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], torch.zeros(2))


def test_a_batch_of_mixed_sizes_is_a_data_error_during_training(tmp_path):
    cfg = _cfg("data.name=engine-test-mixed", "train.batch_size=4")
    with pytest.raises(DataError, match="different sizes .* case"):
        Trainer(cfg, tmp_path, progress=False).fit()


class NoLearning(GlobalShift):
    """A classical method: nothing to train (its ``shift`` stays the identity)."""

    trainable = False


register_model(
    "engine-test-classical",
    summary="Test model: not trainable.",
    tags=("2d",),
    presets={"quick": {"data": {"name": "engine-test-shift"}, "train": {"steps": 30}}},
)(NoLearning)


def test_a_model_that_is_not_trainable_is_evaluated_without_steps(tmp_path, capsys):
    cfg = resolve_config("engine-test-classical", None, ["eval.metrics=[dice]"])
    result = train(cfg, tmp_path, progress=False)
    assert result.step == 0 and result.metrics is not None
    assert "not trainable" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "last.pt")["state_dict"]["shift"].abs().sum() == 0
    assert not (tmp_path / "log.csv").exists()  # no step logged


def test_stop_at_checkpoints_midway_and_resume_finishes_the_same_schedule(tmp_path):
    """fit(stop_at=k) is an interruption at step k: a checkpoint, no evaluation; resuming it
    reaches the weights of one uninterrupted run (the learning rate decays over train.steps)."""
    cfg = _cfg("train.steps=20", "train.scheduler=poly")
    full = Trainer(cfg, tmp_path / "full", progress=False).fit()
    part = Trainer(cfg, tmp_path / "part", progress=False).fit(stop_at=8)
    assert (part.step, part.metrics) == (8, None)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 8
    done = Trainer(cfg, tmp_path / "part", progress=False).fit(resume=True)
    assert done.step == 20 and done.metrics is not None
    a = load_checkpoint(full.out_dir / "last.pt")["state_dict"]["shift"]
    b = load_checkpoint(done.out_dir / "last.pt")["state_dict"]["shift"]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg("model.nan_at=13", "train.ckpt_every=5")
    with pytest.raises(NonFiniteLossError, match="step 14"):
        train(cfg, tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 10
    assert all(math.isfinite(v) for v in ckpt["state_dict"]["shift"].tolist())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(UserError, match="last.pt: cannot write the checkpoint"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_config_layers_and_errors(tmp_path):
    cfg = _cfg("train.steps=7", "data.size=12")
    assert cfg.train.steps == 7 and cfg.data.size == 12 and cfg.train.lr == 0.1  # preset kept
    assert cfg.model.ndim == cfg.data.ndim == 2
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train:\n  steps: 3\n  lr: 0.5\n")
    cfg = resolve_config("engine-test-shift", yaml_file, ["train.steps=4"])
    assert (cfg.train.steps, cfg.train.lr) == (4, 0.5)
    with pytest.raises(ConfigError, match="stpes"):
        _cfg("train.stpes=3")
    with pytest.raises(ConfigError, match="bogus"):
        _cfg("model.bogus=1")
    with pytest.raises(ConfigError, match="malformed override"):
        _cfg("train.steps")
    with pytest.raises(ConfigError, match="no preset 'nope'"):
        _cfg("preset=nope")
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        _cfg("trian.steps=3")
    assert isinstance(Path(tmp_path), Path)


@pytest.mark.parametrize("ndim", [2, 3])
def test_overview_png_decodes_and_holds_the_six_panels(tmp_path, ndim):
    from PIL import Image

    from regzoo.engine.overview import render_overview

    g = torch.Generator().manual_seed(0)
    shape = (24, 28, 32)[-ndim:]
    fixed, moving = torch.rand(1, *shape, generator=g), torch.rand(1, *shape, generator=g)
    ddf = torch.zeros(ndim, *shape)
    ddf[-1, ..., 10:14] = torch.linspace(3.0, -3.0, 4)  # a fold: two columns cross
    path = render_overview(moving, fixed, moving, ddf, tmp_path / "overview.png", title="pair 0")
    with Image.open(path) as png:
        png.load()
        assert png.format == "PNG" and png.size == (960, 640)
        panels = png.text["Description"].split("; ")
        pixels = np.asarray(png.convert("L"), dtype=float)
    assert panels[:5] == [
        "fixed",
        "moving",
        "warped",
        "checkerboard fixed / warped",
        "deformation grid",
    ]
    assert panels[5].startswith("Jacobian determinant (") and "% folded" in panels[5]
    assert float(panels[5].split("(")[1].split("%")[0]) > 0  # the fold is counted
    # Each panel of the 2 x 3 grid draws something (not a blank tile).
    for tile in (t for row in np.array_split(pixels, 2, 0) for t in np.array_split(row, 3, 1)):
        assert tile.std() > 5


@pytest.mark.parametrize("layout", ["bare", "checkpoint"])
def test_weights_file_loads_through_the_default_hook(tmp_path, layout):
    """``--weights`` for a model that keeps the default ``load_weights``: a bare state dict or a
    regzoo checkpoint sets every parameter (a hook that loads nothing fails here)."""
    from regzoo.engine.checkpoint import load_weights

    state = {"shift": torch.tensor([1.5, -2.0])}
    path = tmp_path / "w.pt"
    torch.save(state if layout == "bare" else {"state_dict": state}, path)
    model = GlobalShift()
    load_weights(model, path)
    assert torch.equal(model.shift.detach(), state["shift"])


def test_evaluation_summarises_each_metric_with_its_aggregate():
    """TRE is summarised by its mean over pairs, success-auc by its area over all pairs."""
    from regzoo.engine import evaluate
    from regzoo.metrics import success_auc

    class Shift(nn.Module):
        def forward(self, batch):
            ddf = torch.full((1, 2, 8, 8), 1.0)
            return RegistrationOutput(warped=batch["moving"], ddf=ddf)

    fixed_points = torch.tensor([[1.0, 1.0], [2.0, 5.0]])
    data = [
        {
            "moving": torch.rand(1, 8, 8),
            "fixed": torch.rand(1, 8, 8),
            "fixed_landmarks": fixed_points,
            "moving_landmarks": fixed_points + torch.tensor([1.0 + 3 * k, 1.0]),
        }
        for k in range(5)
    ]
    res = evaluate(Shift(), data, metrics=("tre", "success-auc"))
    errors = [c["success-auc"] for c in res["cases"]]
    assert errors == pytest.approx([3.0 * k for k in range(5)])
    assert res["summary"]["tre"] == pytest.approx(6.0)
    assert res["summary"]["success-auc"] == pytest.approx(success_auc(errors))
    assert res["identity"]["success-auc"] == pytest.approx(
        success_auc([c["before_success-auc"] for c in res["cases"]])
    )
