"""Datasets of real images: a folder of NIfTI files (``folder``) and Learn2Reg's layout (``learn2reg``).

Both build every item through the one preprocessing pipeline of file data
(:class:`regzoo.data.preprocess.Preprocessing`, which ``regzoo register`` runs too): images read
in canonical RAS orientation, intensities clipped and normalised per image (``clip``,
``normalize``, ``percentiles``), the fixed grid resampled to ``spacing`` and padded (``size``,
``pad_multiple``) into the *model grid* (returned as ``fixed_affine``), the moving image and the
label maps resampled onto it in physical space. ``augment`` (MONAI dictionary transforms) is
applied only to a training set (:func:`regzoo.engine.build_dataset` keeps it out elsewhere).

Items: ``moving``, ``fixed`` ``(1, *S)`` float32; ``moving_label``, ``fixed_label`` ``(1, *S)``
int64 indices into the dataset's ``label_table`` (:class:`regzoo.labels.LabelTable`, the sorted
label values of every split) when the dataset has label maps (where some images lack one,
missing maps are zeros and the flags ``moving_labelled``, ``fixed_labelled`` say which exist);
``moving_landmarks``, ``fixed_landmarks`` ``(N, ndim)``
float32 model-grid voxels where both images have landmarks; ``moving_mask``, ``fixed_mask``
``(1, *S)`` bool where both images have masks (nearest-neighbour onto the model grid); ``spacing``
``(ndim,)`` float32 mm of the model grid;
``fixed_affine`` ``(4, 4)`` float64 voxel-to-RAS of the model grid; ``moving_path``,
``fixed_path`` strings. To write results on the fixed file's grid, pass ``fixed_affine`` to
:func:`regzoo.data.io.save_image` / :func:`~regzoo.data.io.save_ddf` with the fixed image's info.

Landmark files (rows correspond between the two images of a pair): ``.csv``, comma-separated
0-based voxel indices of the file's axes, one point per row (Learn2Reg keypoints); ``.txt``,
whitespace-separated 1-based voxel indices ``x y z`` of the file's axes (DIR-Lab's landmark
files, e.g. ``case1_300_T00_xyz.txt``).

Items of different sizes do not collate into one batch: set ``size`` (or use batch size 1).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..labels import LabelTable
from ..registry import Paper, register_dataset
from .grid import grid_spacing
from .io import ImageInfo, load_image
from .pairs import check_pairing, natural_length, pair_subjects, split_id
from .preprocess import Preprocessing, augment_item, build_augment

__all__ = [
    "Scan",
    "FilePairDataset",
    "FolderDataset",
    "Learn2RegDataset",
    "ListedPairs",
    "IMAGE_EXTENSIONS",
    "LEARN2REG",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".nii.gz",
    ".nii",
    ".mgz",
    ".mgh",
    ".img",
    ".png",
    ".jpg",
    ".jpeg",
)

LEARN2REG = Paper(
    "Hering, Hansen, Mok, Chung, Siebert, et al.",
    "Learn2Reg: comprehensive multi-task medical image registration challenge, dataset and "
    "evaluation in the era of deep learning",
    "IEEE TMI 42(3)",
    2023,
    "https://doi.org/10.1109/TMI.2022.3213983",
)


@dataclass(frozen=True)
class Scan:
    """One image file, its optional label map, landmark file (``.csv`` or DIR-Lab ``.txt``) and
    mask (an image whose non-zero voxels are the region to register, e.g. the lungs)."""

    image: str
    label: str | None = None
    landmarks: str | None = None
    mask: str | None = None


def _strip_extension(name: str) -> str:
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _is_image(name: str) -> bool:
    return name.endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


class FilePairDataset(Dataset):
    """Registration pairs of image files, preprocessed onto the fixed image's grid.

    Subclasses fill ``self.scans`` and either ``self.pairs`` (explicit ``(moving, fixed)`` scan
    indices) or leave it ``None`` to pair ``self.scans`` by ``pairing``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (seeds the random pairs).
        pairing: ``"random"``, ``"atlas"``, ``"all"`` (or ``"paired"`` for listed pairs).
        atlas: the atlas of ``pairing="atlas"``: an index into the sorted scans or a file name.
        length: number of items (default: the pairing's natural count).
        normalize, percentiles, clip, spacing, size, pad_multiple: the preprocessing
            (:class:`~regzoo.data.preprocess.Preprocessing`; ``normalize``: ``"percentile"``,
            ``"minmax"``, ``"zscore"`` or ``"none"``).
        photo_channel: how colour photographs are read (``"gray"`` or ``"green"``;
            :class:`~regzoo.data.preprocess.Preprocessing`).
        cache_size: number of preprocessed files kept in memory (per process).
        seed: seeds the random pairs and the augmentation's draws.
        augment: MONAI dictionary transforms applied to every item after preprocessing, e.g.
            ``[{name: RandGaussianNoised, keys: [moving], prob: 1.0, std: 0.1}]``
            (:func:`~regzoo.data.preprocess.build_augment`); an item's draws depend on
            ``(seed, index)``. Meant for training sets only.
    """

    scans: list[Scan]
    pairs: list[tuple[int, int]] | None

    def __init__(
        self,
        split: str = "train",
        pairing: str = "random",
        atlas: int | str = 0,
        length: int | None = None,
        normalize: str = "percentile",
        percentiles: Sequence[float] = (0.5, 99.5),
        clip: Sequence[float] | None = None,
        spacing: float | Sequence[float] | None = None,
        size: int | Sequence[int] | None = None,
        pad_multiple: int | None = 16,
        cache_size: int = 8,
        seed: int = 0,
        augment: list[dict[str, Any]] | None = None,
        photo_channel: str = "gray",
    ) -> None:
        self.preprocessing = Preprocessing(
            normalize, percentiles, clip, spacing, size, pad_multiple, photo_channel
        )
        self.augment = build_augment(augment)
        self.split = split
        self._split = split_id(split)
        self.pairing = pairing
        self.length_override = length
        self.seed = int(seed)
        self.atlas_spec = atlas
        self._cache: OrderedDict[tuple[str, bool], tuple[np.ndarray, ImageInfo]] = OrderedDict()
        self._cache_size = int(cache_size)
        self._label_table: LabelTable | None = None

    def _finish_setup(self) -> None:
        """Validate the scans and pairing once subclasses have listed them."""
        if not self.scans:
            raise DataError(f"{self.describe()}: no images found")
        if self.pairs is None:
            self.atlas = self._atlas_index(self.atlas_spec)
            check_pairing(self.pairing, ("random", "atlas", "all"), len(self.scans), self.atlas)
            natural = natural_length(self.pairing, len(self.scans))
        else:
            self.atlas = 0
            natural = len(self.pairs)
        self.length = int(self.length_override) if self.length_override is not None else natural
        labelled = [s.label is not None for s in self.scans]
        self.has_labels = any(labelled)
        self.partially_labelled = self.has_labels and not all(labelled)

    def describe(self) -> str:
        """Where the data come from, for messages."""
        return type(self).__name__

    @property
    def label_table(self) -> LabelTable | None:
        """The dataset's label table (``None`` without labels), found on first use: the values
        :meth:`listed_labels` gives, else those of every file of :meth:`label_files`."""
        if self._label_table is None and self.has_labels:
            listed = self.listed_labels()
            self._label_table = (
                LabelTable(listed)
                if listed is not None
                else LabelTable(
                    v for p in self.label_files() for v in np.unique(load_image(p, True)[0])
                )
            )
        return self._label_table

    def listed_labels(self) -> list[int] | None:
        """Label values the dataset's metadata lists (``None``: read them from the files)."""
        return None

    def label_files(self) -> list[str]:
        """Every label map of the dataset, all splits, so that the splits share one table."""
        return sorted({s.label for s in self.scans if s.label})

    def _atlas_index(self, atlas: Any) -> int:
        if isinstance(atlas, int):
            return atlas
        names = [os.path.basename(s.image) for s in self.scans]
        for i, name in enumerate(names):
            if atlas in (name, _strip_extension(name)):
                return i
        raise ConfigError(f"atlas {atlas!r} is not one of the images of {self.describe()}")

    def __len__(self) -> int:
        return self.length

    def pair(self, index: int) -> tuple[Scan, Scan]:
        """``(moving, fixed)`` scans of item ``index``."""
        if self.pairs is not None:
            m, f = self.pairs[index % len(self.pairs)]
        else:
            m, f = pair_subjects(
                self.pairing, len(self.scans), index, (self.seed, self._split), self.atlas
            )
        return self.scans[m], self.scans[f]

    # -- loading --------------------------------------------------------------------------------
    def _load(self, path: str, label: bool) -> tuple[np.ndarray, ImageInfo]:
        key = (path, label)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        array, info = self.preprocessing.read(path, label=label)
        self.check_image(info)
        if self._cache_size > 0:
            self._cache[key] = (array, info)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return array, info

    def check_image(self, info: ImageInfo) -> None:
        """Hook for dataset-specific checks of a loaded image (raise :class:`DataError`)."""

    def _load_scan(self, scan: Scan) -> tuple[np.ndarray, ImageInfo, np.ndarray | None]:
        image, info = self._load(scan.image, False)
        if scan.label is None:
            return image, info, None
        label = self._load_on(scan.label, scan.image, info, "label map")
        return image, info, self.label_table.encode(label, scan.label)

    def _load_on(self, path: str, image: str, info: ImageInfo, what: str) -> np.ndarray:
        """A label map or mask (integers) that must lie on its image's grid."""
        array, other = self._load(path, True)
        if other.shape != info.shape:
            raise DataError(
                f"{path}: {what} shape {other.file_shape} does not match its image "
                f"{image} of shape {info.file_shape}"
            )
        if not np.allclose(other.grid_affine, info.grid_affine, atol=1e-3):
            raise DataError(f"{path}: {what} lies on another grid (affine) than its image {image}")
        return array

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.length <= index < self.length:
            raise IndexError(f"{self.describe()}: index {index} out of range ({self.length} items)")
        index %= self.length
        moving_scan, fixed_scan = self.pair(index)
        fixed, finfo, fixed_label = self._load_scan(fixed_scan)
        moving, minfo, moving_label = self._load_scan(moving_scan)
        if minfo.ndim != finfo.ndim:
            raise DataError(
                f"{moving_scan.image}: a {minfo.ndim}D image cannot move to the {finfo.ndim}D {fixed_scan.image}"
            )
        arrays = {"moving": (moving, minfo), "fixed": (fixed, finfo)}
        if moving_label is not None:
            arrays["moving_label"] = (moving_label, minfo)
        if fixed_label is not None:
            arrays["fixed_label"] = (fixed_label, finfo)
        if moving_scan.mask and fixed_scan.mask:
            for key, scan, info in (("moving", moving_scan, minfo), ("fixed", fixed_scan, finfo)):
                mask = self._load_on(scan.mask, scan.image, info, "mask") != 0
                arrays[f"{key}_mask"] = (mask.astype(np.int64), info)
        item: dict[str, Any]
        item, affine = self.preprocessing.onto_model_grid(arrays, finfo)
        for key in ("moving_mask", "fixed_mask"):
            if key in item:
                item[key] = item[key] != 0
        shape = tuple(item["fixed"].shape[1:])
        if self.has_labels:
            zeros = torch.zeros((1, *shape), dtype=torch.int64)
            item.setdefault("moving_label", zeros)
            item.setdefault("fixed_label", zeros)
            if self.partially_labelled:
                item["moving_labelled"] = torch.tensor(moving_label is not None)
                item["fixed_labelled"] = torch.tensor(fixed_label is not None)
        if moving_scan.landmarks and fixed_scan.landmarks:
            moving_points = _landmarks(moving_scan.landmarks, minfo, affine)
            fixed_points = _landmarks(fixed_scan.landmarks, finfo, affine)
            if moving_points.shape != fixed_points.shape:
                raise DataError(
                    f"{moving_scan.landmarks}: {len(moving_points)} landmarks do not correspond "
                    f"to the {len(fixed_points)} of {fixed_scan.landmarks}"
                )
            item["moving_landmarks"], item["fixed_landmarks"] = moving_points, fixed_points
        item["spacing"] = torch.as_tensor(grid_spacing(affine, len(shape)), dtype=torch.float32)
        item["fixed_affine"] = torch.as_tensor(affine, dtype=torch.float64)
        item["moving_path"] = moving_scan.image
        item["fixed_path"] = fixed_scan.image
        if self.augment is not None:
            item = augment_item(self.augment, item, self.seed * 1_000_003 + index)
        return item


class ListedPairs(FilePairDataset):
    """Listed ``(moving, fixed)`` scans, preprocessed as every file dataset (``regzoo register``).

    Args:
        pairs: the scans of each pair.
        preprocessing: the pipeline (a checkpoint's, :meth:`Preprocessing.from_config`).
        label_table: the table label maps are encoded with (a trained model's); ``None``: the
            values in the listed label files.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Scan, Scan]],
        preprocessing: Preprocessing,
        label_table: LabelTable | None = None,
    ) -> None:
        super().__init__("test", "paired", **preprocessing.to_config())
        self._given_table = label_table
        index: dict[Scan, int] = {}
        for scan in (s for pair in pairs for s in pair):
            index.setdefault(scan, len(index))
        self.scans = list(index)
        self.pairs = [(index[m], index[f]) for m, f in pairs]
        self._finish_setup()

    def listed_labels(self) -> list[int] | None:
        return None if self._given_table is None else self._given_table.to_list()

    def describe(self) -> str:
        return "listed pairs"


LANDMARK_EXTENSIONS = (".csv", ".txt")
MASK_SUFFIX = "_mask"


def _landmarks(path: str, info: ImageInfo, grid_affine: np.ndarray) -> torch.Tensor:
    """Landmarks ``(N, ndim)`` float32 in voxels of the model grid, from a landmark file of file
    voxel indices: ``.csv`` 0-based, comma-separated; ``.txt`` (DIR-Lab) 1-based, whitespace."""
    dirlab = path.endswith(".txt")
    try:
        points = np.loadtxt(path, delimiter=None if dirlab else ",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read landmarks ({err})") from None
    if dirlab:
        points = points - 1.0
    file_ndim = len(info.file_shape)
    if points.shape[1] != file_ndim or not np.isfinite(points).all():
        raise DataError(f"{path}: landmarks must be N rows of {file_ndim} finite voxel indices")
    homogeneous = np.zeros((len(points), 4))
    homogeneous[:, :file_ndim] = points
    homogeneous[:, 3] = 1
    world = homogeneous @ info.affine.T
    voxels = world @ np.linalg.inv(grid_affine).T
    return torch.as_tensor(voxels[:, : info.ndim], dtype=torch.float32)


def _landmark_file(stem: Path) -> str | None:
    """``<stem>.csv`` or ``<stem>.txt``, the first that exists."""
    found = (stem.with_name(stem.name + ext) for ext in LANDMARK_EXTENSIONS)
    return next((str(p) for p in found if p.is_file()), None)


def _scan_folder(folder: Path, label_suffix: str) -> list[Scan]:
    """Scans of one folder: ``images/`` + ``labels/`` + ``landmarks/`` (same stems), or flat with
    ``*<suffix>`` label maps and ``*_landmarks`` files."""
    if (folder / "images").is_dir():
        names = sorted(n for n in os.listdir(folder / "images") if _is_image(n))
        labels = folder / "labels"
        masks = folder / "masks"
        return [
            Scan(
                str(folder / "images" / n),
                str(labels / n) if (labels / n).is_file() else None,
                _landmark_file(folder / "landmarks" / _strip_extension(n)),
                str(masks / n) if (masks / n).is_file() else None,
            )
            for n in names
        ]
    names = sorted(n for n in os.listdir(folder) if _is_image(n) and (folder / n).is_file())
    stems = {_strip_extension(n): n for n in names}
    scans = []
    suffixes = [s for s in (label_suffix, MASK_SUFFIX) if s]
    for name in names:
        stem = _strip_extension(name)
        if any(stem.endswith(s) and stem[: -len(s)] in stems for s in suffixes):
            continue
        label = _companion(folder, stem + label_suffix) if label_suffix else None
        mask = _companion(folder, stem + MASK_SUFFIX)
        landmarks = _landmark_file(folder / f"{stem}_landmarks")
        scans.append(Scan(str(folder / name), label, landmarks, mask))
    return scans


def _companion(folder: Path, stem: str) -> str | None:
    """The image file ``<stem><extension>`` in ``folder``, if there is one."""
    found = (folder / (stem + ext) for ext in IMAGE_EXTENSIONS)
    return next((str(p) for p in found if p.is_file()), None)


@register_dataset(
    "folder",
    summary="A folder of NIfTI images with optional label maps, paired at random, to an atlas or all pairs.",
    tags=("2d", "3d", "files", "labels"),
)
class FolderDataset(FilePairDataset):
    """Pairs of the images in a folder (see the module docstring for preprocessing and items).

    Layout (per split folder, i.e. ``root/<split>/`` when it exists, else ``root`` for every
    split)::

        root/images/a.nii.gz  root/labels/a.nii.gz  root/landmarks/a.txt  root/masks/a.nii.gz
        root/a.nii.gz  root/a_seg.nii.gz  root/a_landmarks.csv  root/a_mask.nii.gz   (or flat)

    Label maps, landmark files (``.csv`` or DIR-Lab ``.txt``: module docstring) and masks (e.g.
    lung masks: non-zero inside) are optional; landmarks and masks reach the items
    (``*_landmarks``, ``*_mask``) when both images of a pair have them.

    Args:
        root: the folder.
        label_suffix: suffix of label maps in a flat folder (``"_seg"``); ``""`` for none.
        split, pairing, atlas, length, normalize, percentiles, clip, spacing, size, pad_multiple,
            cache_size, seed, augment, photo_channel: see :class:`FilePairDataset`.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        pairing: str = "random",
        atlas: int | str = 0,
        label_suffix: str = "_seg",
        length: int | None = None,
        normalize: str = "percentile",
        percentiles: Sequence[float] = (0.5, 99.5),
        clip: Sequence[float] | None = None,
        spacing: float | Sequence[float] | None = None,
        size: int | Sequence[int] | None = None,
        pad_multiple: int | None = 16,
        cache_size: int = 8,
        seed: int = 0,
        augment: list[dict[str, Any]] | None = None,
        photo_channel: str = "gray",
    ) -> None:
        super().__init__(
            split,
            pairing,
            atlas,
            length,
            normalize,
            percentiles,
            clip,
            spacing,
            size,
            pad_multiple,
            cache_size,
            seed,
            augment,
            photo_channel,
        )
        base = Path(root)
        if not base.is_dir():
            raise DataError(f"{root}: no such folder")
        self.root = base / split if (base / split).is_dir() else base
        self.label_suffix = label_suffix
        splits = [base / s for s in ("train", "val", "test") if (base / s).is_dir()]
        self.label_folders = splits if self.root != base else [base]
        self.scans = _scan_folder(self.root, label_suffix)
        self.pairs = None
        self._finish_setup()

    def label_files(self) -> list[str]:
        return sorted(
            {
                s.label
                for folder in self.label_folders
                for s in _scan_folder(folder, self.label_suffix)
                if s.label
            }
        )

    def describe(self) -> str:
        return f"folder {self.root}"


def _l2r_label_values(labels: Any) -> list[int] | None:
    """The label values a Learn2Reg ``labels`` entry lists (``{"0": {"1": "name"}}`` per
    modality, or ``{"1": "name"}``); ``None`` if it lists none."""
    if isinstance(labels, dict) and labels:
        inner = next(iter(labels.values()))
        keys = inner.keys() if isinstance(inner, dict) else labels.keys()
        values = [int(k) for k in keys if str(k).lstrip("-").isdigit()]
        return values or None
    return None


@register_dataset(
    "learn2reg",
    summary="A Learn2Reg challenge dataset (dataset.json, imagesTr/labelsTr): training, validation and test pairs.",
    paper=LEARN2REG,
    tags=("3d", "files", "labels"),
)
class Learn2RegDataset(FilePairDataset):
    """The Learn2Reg layout: ``<root>/<NAME>_dataset.json`` with ``imagesTr/``, ``labelsTr/``.

    The json lists ``training`` images (``{"image": "./imagesTr/X_0001_0000.nii.gz", "label":
    "./labelsTr/...", "mask": ..., "keypoints": ...}``), pairs under ``training_paired_images``,
    ``registration_val`` and ``registration_test`` (``{"fixed": ..., "moving": ...}``), and
    ``tensorImageShape`` (``{"0": [X, Y, Z]}``, per modality). Splits:

    - ``train``: the listed ``training_paired_images`` (``pairing="paired"``, the default when the
      json lists some), else pairs of the training images (``random``/``atlas``/``all``) without
      the images of the validation and test pairs;
    - ``val``: ``registration_val``; ``test``: ``registration_test``.

    Label maps come from the ``label`` entry of an image in ``training``, or from ``labelsTr/``
    with the image's file name; every image is checked against ``tensorImageShape``. Keypoints
    (a ``keypoints`` or ``landmarks`` file: a CSV of 0-based or a DIR-Lab ``.txt`` of 1-based
    voxel indices, one point per row; module docstring) become
    ``moving_landmarks`` / ``fixed_landmarks`` ``(N, ndim)`` in model-grid voxels when both
    images of a pair have them (rows correspond, as in NLST); ``mask`` entries (NLST's lung masks)
    become ``moving_mask`` / ``fixed_mask`` when both images have one.

    Args:
        root: the folder holding the json.
        json_file: the json's name (default: the single ``*dataset.json`` in ``root``).
        split, pairing, atlas, length, normalize, percentiles, clip, spacing, size, pad_multiple,
            cache_size, seed, augment, photo_channel: see :class:`FilePairDataset`; ``pairing=None`` chooses as
            above.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        json_file: str | None = None,
        pairing: str | None = None,
        atlas: int | str = 0,
        length: int | None = None,
        normalize: str = "percentile",
        percentiles: Sequence[float] = (0.5, 99.5),
        clip: Sequence[float] | None = None,
        spacing: float | Sequence[float] | None = None,
        size: int | Sequence[int] | None = None,
        pad_multiple: int | None = 16,
        cache_size: int = 8,
        seed: int = 0,
        augment: list[dict[str, Any]] | None = None,
        photo_channel: str = "gray",
    ) -> None:
        self.root = Path(root)
        self.json_path = self._find_json(json_file)
        try:
            meta = json.loads(self.json_path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{self.json_path}: cannot read the dataset json ({err})") from None
        self.meta = meta
        listed = {
            "train": "training_paired_images",
            "val": "registration_val",
            "test": "registration_test",
        }
        key = listed.get(split)
        pairs_json = (meta.get(key) or []) if key else []
        if pairing is None:
            pairing = "paired" if split != "train" or pairs_json else "random"
        super().__init__(
            split,
            pairing,
            atlas,
            length,
            normalize,
            percentiles,
            clip,
            spacing,
            size,
            pad_multiple,
            cache_size,
            seed,
            augment,
            photo_channel,
        )
        self.modalities: dict[str, str] = dict(meta.get("modality", {}))
        shapes = meta.get("tensorImageShape") or {}
        self.shapes = (
            {str(k): tuple(int(s) for s in v) for k, v in shapes.items()}
            if isinstance(shapes, dict)
            else {}
        )
        labels, points, masks = {}, {}, {}
        for entry in meta.get("training", []) or []:
            if isinstance(entry, dict) and "image" in entry:
                image = self._path(entry["image"])
                labels[image] = self._path(entry["label"]) if entry.get("label") else None
                found = entry.get("keypoints") or entry.get("landmarks")
                points[image] = (
                    self._path(found) if found and found.endswith(LANDMARK_EXTENSIONS) else None
                )
                masks[image] = self._path(entry["mask"]) if entry.get("mask") else None
        self._labels, self._points, self._masks = labels, points, masks
        if pairing == "paired":
            if not pairs_json and split == "train":
                raise ConfigError(
                    f"{self.json_path}: lists no training_paired_images; use pairing=random"
                )
            if not pairs_json:
                raise DataError(f"{self.json_path}: lists no pairs under {key}")
            index: dict[str, int] = {}
            self.scans, self.pairs = [], []
            for p in pairs_json:
                try:
                    m, f = self._path(p["moving"]), self._path(p["fixed"])
                except (KeyError, TypeError):
                    raise DataError(
                        f"{self.json_path}: {key} entries need 'fixed' and 'moving', got {p!r}"
                    ) from None
                for path in (m, f):
                    if path not in index:
                        index[path] = len(self.scans)
                        self.scans.append(self._scan(path))
                self.pairs.append((index[m], index[f]))
        else:
            if split != "train":
                raise ConfigError(
                    f"learn2reg: the {split} split has listed pairs only (pairing='paired')"
                )
            held_out = {
                self._path(p[role])
                for k in ("registration_val", "registration_test")
                for p in meta.get(k) or []
                for role in ("fixed", "moving")
                if isinstance(p, dict) and role in p
            }
            images = sorted(p for p in labels if p not in held_out)
            self.scans = [self._scan(p) for p in images]
            self.pairs = None
        self._finish_setup()

    def listed_labels(self) -> list[int] | None:
        """The json's ``labels``: a label file holding another value is a one-line error."""
        return _l2r_label_values(self.meta.get("labels"))

    def label_files(self) -> list[str]:
        listed = {p for p in self._labels.values() if p and os.path.isfile(p)}
        return sorted(listed | {s.label for s in self.scans if s.label})

    def _find_json(self, json_file: str | None) -> Path:
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder")
        if json_file is not None:
            path = self.root / json_file
            if not path.is_file():
                raise DataError(f"{path}: no such file")
            return path
        found = sorted(p for p in self.root.glob("*dataset.json") if p.is_file())
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise DataError(f"{self.root}: found {what} *dataset.json files; set json_file")
        return found[0]

    def _path(self, rel: str) -> str:
        return str((self.root / rel).resolve()) if not os.path.isabs(rel) else rel

    def _scan(self, image: str) -> Scan:
        points, mask = self._points.get(image), self._masks.get(image)
        return Scan(
            image,
            self._label_of(image),
            points if points and os.path.isfile(points) else None,
            mask if mask and os.path.isfile(mask) else None,
        )

    def _label_of(self, image: str) -> str | None:
        label = self._labels.get(image)
        if label is None:
            candidate = Path(
                image.replace(f"{os.sep}imagesTr{os.sep}", f"{os.sep}labelsTr{os.sep}")
            )
            label = str(candidate) if str(candidate) != image and candidate.is_file() else None
        return label if label is not None and os.path.isfile(label) else None

    def describe(self) -> str:
        return f"learn2reg {self.json_path}"

    def check_image(self, info: ImageInfo) -> None:
        if not self.shapes:
            return
        stem = _strip_extension(os.path.basename(info.path))
        modality = stem.rsplit("_", 1)[-1].lstrip("0") or "0"
        expected = self.shapes.get(modality, self.shapes.get("0"))
        if expected is not None and tuple(info.file_shape) != expected:
            raise DataError(
                f"{info.path}: shape {info.file_shape} differs from the dataset's tensorImageShape {list(expected)}"
            )
