"""Writing files so that a reader never sees half of one: a temporary name, then a rename.

Every file regzoo writes goes through :func:`atomic_path` (or the helpers built on it): the data is
written to a hidden temporary file in the destination folder, flushed to disk, and renamed over the
final name. A process killed or a disk filled mid-write leaves the final name as it was (absent or
the previous complete file) and no temporary file behind.

A folder of outputs is written the same way (:func:`atomic_dir`): into a hidden temporary sibling
folder, renamed into place once every file in it is written, so the folder is complete or absent.

Tests make failures deterministic through :data:`before_rename`: callables run just before each
rename with the final path, so a test can raise there to simulate a crash at that point.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_dir",
    "write_text",
    "write_json",
    "remove_stale",
    "before_rename",
    "TMP_PREFIX",
]

TMP_PREFIX = ".regzoo-tmp."

#: Test-only fault hooks: each is called with the final path just before a rename.
before_rename: list[Callable[[Path], None]] = []


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path to write instead of ``path``; renamed onto ``path`` when the block ends.

    Args:
        path: the final file name. Its folder is created if missing.
        suffix: ending of the temporary name, for writers that choose a format by extension
            (``.nii.gz``, ``.png``).

    If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{TMP_PREFIX}{path.name}.", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a final file gets the usual mode
    try:
        yield tmp
        _fsync(tmp)
        for hook in list(before_rename):
            hook(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A temporary folder to fill instead of ``path``; renamed onto ``path`` when the block ends.

    Args:
        path: the final folder. Its parent is created if missing.
        replace: an existing ``path`` is replaced as a whole (none of its files survive). Without
            it an existing ``path`` must be empty, else :class:`FileExistsError` is raised before
            the rename and ``path`` is left as it was.

    If the block raises, the temporary folder is removed and ``path`` is left untouched. With
    ``replace``, a process killed between moving the old folder aside and renaming the new one
    leaves ``path`` absent and the old folder under a temporary name (:func:`remove_stale`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a final folder gets the usual mode
    try:
        yield tmp
        for hook in list(before_rename):
            hook(path)
        old = None
        if path.exists() and (replace or not any(path.iterdir())):
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.old.", dir=path.parent))
            os.replace(path, old)  # onto the empty placeholder folder
        elif path.exists():
            raise FileExistsError(f"{path}: folder exists and is not empty")
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (``default=str`` for odd values)."""
    write_text(path, json.dumps(obj, indent=2, default=str))


def remove_stale(folder: str | os.PathLike) -> None:
    """Delete temporary files and folders a killed process left in ``folder`` (nothing else)."""
    for stale in Path(folder).glob(f"{TMP_PREFIX}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
