"""Files: canonical loading, writing back on the original grid, ITK-readable displacement fields,
the ``folder`` and ``learn2reg`` datasets and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter

import regzoo
from regzoo.data import StepSampler, load_ddf, load_image, make_loader, save_ddf, save_image
from regzoo.data.grid import resample
from regzoo.data.preprocess import normalize_intensity
from regzoo.errors import ConfigError, DataError
from regzoo.spatial import warp


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def _oblique_affine(ndim: int) -> np.ndarray:
    """Rotation (with an axis swap and a flip), anisotropic 1.2 x 0.8 x 2.0 mm, non-zero origin."""
    a = np.eye(4)
    if ndim == 3:
        swap = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])
        a[:3, :3] = _rotation(2, 20) @ _rotation(0, 10) @ swap @ np.diag([1.2, 0.8, 2.0])
    else:  # in the x-y plane, as ITK's 2D reading assumes
        a[:3, :3] = _rotation(2, 25) @ np.diag([-1.2, 0.8, 2.0])
    a[:3, 3] = [-12.5, 30.0, 7.0]
    return a


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("ndim", [3, 2])
def test_save_ddf_is_applied_by_simpleitk_as_regzoo_warps(tmp_path: Path, ndim: int) -> None:
    """The issue's "done means": SimpleITK resampling with our ddf file equals regzoo's warp."""
    rng = np.random.default_rng(ndim)
    shape = (20, 24, 16) if ndim == 3 else (28, 22)
    data = (gaussian_filter(rng.random(shape), 2.0) * 100).astype(np.float32)
    path = _save(tmp_path / "moving.nii.gz", data, _oblique_affine(ndim))

    moving, info = load_image(path)
    size = moving.shape
    ddf = np.stack([gaussian_filter(rng.standard_normal(size), 3) for _ in range(ndim)]) * 15
    warped = warp(torch.from_numpy(moving)[None, None], torch.from_numpy(ddf).float()[None])[0, 0]
    save_ddf(ddf, info, tmp_path / "ddf.nii.gz")
    save_image(warped, info, tmp_path / "warped.nii.gz")

    header = nib.load(tmp_path / "ddf.nii.gz").header
    assert header.get_intent()[0] == "vector"
    assert nib.load(tmp_path / "ddf.nii.gz").shape == (*data.shape, *([1] * (3 - ndim)), 1, ndim)

    field = sitk.ReadImage(str(tmp_path / "ddf.nii.gz"), sitk.sitkVectorFloat64)
    itk_moving = sitk.ReadImage(str(path), sitk.sitkFloat64)
    tx = sitk.DisplacementFieldTransform(field)
    itk = sitk.GetArrayFromImage(sitk.Resample(itk_moving, itk_moving, tx, sitk.sitkLinear, 0.0))
    itk = itk.transpose(tuple(range(ndim))[::-1])  # ITK arrays are (z, y, x)
    ours = np.asarray(nib.load(tmp_path / "warped.nii.gz").dataobj)

    # interior: where x + ddf(x) samples inside the moving image (padding conventions differ)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"))
    pos = grid + ddf
    inside = np.all([(pos[i] >= 0) & (pos[i] <= size[i] - 1) for i in range(ndim)], axis=0)
    save_image(inside.astype(np.int32), info, tmp_path / "inside.nii.gz")
    mask = np.asarray(nib.load(tmp_path / "inside.nii.gz").dataobj).astype(bool)
    assert mask.mean() > 0.7
    err = np.abs(itk - ours)[mask].max() / np.ptp(data)
    assert err < 1e-3

    back, _ = load_ddf(tmp_path / "ddf.nii.gz", info)
    np.testing.assert_allclose(back, ddf, atol=1e-4)


def test_load_image_is_nibabel_closest_canonical(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.random((7, 9, 5)).astype(np.float32)
    path = _save(tmp_path / "a.nii.gz", data, _oblique_affine(3))
    array, info = load_image(path)
    ref = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(array, ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(info.grid_affine, ref.affine)
    np.testing.assert_allclose(info.spacing, ref.header.get_zooms(), rtol=1e-6)
    assert info.shape == ref.shape and info.file_shape == data.shape


def test_save_image_writes_back_on_the_original_grid_and_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.random((7, 9, 5)).astype(np.float32)
    affine = _oblique_affine(3)
    path = _save(tmp_path / "a.nii.gz", data, affine)
    array, info = load_image(path)
    save_image(array, info, tmp_path / "b.nii.gz")
    out = nib.load(tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(np.asarray(out.dataobj), data)
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    assert out.header.get_sform(coded=True)[1] == 1 and out.header.get_qform(coded=True)[1] == 1

    labels = (rng.random((7, 9, 5)) * 3).astype(np.int16)
    lpath = _save(tmp_path / "l.nii.gz", labels, affine)
    larray, linfo = load_image(lpath, label=True)
    assert larray.dtype == np.int64
    save_image(torch.from_numpy(larray)[None], linfo, tmp_path / "l2.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "l2.nii.gz").dataobj), labels)


def test_save_image_undoes_padding_and_resampling_through_the_grid_affine(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = gaussian_filter(rng.random((13, 11, 6)), 1).astype(np.float32)
    labels = (rng.random((13, 11, 6)) * 4).astype(np.uint8)
    affine = np.diag([1.2, 0.8, 2.0, 1.0])
    affine[:3, 3] = [3, -2, 1]
    _save(tmp_path / "a.nii.gz", data, affine)
    _save(tmp_path / "b.nii.gz", data, affine)
    _save(tmp_path / "a_seg.nii.gz", labels, affine)
    _save(tmp_path / "b_seg.nii.gz", labels, affine)
    ds = regzoo.build(
        "dataset",
        {
            "name": "folder",
            "root": str(tmp_path),
            "pairing": "all",
            "pad_multiple": 8,
            "normalize": "none",
        },
    )
    item = ds[0]
    assert item["fixed"].shape == (1, 16, 16, 8)
    _, info = load_image(item["fixed_path"])
    save_image(item["fixed"], info, tmp_path / "out.nii.gz", affine=item["fixed_affine"])
    save_image(item["fixed_label"], info, tmp_path / "out_seg.nii.gz", affine=item["fixed_affine"])
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj), data)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out_seg.nii.gz").dataobj), labels)


def test_load_image_squeezes_and_checks_dimensions(tmp_path: Path) -> None:
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    array, info = load_image(
        _save(tmp_path / "t.nii.gz", np.ones((4, 5, 6, 1), np.float32), affine)
    )
    assert array.shape == (4, 5, 6) and info.ndim == 3
    array, info = load_image(_save(tmp_path / "s.nii.gz", np.ones((4, 5, 1), np.float32), affine))
    assert array.shape == (4, 5) and info.ndim == 2
    np.testing.assert_allclose(info.spacing, [1.0, 2.0])
    with pytest.raises(DataError, match="v.nii.gz.*2D or 3D"):
        load_image(_save(tmp_path / "v.nii.gz", np.ones((4, 5, 6, 2), np.float32), affine))
    with pytest.raises(DataError, match="missing.nii.gz"):
        load_image(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.nii.gz"):
        load_image(tmp_path / "junk.nii.gz")


def _write_subject(
    folder: Path, name: str, image: np.ndarray, label: np.ndarray | None, affine: np.ndarray
) -> None:
    _save(folder / f"{name}.nii.gz", image, affine)
    if label is not None:
        _save(folder / f"{name}_seg.nii.gz", label, affine)


def _blob(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    label = np.digitize(image, np.quantile(image, [0.33, 0.66])).astype(np.int16)
    return image, label


def test_folder_dataset_reads_labels_and_anisotropic_spacing(tmp_path: Path) -> None:
    affine = np.diag([1.2, 0.8, 2.0, 1.0])
    for i in range(3):
        _write_subject(tmp_path, f"s{i}", *_blob((12, 10, 6), i), affine)
    ds = regzoo.build(
        "dataset", {"name": "folder", "root": str(tmp_path), "pairing": "all", "pad_multiple": 8}
    )
    assert len(ds) == 6 and [Path(s.image).name for s in ds.scans] == [
        "s0.nii.gz",
        "s1.nii.gz",
        "s2.nii.gz",
    ]
    assert ds.label_table.num_classes == 3
    item = ds[0]
    assert item["moving"].shape == item["fixed"].shape == (1, 16, 16, 8)
    assert item["moving_label"].dtype == torch.int64 and set(
        item["fixed_label"].unique().tolist()
    ) == {0, 1, 2}
    torch.testing.assert_close(item["spacing"], torch.tensor([1.2, 0.8, 2.0]))
    assert item["fixed_affine"].dtype == torch.float64
    assert 0.0 <= float(item["fixed"].min()) and float(item["fixed"].max()) <= 1.0
    batch = next(iter(make_loader(ds, StepSampler(len(ds), 2, seed=1, stop=1))))
    assert batch["moving"].shape == (2, 1, 16, 16, 8) and len(batch["moving_path"]) == 2

    atlas = regzoo.build(
        "dataset", {"name": "folder", "root": str(tmp_path), "pairing": "atlas", "atlas": "s1"}
    )
    assert len(atlas) == 2 and all(atlas[i]["fixed_path"].endswith("s1.nii.gz") for i in range(2))

    resampled = regzoo.build(
        "dataset", {"name": "folder", "root": str(tmp_path), "spacing": 1.0, "pad_multiple": None}
    )
    item = resampled[0]
    torch.testing.assert_close(item["spacing"], torch.ones(3))
    assert item["fixed"].shape == (1, 14, 8, 12)


def test_folder_dataset_resamples_the_moving_image_onto_the_fixed_grid(tmp_path: Path) -> None:
    """The same physical image stored on two grids: after resampling, moving matches fixed."""
    fixed_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    image, label = _blob((16, 16, 16), 0)
    _write_subject(tmp_path, "a", image, label, fixed_affine)
    # b: axes flipped and permuted, same voxel centres
    flip = np.array([[0.0, -1, 0, 15], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])

    def stored(a: np.ndarray) -> np.ndarray:  # stored[i, j, k] = a[15 - j, i, k]
        return np.ascontiguousarray(np.transpose(a[::-1], (1, 0, 2)))

    _write_subject(tmp_path, "b", stored(image), stored(label), flip)
    ds = regzoo.build(
        "dataset",
        {
            "name": "folder",
            "root": str(tmp_path),
            "pairing": "atlas",
            "atlas": "a",
            "normalize": "none",
        },
    )
    item = ds[0]
    assert item["moving_path"].endswith("b.nii.gz")
    torch.testing.assert_close(item["moving"], item["fixed"])
    assert torch.equal(item["moving_label"], item["fixed_label"])


def test_folder_dataset_layouts_and_splits(tmp_path: Path) -> None:
    affine = np.eye(4)
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir()
        for i in range(2 if split == "val" else 3):
            image, label = _blob((8, 8), i)
            _save(tmp_path / split / "images" / f"{split}{i}.nii.gz", image, affine)
            if i:  # the first image has no label map
                _save(tmp_path / split / "labels" / f"{split}{i}.nii.gz", label, affine)
    train = regzoo.build(
        "dataset", {"name": "folder", "root": str(tmp_path), "split": "train", "length": 5}
    )
    val = regzoo.build(
        "dataset", {"name": "folder", "root": str(tmp_path), "split": "val", "pairing": "all"}
    )
    assert len(train) == 5 and len(val) == 2
    assert all("train" in Path(s.image).name for s in train.scans)
    items = [val[i] for i in range(2)]
    assert items[0]["moving"].shape == (1, 16, 16)
    for it in items:  # each pair has one label map of two: per-image flags say which
        for side in ("moving", "fixed"):
            assert bool(it[f"{side}_labelled"]) == bool(it[f"{side}_label"].any())
        assert not (it["moving_labelled"] and it["fixed_labelled"])
    assert int(items[0]["moving_label"].max() + items[0]["fixed_label"].max()) > 0


def _folder_error(tmp_path: Path) -> DataError:
    ds = regzoo.build("dataset", {"name": "folder", "root": str(tmp_path), "pairing": "all"})
    with pytest.raises(DataError) as err:
        for i in range(len(ds)):
            ds[i]
    return err.value


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    affine = np.eye(4)
    image, label = _blob((8, 8, 8), 0)
    _write_subject(tmp_path, "good", image, label, affine)
    bad = image.copy()
    bad[2, 2, 2] = np.nan
    _write_subject(tmp_path, "nan", bad, label, affine)
    assert "nan.nii.gz" in str(_folder_error(tmp_path)) and "NaN" in str(_folder_error(tmp_path))

    (tmp_path / "nan.nii.gz").unlink()
    (tmp_path / "nan_seg.nii.gz").unlink()
    _write_subject(tmp_path, "frac", image, label.astype(np.float32) + 0.5, affine)
    msg = str(_folder_error(tmp_path))
    assert "frac_seg.nii.gz" in msg and "integer" in msg

    (tmp_path / "frac.nii.gz").unlink()
    (tmp_path / "frac_seg.nii.gz").unlink()
    _write_subject(tmp_path, "shape", image, label[:, :, :6], affine)
    msg = str(_folder_error(tmp_path))
    assert "shape_seg.nii.gz" in msg and "does not match" in msg

    with pytest.raises(DataError, match="nowhere"):
        regzoo.build("dataset", {"name": "folder", "root": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError):
        regzoo.build("dataset", {"name": "folder", "root": str(tmp_path), "pairing": "intra"})


def test_collate_names_files_of_different_sizes(tmp_path: Path) -> None:
    _write_subject(tmp_path, "a", *_blob((8, 8, 8), 0), np.eye(4))
    _write_subject(tmp_path, "b", *_blob((8, 8, 24), 1), np.eye(4))
    ds = regzoo.build("dataset", {"name": "folder", "root": str(tmp_path), "pairing": "all"})
    with pytest.raises(DataError, match="different sizes"):
        next(iter(make_loader(ds, StepSampler(len(ds), 2, seed=0, stop=1))))


def _learn2reg(tmp_path: Path, shape: tuple[int, ...] = (8, 8, 8)) -> Path:
    root = tmp_path / "OASIS"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    training = []
    for i in range(1, 6):
        image, label = _blob((8, 8, 8), i)
        name = f"OASIS_{i:04d}_0000.nii.gz"
        _save(root / "imagesTr" / name, image, np.eye(4))
        _save(root / "labelsTr" / name, label, np.eye(4))
        entry = {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}
        if i >= 4:  # the validation pair has corresponding keypoints (voxel indices)
            (root / "keypointsTr").mkdir(exist_ok=True)
            points = np.array([[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]]) + (i - 4)
            np.savetxt(root / "keypointsTr" / f"OASIS_{i:04d}_0000.csv", points, delimiter=",")
            entry["keypoints"] = f"./keypointsTr/OASIS_{i:04d}_0000.csv"
        training.append(entry)
    meta = {
        "name": "OASIS",
        "pairings": "unpaired",
        "provided_data": {"0": ["image", "label"]},
        "registration_direction": {"fixed": 0, "moving": 0},
        "modality": {"0": "MR"},
        "labels": {"0": {"1": "a", "2": "b"}},
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(shape)},
        "numTraining": 5,
        "training": training,
        "numPairedTraining": 0,
        "training_paired_images": [],
        "numRegistration_val": 2,
        "registration_val": [
            {
                "fixed": "./imagesTr/OASIS_0004_0000.nii.gz",
                "moving": "./imagesTr/OASIS_0005_0000.nii.gz",
            },
            {
                "fixed": "./imagesTr/OASIS_0005_0000.nii.gz",
                "moving": "./imagesTr/OASIS_0004_0000.nii.gz",
            },
        ],
        "numRegistration_test": 0,
        "registration_test": [],
    }
    (root / "OASIS_dataset.json").write_text(json.dumps(meta))
    return root


def test_learn2reg_dataset_reads_the_json_layout(tmp_path: Path) -> None:
    root = _learn2reg(tmp_path)
    train = regzoo.build("dataset", {"name": "learn2reg", "root": str(root), "pad_multiple": None})
    assert train.pairing == "random" and train.label_table.values == (0, 1, 2)
    assert [Path(s.image).name[:10] for s in train.scans] == [
        "OASIS_0001",
        "OASIS_0002",
        "OASIS_0003",
    ]
    item = train[0]
    assert item["moving"].shape == (1, 8, 8, 8) and item["moving_label"].dtype == torch.int64
    val = regzoo.build("dataset", {"name": "learn2reg", "root": str(root), "split": "val"})
    assert val.pairing == "paired" and len(val) == 2
    item = val[0]
    assert item["fixed_path"].endswith("OASIS_0004_0000.nii.gz")
    assert item["moving_path"].endswith("OASIS_0005_0000.nii.gz")
    assert item["fixed"].shape == (1, 16, 16, 16) and "fixed_label" in item
    # padded 8 -> 16 voxels: 4 before, so model-grid voxels are file voxels + 4
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]]) + 4
    torch.testing.assert_close(item["fixed_landmarks"], expected)
    torch.testing.assert_close(item["moving_landmarks"], expected + 1)
    assert "fixed_landmarks" not in train[0]
    with pytest.raises(ConfigError):
        regzoo.build("dataset", {"name": "learn2reg", "root": str(root), "pairing": "paired"})
    with pytest.raises(DataError, match="registration_test"):
        regzoo.build("dataset", {"name": "learn2reg", "root": str(root), "split": "test"})


def _dirlab(path: Path, points: np.ndarray) -> None:
    """A DIR-Lab landmark file: ``x y z`` per row, 1-based voxel indices, tab-separated."""
    path.write_text("".join("\t".join(f"{v:g}" for v in row + 1) + "\n" for row in points))


def test_dirlab_landmark_files_are_read_beside_csv(tmp_path: Path) -> None:
    """DIR-Lab's whitespace ``.txt`` (1-based) gives the same landmarks as Learn2Reg's 0-based
    CSV, in the learn2reg layout and in both folder layouts."""
    root = _learn2reg(tmp_path)
    meta = json.loads((root / "OASIS_dataset.json").read_text())
    for i, entry in ((4, meta["training"][3]), (5, meta["training"][4])):
        points = np.loadtxt(root / "keypointsTr" / f"OASIS_{i:04d}_0000.csv", delimiter=",")
        _dirlab(root / "keypointsTr" / f"OASIS_{i:04d}_0000_xyz.txt", points)
        entry["keypoints"] = f"./keypointsTr/OASIS_{i:04d}_0000_xyz.txt"
    (root / "OASIS_dataset.json").write_text(json.dumps(meta))
    item = regzoo.build("dataset", {"name": "learn2reg", "root": str(root), "split": "val"})[0]
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]]) + 4
    torch.testing.assert_close(item["fixed_landmarks"], expected)
    torch.testing.assert_close(item["moving_landmarks"], expected + 1)

    points = np.array([[1.0, 2.0, 3.0], [6.0, 4.0, 2.0]])
    flat, nested = tmp_path / "flat", tmp_path / "nested"
    for folder in (flat, nested / "images", nested / "landmarks"):
        folder.mkdir(parents=True)
    for i in range(2):
        image, label = _blob((8, 8, 8), i)
        _write_subject(flat, f"s{i}", image, label, np.eye(4))
        _save(nested / "images" / f"s{i}.nii.gz", image, np.eye(4))
        np.savetxt(flat / f"s{i}_landmarks.csv", points + i, delimiter=",")
        _dirlab(nested / "landmarks" / f"s{i}.txt", points + i)
    for root in (flat, nested):
        ds = regzoo.build(
            "dataset",
            {"name": "folder", "root": str(root), "pairing": "all", "pad_multiple": None},
        )
        item = ds[0]  # s0 -> s1
        torch.testing.assert_close(
            item["moving_landmarks"], torch.tensor(points, dtype=torch.float32)
        )
        torch.testing.assert_close(
            item["fixed_landmarks"], torch.tensor(points + 1, dtype=torch.float32)
        )
    (nested / "landmarks" / "s1.txt").write_text("1 2\n")
    with pytest.raises(DataError, match="s1.txt: landmarks must be N rows of 3"):
        regzoo.build(
            "dataset",
            {"name": "folder", "root": str(nested), "pairing": "all", "pad_multiple": None},
        )[0]


def test_masks_come_with_their_images(tmp_path: Path) -> None:
    """Masks (non-zero inside) reach the items as bool ``moving_mask``/``fixed_mask`` on the
    model grid, in both folder layouts and from Learn2Reg's ``mask`` entries."""
    flat, nested = tmp_path / "flat", tmp_path / "nested"
    for folder in (flat, nested / "images", nested / "masks"):
        folder.mkdir(parents=True)
    masks = []
    for i in range(2):
        image, label = _blob((8, 8, 8), i)
        mask = (label == 1).astype(np.uint8) * 3
        masks.append(torch.from_numpy(mask != 0))
        _write_subject(flat, f"s{i}", image, label, np.eye(4))
        _save(flat / f"s{i}_mask.nii.gz", mask, np.eye(4))
        _save(nested / "images" / f"s{i}.nii.gz", image, np.eye(4))
        _save(nested / "masks" / f"s{i}.nii.gz", mask, np.eye(4))
    for root in (flat, nested):
        ds = regzoo.build(
            "dataset", {"name": "folder", "root": str(root), "pairing": "all", "pad_multiple": None}
        )
        assert len(ds.scans) == 2  # the mask files are not images of their own
        item = ds[0]  # s0 -> s1
        assert item["moving_mask"].dtype == torch.bool
        assert torch.equal(item["moving_mask"][0], masks[0])
        assert torch.equal(item["fixed_mask"][0], masks[1])
    root = _learn2reg(tmp_path)
    (root / "masksTr").mkdir()
    meta = json.loads((root / "OASIS_dataset.json").read_text())
    for entry in meta["training"][3:]:
        name = Path(entry["image"]).name
        _save(root / "masksTr" / name, np.ones((8, 8, 8), np.uint8), np.eye(4))
        entry["mask"] = f"./masksTr/{name}"
    (root / "OASIS_dataset.json").write_text(json.dumps(meta))
    item = regzoo.build("dataset", {"name": "learn2reg", "root": str(root), "split": "val"})[0]
    assert item["fixed_mask"].shape == item["fixed"].shape  # padded 8 -> 16 with the images
    assert int(item["fixed_mask"].sum()) == 8**3


def test_learn2reg_checks_the_tensor_image_shape(tmp_path: Path) -> None:
    root = _learn2reg(tmp_path, shape=(8, 8, 9))
    val = regzoo.build("dataset", {"name": "learn2reg", "root": str(root), "split": "val"})
    with pytest.raises(DataError, match="OASIS_0004_0000.nii.gz.*tensorImageShape"):
        val[0]


def test_intensity_normalisations() -> None:
    x = np.arange(1000, dtype=np.float32)
    assert (
        normalize_intensity(x, "minmax").min() == 0 and normalize_intensity(x, "minmax").max() == 1
    )
    z = normalize_intensity(x, "zscore")
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    p = normalize_intensity(x, "percentile", (10, 90))
    np.testing.assert_allclose(p[[0, 99, 500, 999]], [0, 0, (500 - 99.9) / 799.2, 1], atol=1e-4)
    np.testing.assert_array_equal(
        normalize_intensity(x, "none", clip=(5, 7))[:9], [5, 5, 5, 5, 5, 5, 6, 7, 7]
    )


def test_resample_matches_scipy_affine_transform() -> None:
    """Physical resampling against scipy.ndimage.affine_transform (order 1)."""
    from scipy.ndimage import affine_transform

    rng = np.random.default_rng(3)
    src = gaussian_filter(rng.random((12, 10, 9)), 1).astype(np.float32)
    src_affine = _oblique_affine(3)
    dst_affine = np.diag([1.5, 1.0, 1.3, 1.0])
    dst_affine[:3, 3] = src_affine[:3, 3] + [-4, -2, 1]
    m = np.linalg.inv(src_affine) @ dst_affine
    ref = affine_transform(
        src, m[:3, :3], m[:3, 3], output_shape=(8, 9, 7), order=1, mode="constant", cval=0.0
    )
    out = resample(torch.from_numpy(src)[None], src_affine, (8, 9, 7), dst_affine)[0].numpy()
    inside = (
        affine_transform(np.ones_like(src), m[:3, :3], m[:3, 3], output_shape=(8, 9, 7), order=1)
        > 1 - 1e-6
    )
    np.testing.assert_allclose(out[inside], ref[inside], atol=1e-5)
