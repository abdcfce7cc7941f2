"""`regzoo register` / `regzoo apply` never lose or silently spoil what they write (issue 12).

Each test is named for the user mistake (or accident) it guards against. Commands run in-process
through `regzoo.cli.main`, which returns the exit code a shell would see; images are 16^3 (or
16^2) NIfTI files with random intensities and the model is VoxelMorph with seeded weights
(`regzoo register voxelmorph` without `--weights`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import regzoo
from regzoo import atomic
from regzoo.cli import main
from regzoo.engine.checkpoint import save_checkpoint

SHAPE = (16, 16, 16)


def _image(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _raw_affine(path: Path, affine: np.ndarray) -> Path:
    """An image whose header holds ``affine`` as written (nibabel refuses to build it otherwise)."""
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.float32)
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["sform_code"], header["qform_code"] = 1, 0
    data = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, None, header=header), str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``data/sub-0{1,3}/T1w.nii.gz`` (sub-01 with ``seg.nii.gz``), ``atlas.nii.gz``, checkpoints."""
    root = tmp_path_factory.mktemp("nothing_lost")
    rng = np.random.default_rng(0)
    for sub in ("sub-01", "sub-03"):
        _image(root / "data" / sub / "T1w.nii.gz", rng.random(SHAPE).astype(np.float32))
    _image(root / "data/sub-01/seg.nii.gz", (rng.random(SHAPE) * 3).astype(np.int16))
    _image(root / "atlas.nii.gz", rng.random(SHAPE).astype(np.float32))
    _image(root / "slice.nii.gz", rng.random(SHAPE[:2]).astype(np.float32))
    _image(root / "atlas2d.nii.gz", rng.random(SHAPE[:2]).astype(np.float32))
    for ndim in (2, 3):
        torch.manual_seed(0)
        state = regzoo.create_model("voxelmorph", ndim=ndim).state_dict()
        config = {"model": {"name": "voxelmorph", "ndim": ndim}, "data": {"ndim": ndim}}
        save_checkpoint(
            root / f"vxm{ndim}d.pt", {"model": "voxelmorph", "config": config, "state_dict": state}
        )
    return root


def _run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(capsys, *args: object) -> str:
    """Run a command that must fail with one line on stderr and exit code 2; returns the line."""
    code, _, err = _run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("regzoo: error: "), err
    return lines[0]


def _register_one(data: Path, out: Path, *extra: object) -> list[object]:
    moving, seg = data / "data/sub-01/T1w.nii.gz", data / "data/sub-01/seg.nii.gz"
    return ["register", "voxelmorph", "--moving", moving, "--fixed", data / "atlas.nii.gz",
            "--moving-seg", seg, "--iterations", 0, "--threads", 1, "--out", out, *extra]  # fmt: skip


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _pairs_csv(data: Path, name: str, rows: list[str]) -> Path:
    path = data / name
    path.write_text("moving,fixed\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_two_subjects_with_the_same_file_name_get_two_folders(data, tmp_path, capsys):
    csv = _pairs_csv(data, "same_names.csv", ["data/sub-01/T1w.nii.gz,atlas.nii.gz",
                                               "data/sub-03/T1w.nii.gz,atlas.nii.gz"])  # fmt: skip
    out = tmp_path / "out"
    code, _, err = _run(capsys, "register", "voxelmorph", "--pairs", csv, "--iterations", 0,
                        "--out", out)  # fmt: skip
    assert code == 0, err
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["sub-01_T1w__to__atlas", "sub-03_T1w__to__atlas"]
    warped = [np.asarray(nib.load(out / f / "warped.nii.gz").dataobj) for f in folders]
    assert not np.array_equal(*warped)  # each folder holds its own subject


def test_learn2reg_names_come_from_the_case_ids(data, tmp_path, capsys):
    # "TASK2": the first number in the name is the task's, not the case's.
    for case in (1, 2):
        _image(data / "l2r" / f"TASK2_{case:04d}_0000.nii.gz", np.random.rand(*SHAPE).astype("f4"))
    csv = _pairs_csv(data, "l2r.csv", ["l2r/TASK2_0001_0000.nii.gz,l2r/TASK2_0002_0000.nii.gz",
                                        "l2r/TASK2_0002_0000.nii.gz,l2r/TASK2_0001_0000.nii.gz"])  # fmt: skip
    out = tmp_path / "submission"
    code, _, err = _run(capsys, "register", "voxelmorph", "--pairs", csv, "--learn2reg",
                        "--iterations", 0, "--out", out)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "disp_0001_0002.nii.gz",
        "disp_0002_0001.nii.gz",
    ]


def test_two_pairs_mapping_to_one_learn2reg_name_stop_before_any_work(data, tmp_path, capsys):
    for name in ("a/TASK_0001_0000", "b/TASK_0001_0000", "TASK_0002_0000"):
        _image(data / f"{name}.nii.gz", np.random.rand(*SHAPE).astype("f4"))
    csv = _pairs_csv(data, "clash.csv", ["a/TASK_0001_0000.nii.gz,TASK_0002_0000.nii.gz",
                                          "b/TASK_0001_0000.nii.gz,TASK_0002_0000.nii.gz"])  # fmt: skip
    out = tmp_path / "submission"
    line = _one_line_error(capsys, "register", "voxelmorph", "--pairs", csv, "--learn2reg",
                           "--out", out)  # fmt: skip
    assert "disp_0002_0001.nii.gz" in line
    assert "a/TASK_0001_0000" in line and "b/TASK_0001_0000" in line
    assert not out.exists()


def test_a_crash_while_writing_leaves_no_half_output_folder(data, tmp_path, capsys):
    out = tmp_path / "out"

    def crash(final: Path) -> None:
        if final.name == "ddf.nii.gz":  # after warped.nii.gz is written, before the field is
            raise OSError(28, "No space left on device")

    atomic.before_rename.append(crash)
    try:
        line = _one_line_error(capsys, *_register_one(data, out))
    finally:
        atomic.before_rename.remove(crash)
    assert "No space left on device" in line and str(out) in line
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one

    def crash_at_folder(final: Path) -> None:
        if final == out:  # every file written, the folder not yet renamed into place
            raise OSError(28, "No space left on device")

    atomic.before_rename.append(crash_at_folder)
    try:
        _one_line_error(capsys, *_register_one(data, out))
    finally:
        atomic.before_rename.remove(crash_at_folder)
    assert list(tmp_path.iterdir()) == []
    code, _, err = _run(capsys, *_register_one(data, out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "ddf.nii.gz", "warped.nii.gz", "warped_seg.nii.gz"
    ]  # fmt: skip


def test_registering_again_without_force_changes_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, *_register_one(data, out))[0] == 0
    before = _digests(out)
    line = _one_line_error(capsys, *_register_one(data, out, "--iterations", 1))
    assert "--force" in line and "--resume" in line
    assert _digests(out) == before


def test_force_leaves_no_file_of_the_earlier_result(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, *_register_one(data, out))[0] == 0
    assert (out / "warped_seg.nii.gz").is_file()
    moving = data / "data/sub-03/T1w.nii.gz"  # now without labels
    args = ["register", "voxelmorph", "--moving", moving, "--fixed", data / "atlas.nii.gz",
            "--iterations", 0, "--out", out, "--force"]  # fmt: skip
    code, _, err = _run(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ddf.nii.gz", "warped.nii.gz"]
    # --force replaces a folder of regzoo's outputs only, never one holding other files.
    (out / "notes.txt").write_text("mine")
    assert "notes.txt" in _one_line_error(capsys, *args)
    assert (out / "notes.txt").read_text() == "mine"


def test_an_interrupted_batch_continues_with_resume(data, tmp_path, capsys):
    csv = _pairs_csv(data, "batch.csv", ["data/sub-01/T1w.nii.gz,atlas.nii.gz",
                                          "data/sub-03/T1w.nii.gz,atlas.nii.gz"])  # fmt: skip
    out = tmp_path / "out"
    args = ["register", "voxelmorph", "--pairs", csv, "--iterations", 0, "--out", out]

    def killed(final: Path) -> None:  # the second pair dies while its files are written
        if final.parent.name.startswith(f"{atomic.TMP_PREFIX}sub-03"):
            raise KeyboardInterrupt

    atomic.before_rename.append(killed)
    try:
        assert _run(capsys, *args)[0] == 130
    finally:
        atomic.before_rename.remove(killed)
    assert [p.name for p in out.iterdir()] == ["sub-01_T1w__to__atlas"]
    first = _digests(out)
    assert "--resume" in _one_line_error(capsys, *args)
    code, stdout, err = _run(capsys, *args, "--resume")
    assert code == 0, err
    assert "sub-01_T1w__to__atlas: written by an earlier run, skipped (--resume)" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "sub-01_T1w__to__atlas",
        "sub-03_T1w__to__atlas",
    ]
    assert {k: v for k, v in _digests(out).items() if k in first} == first


def test_register_out_holding_an_input_is_refused(data, capsys):
    line = _one_line_error(capsys, *_register_one(data, data / "data"))
    assert "holds the input" in line


def test_apply_onto_its_own_input_is_refused(data, tmp_path, capsys):
    out = tmp_path / "reg"
    assert _run(capsys, *_register_one(data, out))[0] == 0
    seg = tmp_path / "seg.nii.gz"
    seg.write_bytes((data / "data/sub-01/seg.nii.gz").read_bytes())
    before = _digests(tmp_path)
    for target in (seg, out / "ddf.nii.gz"):
        line = _one_line_error(
            capsys, "apply", out / "ddf.nii.gz", seg, "--labels", "--out", target
        )
        assert "is the input" in line
    assert _digests(tmp_path) == before


def test_apply_out_folder_gets_the_image_file_name(data, tmp_path, capsys):
    out = tmp_path / "reg"
    assert _run(capsys, *_register_one(data, out))[0] == 0
    folder = tmp_path / "warped"
    folder.mkdir()
    seg = data / "data/sub-01/seg.nii.gz"
    code, _, err = _run(capsys, "apply", out / "ddf.nii.gz", seg, "--labels", "--out", folder)
    assert code == 0, err
    assert [p.name for p in folder.iterdir()] == ["seg.nii.gz"]
    written = np.asarray(nib.load(folder / "seg.nii.gz").dataobj)
    np.testing.assert_array_equal(written, np.asarray(nib.load(out / "warped_seg.nii.gz").dataobj))
    # Applying again needs --force.
    assert "--force" in _one_line_error(
        capsys, "apply", out / "ddf.nii.gz", seg, "--labels", "--out", folder
    )


@pytest.mark.parametrize(
    "affine, says",
    [
        (np.diag([1.0, np.nan, 1.0, 1.0]), "NaN"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "size of 0"),
        (np.array([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "singular"),
    ],
    ids=["NaN affine", "zero spacing", "singular affine"],
)
def test_a_broken_header_is_named_not_registered(data, tmp_path, capsys, affine, says):
    bad = _raw_affine(tmp_path / "broken.nii.gz", affine)
    args = ["register", "voxelmorph", "--moving", bad, "--fixed", data / "atlas.nii.gz",
            "--out", tmp_path / "out"]  # fmt: skip
    line = _one_line_error(capsys, *args)
    assert "broken.nii.gz" in line and says in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_pair_of_the_other_dimensionality_than_the_checkpoint(data, tmp_path, capsys, ndim):
    moving, fixed = (
        ("data/sub-01/T1w.nii.gz", "atlas.nii.gz")
        if ndim == 3
        else ("slice.nii.gz", "atlas2d.nii.gz")
    )
    ckpt = data / f"vxm{5 - ndim}d.pt"
    args = ["register", ckpt, "--moving", data / moving, "--fixed", data / fixed,
            "--out", tmp_path / "out"]  # fmt: skip
    line = _one_line_error(capsys, *args)
    assert f"{5 - ndim}D model cannot register {ndim}D images" in line


def test_a_csv_saved_in_another_encoding(data, tmp_path, capsys):
    csv = tmp_path / "pairs.csv"
    csv.write_bytes("moving,fixed\nsüb-01.nii.gz,atlas.nii.gz\n".encode("latin-1"))
    line = _one_line_error(capsys, "register", "voxelmorph", "--pairs", csv)
    assert "pairs.csv" in line and "UTF-8" in line


@pytest.mark.parametrize(
    "option",
    [("--iterations", -5), ("--samples", -1), ("--lr", -1)],  # --threads: test_runs.py
)
def test_a_negative_count_or_rate(data, tmp_path, capsys, option):
    line = _one_line_error(
        capsys, *_register_one(data, tmp_path / "out", "--iterations", 1), *option
    )
    assert option[0] in line
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file(data, tmp_path, capsys):
    file = tmp_path / "out.nii.gz"
    file.write_text("not a folder")
    assert "is a file" in _one_line_error(capsys, *_register_one(data, file))
    assert file.read_text() == "not a folder"


def test_out_that_cannot_be_written(data, tmp_path, capsys):
    out = tmp_path / "out"

    def read_only(final: Path) -> None:  # tests run as root, where chmod does not stop writes
        raise PermissionError(13, "Permission denied")

    atomic.before_rename.append(read_only)
    try:
        line = _one_line_error(capsys, *_register_one(data, out))
    finally:
        atomic.before_rename.remove(read_only)
    assert "Permission denied" in line and str(out) in line
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_learning_rate_writes_no_nan(data, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["register", "voxelmorph", "--moving", data / "slice.nii.gz", "--fixed",
            data / "atlas2d.nii.gz", "--iterations", 2, "--lr", 1e6, "--out", out]  # fmt: skip
    line = _one_line_error(capsys, *args)
    assert "slice.nii.gz -> " in line and "NaN" in line and "--lr" in line
    assert not out.exists()


def test_nan_weights_write_no_nan(data, tmp_path, capsys):
    torch.manual_seed(0)
    state = regzoo.create_model("voxelmorph", ndim=3).state_dict()
    for value in state.values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    weights = tmp_path / "nan.pt"
    torch.save(state, weights)
    out = tmp_path / "out"
    line = _one_line_error(capsys, *_register_one(data, out, "--weights", weights))
    assert "NaN" in line and "nan.pt" in line  # refused when loaded, before any work
    assert not out.exists()
