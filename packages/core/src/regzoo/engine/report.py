"""Evaluation reports on disk: ``metrics.json`` (summary, identity, spreads, cases) and ``cases.csv``."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_json
from ..errors import UserError
from .rundir import make_folder

__all__ = ["write_report"]


def write_report(result: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write an :func:`regzoo.engine.evaluate` result into ``out_dir``; returns the folder.

    A folder that cannot be created or written (a file, read-only, a full disk) is one line naming
    it.
    """
    out = make_folder(out_dir)
    cases = list(result.get("cases", []))
    try:
        write_json(out / "metrics.json", result)
        if cases:
            fields = list(dict.fromkeys(k for c in cases for k in c))
            with atomic_path(out / "cases.csv") as tmp, tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(cases)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write the report ({err.strerror or err})") from None
    return out
