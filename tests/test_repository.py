"""The repository is self-contained: nothing in it points a reader at documents it does not hold."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The documents by file name or by a section label (name, a space, a capital and a digit); built
# from parts so that this file does not match itself.
OUTSIDE_DOCS = re.compile(
    r"\b(?:" + "|".join(("DESIGN", "METHODS", "STYLE")) + r")(?:\.md|\s+[A-Z]\d)"
)


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_file_refers_to_documents_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        if not path.is_file() or path.suffix in {".pt", ".png", ".gz", ".json", ".npz", ".h5"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_DOCS.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert not offenders, "references to documents outside the repository: " + ", ".join(offenders)


def test_docs_the_code_points_to_exist():
    for path in _tracked_files():
        if path.suffix != ".py" or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for doc in ("docs/conventions.md", "docs/plugins.md", "docs/decisions.md"):
            if doc in text:
                assert (ROOT / doc).is_file(), f"{path.relative_to(ROOT)} points to missing {doc}"
