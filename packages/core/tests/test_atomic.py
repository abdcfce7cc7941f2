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


def test_a_folder_is_complete_or_absent_and_replaced_as_a_whole(tmp_path):
    out = tmp_path / "pair"
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "warped.nii.gz").write_text("half of the outputs")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_dir(out) as tmp:
        (tmp / "warped_seg.nii.gz").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "ddf.nii.gz").write_text("new")
    assert [p.name for p in out.iterdir()] == ["warped_seg.nii.gz"]
    with atomic.atomic_dir(out, replace=True) as tmp:
        (tmp / "ddf.nii.gz").write_text("new")
    assert [p.name for p in out.iterdir()] == ["ddf.nii.gz"]
    assert [p.name for p in tmp_path.iterdir()] == ["pair"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~atomic._umask()
