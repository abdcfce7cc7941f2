"""Atomic writes: the final name holds the old complete file or the new one, never a part."""

from __future__ import annotations

import pytest

from regzoo import atomic


def test_a_failure_before_the_rename_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_json(path, {"a": 1})

    def crash(final):
        raise OSError(f"simulated crash before renaming onto {final.name}")

    atomic.before_rename.append(crash)
    try:
        with pytest.raises(OSError, match="report.json"):
            atomic.write_json(path, {"a": 2})
    finally:
        atomic.before_rename.remove(crash)
    assert path.read_text() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_new_file_is_absent_after_a_failed_write(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "sub" / "x.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list((tmp_path / "sub").iterdir()) == []


def test_remove_stale_only_removes_temporaries(tmp_path):
    (tmp_path / f"{atomic.TMP_PREFIX}last.pt.abc").write_text("x")
    (tmp_path / "last.pt").write_text("keep")
    atomic.remove_stale(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_written_file_has_the_usual_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic.write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode
