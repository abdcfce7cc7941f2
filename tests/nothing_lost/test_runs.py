"""Training and evaluation never lose a run and never report garbage (issue 12, runs half).

Each test is named for the user mistake it guards against. The command line runs in this process
(``regzoo.cli.main``, exactly what the ``regzoo`` script calls) so torch is imported once; a run is
2 steps of VoxelMorph on 32x32 synthetic pairs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from regzoo import atomic
from regzoo.cli import main
from regzoo.config import resolve_config
from regzoo.engine import build_dataset, evaluate, save_checkpoint, setup_runtime
from regzoo.engine.rundir import LOCK_NAME
from regzoo.errors import ConfigError, DataError
from regzoo.models import RegistrationOutput

TINY = [
    "train.steps=2",
    "train.batch_size=1",
    "train.ckpt_every=1",
    "data.size=[32,32]",
    "eval.max_pairs=1",
    "eval.overview=false",
    "--threads",
    "1",
]


def regzoo(capsys, *args: str | Path) -> tuple[int, list[str]]:
    """Run the command line; returns the exit code and the lines it wrote to stderr."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(code: int, err: list[str], *needles: str) -> None:
    """Exit code 2 and one ``regzoo: error:`` line (after any progress lines) naming ``needles``."""
    assert code == 2, err
    errors = [line for line in err if line.startswith("regzoo:")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert errors[0].startswith("regzoo: error: "), err
    for needle in needles:
        assert needle in errors[0], errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A finished run, made once; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("first") / "run"
    assert main(["train", "voxelmorph", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(first_run, tmp_path) -> Path:
    """A copy of the finished run for one test."""
    return Path(shutil.copytree(first_run, tmp_path / "run"))


def _checkpoint(run: Path, name: str, change) -> Path:
    """A copy of ``run``'s last.pt with ``change(ckpt)`` applied, saved as ``name``."""
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    change(ckpt)
    path = run.parent / name
    save_checkpoint(path, ckpt)
    return path


def _images(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for name in ("moving", "fixed"):
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((32, 32)).astype(np.float32), np.eye(4)), str(path))
        paths += [f"--{name}", str(path)]
    return paths


# -- run directories are owned ----------------------------------------------------------------------


def test_training_twice_into_one_directory_stops_and_keeps_the_first_run(
    capsys, tmp_path, monkeypatch
):
    """The README's first command, run twice (here with tiny settings)."""
    monkeypatch.chdir(tmp_path)
    code, err = regzoo(capsys, "train", "voxelmorph", *TINY)
    assert code == 0, err
    run = tmp_path / "runs" / "voxelmorph"
    before = snapshot(run)
    assert {"config.yaml", "last.pt", "log.csv", "metrics.json"} <= set(before)

    code, err = regzoo(capsys, "train", "voxelmorph", *TINY)
    assert len(err) == 1, err
    assert_one_line_error(code, err, "--resume", "--force", str(Path("runs") / "voxelmorph"))
    assert snapshot(run) == before
    # An invalid override on the second run changes nothing either.
    code, err = regzoo(capsys, "train", "voxelmorph", *TINY, "train.steps=0")
    assert code == 2 and len(err) == 1, err
    assert snapshot(run) == before


def test_force_replaces_the_run_and_keeps_no_file_of_the_old_one(capsys, run):
    (run / "best.pt").write_bytes((run / "last.pt").read_bytes())
    (run / "evaluation").mkdir()
    (run / "evaluation" / "metrics.json").write_text("{}")
    old = snapshot(run)
    code, err = regzoo(
        capsys, "train", "voxelmorph", *TINY, "train.steps=3", "--out", run, "--force"
    )
    assert code == 0, err
    assert not (run / "best.pt").exists() and not (run / "evaluation").exists()
    log = (run / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["3"]  # the new run's rows only
    assert "steps: 3" in (run / "config.yaml").read_text()
    for name in ("last.pt", "metrics.json"):
        assert (run / name).read_bytes() != old[name]


def test_resume_and_force_together_are_refused(capsys, run):
    before = snapshot(run)
    code, err = regzoo(capsys, "train", "voxelmorph", "--out", run, "--resume", "--force")
    assert len(err) == 1, err
    assert_one_line_error(code, err, "--resume", "--force")
    assert snapshot(run) == before


def test_resuming_a_run_under_another_model_name_is_refused(capsys, run):
    before = snapshot(run)
    code, err = regzoo(capsys, "train", "voxelmorph-1", "--resume", "--out", run, "--threads", "1")
    assert len(err) == 1, err
    assert_one_line_error(code, err, "'voxelmorph'", "'voxelmorph-1'", "last.pt")
    assert snapshot(run) == before


def test_resume_without_a_run_to_continue_is_refused(capsys, tmp_path):
    code, err = regzoo(capsys, "train", "voxelmorph", "--resume", "--out", tmp_path / "nothing")
    assert len(err) == 1, err
    assert_one_line_error(code, err, "last.pt")


@pytest.mark.parametrize("holds_a_run", [False, True], ids=["new folder", "resumed run"])
def test_second_process_training_into_a_held_run_is_refused(capsys, run, tmp_path, holds_a_run):
    out = run if holds_a_run else tmp_path / "new"
    out.mkdir(exist_ok=True)
    before = snapshot(out)
    with open(out / LOCK_NAME, "a") as held:  # the first process holds the lock while it trains
        fcntl.flock(held, fcntl.LOCK_EX)
        extra = ["--resume"] if holds_a_run else []
        code, err = regzoo(capsys, "train", "voxelmorph", *TINY, "--out", out, *extra)
        assert len(err) == 1, err
        assert_one_line_error(code, err, "another regzoo process", str(out))
        assert snapshot(out) == {**before, LOCK_NAME: b""}
    # Released (as when its process ends), the run can be trained again.
    code, err = regzoo(capsys, "train", "voxelmorph", *TINY, "--out", out, *extra)
    assert code == 0, err


def test_evaluating_into_a_run_directory_keeps_the_runs_metrics(capsys, run):
    before = snapshot(run)
    code, err = regzoo(capsys, "evaluate", run / "last.pt", "--out", run, "--threads", "1")
    assert code == 0, err
    after = snapshot(run)
    assert {k: after[k] for k in before} == before
    assert (run / "evaluation" / "metrics.json").is_file()
    assert (run / "evaluation" / "cases.csv").is_file()


# -- numbers out of range, paths that cannot be written ---------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=-1",
        "train.lr=.nan",
        "data.ndim=5",
        "train.batch_size=0",
        "train.steps=-5",
        "train.log_every=0",
        "train.ckpt_every=0",
        "train.val_every=-1",
        "train.val_pairs=0",
        "train.weight_decay=-0.1",
        "train.grad_clip=0",
        "eval.max_pairs=0",
    ],
)
def test_out_of_range_number_is_one_line_before_any_step(capsys, tmp_path, override):
    out = tmp_path / "out"
    code, err = regzoo(capsys, "train", "voxelmorph", *TINY, override, "--out", out)
    assert len(err) == 1, err
    assert_one_line_error(code, err, override.split("=")[0])
    assert not out.exists()


def test_evaluating_with_max_pairs_zero_is_one_line(capsys, first_run):
    code, err = regzoo(capsys, "evaluate", first_run / "last.pt", "eval.max_pairs=0")
    assert len(err) == 1, err
    assert_one_line_error(code, err, "eval.max_pairs")


@pytest.mark.parametrize("threads", ["0", "-1"])
@pytest.mark.parametrize("command", ["train", "evaluate", "register"])
def test_threads_below_one_is_one_line(capsys, first_run, tmp_path, command, threads):
    target = "voxelmorph" if command == "train" else first_run / "last.pt"
    code, err = regzoo(capsys, command, target, "--threads", threads, "--out", tmp_path / "o")
    assert len(err) == 1, err
    assert_one_line_error(code, err, "--threads")
    assert not (tmp_path / "o").exists()


def test_threads_below_one_from_python_is_a_config_error():
    with pytest.raises(ConfigError, match="--threads"):
        setup_runtime("cpu", 0)


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder nobody may write. As root, permission bits do not stop writes, so then the
    kernel's answer (EACCES on creating a file there) is given by ``os.open`` itself."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real_open = os.open

        def denying_open(path, flags, *args, **kwargs):
            p = Path(os.fsdecode(path)).absolute()
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writing and (p == folder or folder in p.parents):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", denying_open)
    yield folder
    folder.chmod(0o755)


def test_out_that_is_a_file_or_read_only_is_one_line(capsys, first_run, tmp_path, read_only):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for out in (a_file, read_only, a_file / "sub"):
        code, err = regzoo(capsys, "train", "voxelmorph", *TINY, "--out", out)
        assert len(err) == 1, err
        assert_one_line_error(code, err, str(out))
        code, err = regzoo(capsys, "evaluate", first_run / "last.pt", "--out", out)
        assert_one_line_error(code, err, str(out))
    assert a_file.read_text() == "keep me" and not list(read_only.iterdir())


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_good_one(capsys, run, monkeypatch):
    before = (run / "last.pt").read_bytes()

    def disk_full(path: Path) -> None:
        if path.name == "last.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "before_rename", [disk_full])
    code, err = regzoo(
        capsys, "train", "voxelmorph", "--resume", "--out", run, "train.steps=4", "--threads", "1"
    )
    assert_one_line_error(code, err, str(run / "last.pt"), "No space left on device")
    assert (run / "last.pt").read_bytes() == before
    assert not list(run.glob(f"{atomic.TMP_PREFIX}*"))


# -- configs that would hang ------------------------------------------------------------------------

_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize("where", ["--config", "override"])
def test_billion_laughs_yaml_fails_fast_naming_its_source(capsys, tmp_path, where):
    if where == "--config":
        path = tmp_path / "laughs.yaml"
        path.write_text(_LAUGHS)
        args, source = ["--config", path], str(path)
    else:
        value = "{" + _LAUGHS.strip().replace("\n", ", ") + "}"
        args, source = [f"model.extra={value}"], "model.extra"
    start = time.perf_counter()
    code, err = regzoo(capsys, "train", "voxelmorph", *args, "--out", tmp_path / "out")
    assert time.perf_counter() - start < 10
    assert len(err) == 1, err
    assert_one_line_error(code, err, source, "aliases")


# -- results that are garbage -----------------------------------------------------------------------


def test_checkpoint_with_nan_weights_is_refused_everywhere(capsys, run, tmp_path):
    def poison(ckpt):
        key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
        ckpt["state_dict"][key][(0,) * ckpt["state_dict"][key].dim()] = float("nan")

    nan = _checkpoint(run, "diverged.pt", poison)
    (run / "last.pt").write_bytes(nan.read_bytes())
    images = _images(tmp_path)
    for args, culprit in (
        (["evaluate", nan], nan),
        (["evaluate", "voxelmorph", "--weights", nan], nan),
        (["register", nan, *images, "--out", tmp_path / "reg"], nan),
        (["train", "voxelmorph", "--resume", "--out", run], run / "last.pt"),
    ):
        code, err = regzoo(capsys, *args)
        assert len(err) == 1, err
        assert_one_line_error(code, err, str(culprit), "NaN or Inf")


def test_checkpoint_whose_config_has_negative_widths_is_one_line(capsys, run, tmp_path):
    def negative(ckpt):
        ckpt["config"]["model"]["enc_features"] = [-16, 32, 32, 32]

    bad = _checkpoint(run, "negative.pt", negative)
    code, err = regzoo(capsys, "evaluate", bad)
    assert len(err) == 1, err
    assert_one_line_error(code, err, str(bad), "model config")
    code, err = regzoo(capsys, "register", bad, *_images(tmp_path), "--out", tmp_path / "reg")
    assert len(err) == 1, err
    assert_one_line_error(code, err, "model config")


def test_a_diverged_model_is_an_error_naming_the_pair_not_a_score():
    """NaN fields would score as "no folding"; evaluation refuses them instead."""
    cfg = resolve_config("voxelmorph", None, ["data.size=[32,32]"])

    class Diverged(torch.nn.Module):
        def forward(self, batch):
            ddf = torch.full_like(batch["fixed"].expand(-1, 2, -1, -1), float("nan"))
            return RegistrationOutput(warped=batch["moving"], ddf=ddf)

    with pytest.raises(DataError, match="pair 0: the model's ddf holds NaN"):
        evaluate(Diverged(), build_dataset(cfg, "test"), "cpu", ["folding"], 1)
