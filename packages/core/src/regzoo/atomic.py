"""Writing files so that a reader never sees half of one: a temporary name, then a rename.

Every file regzoo writes goes through :func:`atomic_path` (or the helpers built on it): the data is
written to a hidden temporary file in the destination folder, flushed to disk, and renamed over the
final name. A process killed or a disk filled mid-write leaves the final name as it was (absent or
the previous complete file) and no temporary file behind.

Tests make failures deterministic through :data:`before_rename`: callables run just before each
rename with the final path, so a test can raise there to simulate a crash at that point.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_text", "write_json", "remove_stale", "before_rename", "TMP_PREFIX"]

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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (``default=str`` for odd values)."""
    write_text(path, json.dumps(obj, indent=2, default=str))


def remove_stale(folder: str | os.PathLike) -> None:
    """Delete temporary files a killed process left in ``folder`` (never anything else)."""
    for stale in Path(folder).glob(f"{TMP_PREFIX}*"):
        stale.unlink(missing_ok=True)
