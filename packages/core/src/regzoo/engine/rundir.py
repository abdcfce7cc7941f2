"""Run directories are owned: which folder holds a run, who may write it, where reports of it go.

A folder holds a run when it has any of :data:`RUN_MARKERS`. Training into it needs ``resume``
(continue the run, same model) or ``force`` (replace it: its files are removed first); otherwise
nothing in it is touched. While a run trains, rank 0 holds an exclusive ``flock`` on
:data:`LOCK_NAME` in the folder, so a second process cannot write the same run; the kernel
releases the lock when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..atomic import TMP_PREFIX, remove_stale
from ..errors import ConfigError, UserError

__all__ = [
    "RUN_MARKERS",
    "RUN_FILES",
    "LOCK_NAME",
    "EVALUATION_DIR",
    "is_run_dir",
    "make_folder",
    "claim_run_dir",
    "check_resumable",
    "report_dir",
]

#: Files that make a folder a run directory.
RUN_MARKERS = ("config.yaml", "last.pt", "log.csv")
#: Every file a run writes; ``force`` removes these (and :data:`EVALUATION_DIR`) before training.
RUN_FILES = (*RUN_MARKERS, "best.pt", "metrics.json", "cases.csv", "overview.png")
LOCK_NAME = ".regzoo.lock"
#: Subfolder of a run directory that ``evaluate --out RUN_DIR`` writes its report into.
EVALUATION_DIR = "evaluation"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a run (any of :data:`RUN_MARKERS`)."""
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def make_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the folder ``path`` (and its parents) if missing and check it can be written.

    A path that is an existing file, or a folder that cannot be created or written, is one line
    naming it, raised before any work whose results would have nowhere to go.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=TMP_PREFIX, dir=path):
            pass
    except OSError as err:
        raise UserError(f"{what} {path}: cannot write to the folder ({err.strerror})") from None
    return path


def _refuse_existing_run(path: Path, resume: bool, force: bool) -> None:
    if not (resume or force) and is_run_dir(path):
        found = ", ".join(n for n in RUN_MARKERS if (path / n).exists())
        raise ConfigError(
            f"{path} already holds a run ({found}): add --resume to continue it or --force to "
            "replace it (or choose another --out)"
        )


def _remove_run(path: Path) -> None:
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / EVALUATION_DIR, ignore_errors=True)


@contextlib.contextmanager
def claim_run_dir(
    path: str | os.PathLike, resume: bool = False, force: bool = False
) -> Iterator[Path]:
    """Hold the run directory ``path`` for training, exclusively, for the block's duration.

    Args:
        path: the run directory; created if missing.
        resume: the run in ``path`` is continued (its files stay).
        force: a run in ``path`` is replaced: its files are removed once the lock is held.

    Raises:
        ConfigError: ``path`` holds a run and neither ``resume`` nor ``force`` is given (checked
            before anything is created, so nothing in ``path`` changes), or both are given.
        UserError: another process holds the run, or ``path`` cannot be created or written.
    """
    path = Path(path)
    if resume and force:
        raise ConfigError("give --resume (continue the run) or --force (replace it), not both")
    _refuse_existing_run(path, resume, force)
    make_folder(path)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(
                f"{path}: another regzoo process is training into this run directory; wait for it "
                "to end or choose another --out"
            ) from None
        _refuse_existing_run(path, resume, force)  # a run may have appeared while we waited
        if force:
            _remove_run(path)
        remove_stale(path)
        yield path
    finally:
        os.close(fd)  # releases the lock


def check_resumable(ckpt: Mapping[str, Any], path: str | os.PathLike, model: str) -> None:
    """Refuse to continue the checkpoint ``ckpt`` (read from ``path``) as a run of ``model``.

    A run keeps its model: resuming under another name would relabel it while loading the first
    network's weights.
    """
    config = ckpt.get("config")
    held = ckpt.get("model") or (config or {}).get("model", {}).get("name")
    if held != model:
        raise ConfigError(
            f"--resume: {path} is a run of {held!r}, not {model!r}; resume it as "
            f"'regzoo train {held} --resume', or train {model!r} with another --out (or --force)"
        )


def report_dir(out: str | os.PathLike) -> Path:
    """Where an evaluation report asked for in ``out`` goes: ``out/evaluation`` when ``out`` is a
    run directory (its own ``metrics.json`` is never replaced), else ``out`` itself."""
    out = Path(out)
    return out / EVALUATION_DIR if is_run_dir(out) else out
