"""Reading and writing images, label maps and displacement fields (docs/conventions.md).

- :func:`load_image` reads anything nibabel reads, reorients it to the closest canonical (RAS)
  orientation (``nibabel.as_closest_canonical``'s axis permutation and flips) and checks it; the
  tensor axes are the array axes after that. A trailing singleton 4th axis is dropped, and a 3D
  array with one singleton axis is a 2D image.
- :func:`save_image` writes an array of the canonical grid back onto the reference's original
  grid, with the reference's header (the fixed image's header for ``warped.nii.gz``).
- :func:`save_ddf` writes a displacement field the way ITK reads one: a 5D ``(X, Y, Z, 1, ndim)``
  NIfTI with intent ``VECTOR`` (1007), vectors in millimetres in ITK's LPS world frame, on the
  reference's original grid. SimpleITK then applies it directly::

      field = sitk.ReadImage("ddf.nii.gz", sitk.sitkVectorFloat64)
      warped = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field))

  which samples the moving image at ``x + ddf(x)`` for every fixed point ``x``, as regzoo's
  :func:`~regzoo.spatial.warp` does in voxel units. 2D fields are ``(X, Y, 1, 1, 2)`` and assume
  the image plane is the world's x-y plane (ITK reads a 2D NIfTI's in-plane directions only).

Registration runs on the model grid (:mod:`regzoo.data.preprocess`): the fixed image's grid,
resampled and padded as the checkpoint's preprocessing says; the moving image is resampled onto it
in physical space (:func:`regzoo.data.grid.resample`), so the network's ``ddf`` maps model-grid
voxels to positions on that same grid. Every error about a file is a :class:`DataError` naming it.
Files are written through :func:`regzoo.atomic.atomic_path`: a reader never sees half of one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from ..atomic import atomic_path
from ..errors import DataError
from .grid import grid_spacing, resample

__all__ = [
    "ImageInfo",
    "load_image",
    "image_ndim",
    "to_file_axes",
    "save_image",
    "save_ddf",
    "save_series",
    "load_ddf",
]

_RAS = axcodes2ornt(("R", "A", "S"))
_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass
class ImageInfo:
    """Where an array came from and how to put an array back there.

    Attributes:
        path: the file.
        affine: the file's voxel-to-RAS affine (4x4).
        header: the file's header (NIfTI-1/2; other formats converted to NIfTI-1).
        file_shape: the file's array shape (trailing singleton 4th axis dropped).
        ornt: nibabel orientation transform from the file's axes to RAS.
        squeezed: for a 2D image, the canonical 3D axis of size 1 that was removed, else None.
        shape: spatial shape of the canonical (tensor) array.
        grid_affine: voxel-to-RAS affine of the canonical array (2D: first two columns are its
            axes).
    """

    path: str
    affine: np.ndarray
    header: Any
    file_shape: tuple[int, ...]
    ornt: np.ndarray
    squeezed: int | None
    shape: tuple[int, ...]
    grid_affine: np.ndarray

    @property
    def ndim(self) -> int:
        """2 or 3."""
        return len(self.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along the canonical axes, ``(ndim,)``."""
        return grid_spacing(self.grid_affine, self.ndim)


PHOTO_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: How a colour photograph becomes one channel: its luminance, or its green channel (the
#: channel of best vessel contrast in fundus photographs).
PHOTO_CHANNELS: tuple[str, ...] = ("gray", "green")


def _read(path: str | os.PathLike, channel: str = "gray") -> Any:
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if path.lower().endswith(PHOTO_EXTENSIONS):
        return _read_photo(path, channel)
    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises many types for unreadable files
        raise DataError(f"{path}: cannot read as an image ({type(err).__name__}: {err})") from None


def _read_photo(path: str, channel: str) -> nib.Nifti1Image:
    """A PNG or JPEG photograph (read by Pillow) as a 2D image of 1 mm pixels: axis 0 the
    columns (x), axis 1 the rows (y), so that a pixel ``(x, y)`` of image tools and control-point
    files is voxel ``(x, y)``; a colour image gives its ``channel`` (:data:`PHOTO_CHANNELS`)."""
    from PIL import Image

    if channel not in PHOTO_CHANNELS:
        raise DataError(f"{path}: photo channel must be one of {', '.join(PHOTO_CHANNELS)}")
    try:
        with Image.open(path) as img:
            if img.mode in ("1", "L", "I", "I;16", "F"):
                data = np.asarray(img)
            elif channel == "green":
                data = np.asarray(img.convert("RGB"))[..., 1]
            else:
                data = np.asarray(img.convert("L"))
    except Exception as err:  # Pillow raises many types for unreadable files
        raise DataError(f"{path}: cannot read as an image ({type(err).__name__}: {err})") from None
    if data.dtype == bool:
        data = data.astype(np.uint8)
    return nib.Nifti1Image(np.ascontiguousarray(data.T), np.eye(4))


def _check_affine(affine: np.ndarray, path: str) -> None:
    """Refuse a header whose voxel-to-world affine cannot place voxels in space."""
    if not np.isfinite(affine).all():
        raise DataError(f"{path}: the header's affine holds NaN or infinite values (qform/sform)")
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(axes, axis=0)
    if (sizes == 0).any():
        raise DataError(
            f"{path}: the header gives voxel axis {int(np.argmin(sizes))} a size of 0 mm"
        )
    if abs(np.linalg.det(axes)) < 1e-6 * np.prod(sizes):
        raise DataError(
            f"{path}: the header's affine is singular (two voxel axes point the same way)"
        )


def _as_3d(data_shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    shape = tuple(data_shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise DataError(
            f"{path}: expected a 2D or 3D image, got an array of shape {tuple(data_shape)}"
        )
    if sum(s == 1 for s in shape) > 1:
        raise DataError(
            f"{path}: image of shape {tuple(data_shape)} has fewer than 2 non-singleton axes"
        )
    return shape


def _canonical(
    data: np.ndarray, affine: np.ndarray, squeeze: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """File axes to the closest canonical (RAS) orientation (trailing non-spatial axes kept).

    Args:
        data: ``(X, Y, Z, ...)`` in the file's axis order.
        affine: the file's voxel-to-RAS affine.
        squeeze: a 2D image: drop the canonical axis of size 1.

    Returns:
        ``(canonical, ornt, grid_affine, squeezed)``: the reoriented array, nibabel's
        orientation of the file's axes, the canonical array's voxel-to-RAS affine (2D: its first
        two columns are the remaining axes) and the dropped axis (None in 3D).
    """
    ornt = io_orientation(affine)
    canonical = apply_orientation(data, ornt)
    grid_affine = affine @ inv_ornt_aff(ornt, data.shape[:3])
    squeezed = None
    if squeeze:
        squeezed = canonical.shape[:3].index(1)
        canonical = canonical.squeeze(squeezed)
        grid_affine = grid_affine[:, [a for a in range(3) if a != squeezed] + [squeezed, 3]]
    return canonical, ornt, grid_affine, squeezed


def load_image(
    path: str | os.PathLike, label: bool = False, channel: str = "gray"
) -> tuple[np.ndarray, ImageInfo]:
    """Read an image (or a label map with ``label=True``) in canonical RAS orientation.

    NIfTI and the other formats nibabel reads; PNG and JPEG photographs through Pillow, 2D with
    1 mm pixels, a colour photograph as its luminance or, with ``channel="green"``, its green
    channel.

    Returns:
        ``(array, info)``: the array ``(*S)`` (float32 for images, int64 for label maps) with
        ``S`` its canonical spatial shape, and the :class:`ImageInfo` to write results back.

    Raises:
        DataError: unreadable file, not 2D/3D, NaN or infinite values, an affine that cannot
            place voxels (NaN, a voxel size of 0, singular), a label map with non-integer or
            negative values; the message names the file.
    """
    path = str(path)
    img = _read(path, channel)
    shape3 = _as_3d(img.shape, path)
    _check_affine(img.affine, path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise DataError(
            f"{path}: cannot read the image data ({type(err).__name__}: {err})"
        ) from None
    data = data.reshape(shape3)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    if label:
        if np.issubdtype(data.dtype, np.floating):
            if not np.array_equal(data, np.round(data)):
                bad = data[data != np.round(data)].flat[0]
                raise DataError(f"{path}: a label map must hold integers, found the value {bad:g}")
        elif not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
            raise DataError(f"{path}: a label map must hold integers, got dtype {data.dtype}")
        if data.size and data.min() < 0:
            raise DataError(f"{path}: a label map must not hold negative values ({data.min():g})")
        data = data.astype(np.int64)
    else:
        data = data.astype(np.float32)
    canonical, ornt, grid_affine, squeezed = _canonical(data, img.affine, 1 in shape3)
    header = (
        img.header
        if isinstance(img.header, nib.Nifti1Header)
        else nib.Nifti1Header.from_header(img.header)
    )
    info = ImageInfo(
        path=path,
        affine=np.asarray(img.affine, dtype=np.float64),
        header=header.copy(),
        file_shape=tuple(int(s) for s in img.shape[:3])
        if len(img.shape) >= 3
        else tuple(img.shape),
        ornt=ornt,
        squeezed=squeezed,
        shape=tuple(int(s) for s in canonical.shape),
        grid_affine=np.asarray(grid_affine, dtype=np.float64),
    )
    return np.ascontiguousarray(canonical), info


def image_ndim(path: str | os.PathLike) -> int:
    """2 or 3: the dimensionality :func:`load_image` will give, from the header alone.

    Raises:
        DataError: the checks of :func:`load_image` on the header (readable, 2D/3D, an affine
            that places voxels in space); the data are not read.
    """
    path = str(path)
    img = _read(path)
    shape = _as_3d(img.shape, path)
    _check_affine(img.affine, path)
    return 3 - (1 in shape)


def _to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _onto_reference(
    array: np.ndarray, reference: ImageInfo, affine: np.ndarray | None, mode: str
) -> np.ndarray:
    """``(C, *S)`` on grid ``affine`` -> ``(C, *reference.shape)`` on the reference's canonical grid."""
    if affine is None:
        if tuple(array.shape[1:]) != reference.shape:
            raise DataError(
                f"{reference.path}: array of shape {tuple(array.shape[1:])} does not match the "
                f"image's shape {reference.shape}; pass the affine of the array's grid"
            )
        return array
    out = resample(
        torch.from_numpy(np.ascontiguousarray(array)),
        _to_numpy(affine).astype(np.float64),
        reference.shape,
        reference.grid_affine,
        mode,
        "border" if mode == "bilinear" else "zeros",
    )
    return out.numpy()


def to_file_axes(array: np.ndarray, reference: ImageInfo) -> np.ndarray:
    """Canonical ``(*S, ...)`` (trailing axes kept) -> the file's array order ``(*file_shape, ...)``.

    The inverse of :func:`load_image`'s reorientation (a 2D image gets its singleton axis back).
    """
    if reference.squeezed is not None:
        array = np.expand_dims(array, reference.squeezed)
    back = ornt_transform(_RAS, reference.ornt)
    out = apply_orientation(array, back)
    return out.reshape(*reference.file_shape, *array.shape[3:])


def _write(
    data: np.ndarray, reference: ImageInfo, path: str | os.PathLike, intent: str | None
) -> None:
    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(np.nan, np.nan)
    img = nib.Nifti1Image(data, reference.affine, header=header)
    qform, qcode = reference.header.get_qform(coded=True)
    sform, scode = reference.header.get_sform(coded=True)
    img.set_qform(
        qform if qform is not None else reference.affine, int(qcode) if qform is not None else 1
    )
    img.set_sform(
        sform if sform is not None else reference.affine, int(scode) if sform is not None else 1
    )
    img.header.set_intent(intent or "none")
    name = Path(path).name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))


def save_image(
    array: Any, reference: ImageInfo, path: str | os.PathLike, affine: Any = None
) -> None:
    """Write ``array`` (canonical axes) onto ``reference``'s original grid with its header.

    Args:
        array: ``(*S)`` or ``(1, *S)`` (tensor or array). Floating arrays are written as float32,
            integer (label) arrays as int32 (int64 when a value does not fit 32 bits).
        reference: the image whose grid and header the output takes (the fixed image).
        path: output file (``.nii.gz``).
        affine: the 4x4 affine of ``array``'s grid when it is not the reference's canonical grid
            (e.g. a batch's ``fixed_affine`` after resampling or padding); the array is then
            resampled onto the reference grid (linear for floats, nearest for integers).
    """
    data = _to_numpy(array)
    if data.ndim == reference.ndim + 1 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != reference.ndim:
        raise DataError(
            f"{path}: cannot write an array of shape {data.shape} as a {reference.ndim}D image"
        )
    integer = not np.issubdtype(data.dtype, np.floating)
    data = _onto_reference(data[None], reference, affine, "nearest" if integer else "bilinear")[0]
    if integer:  # label values past int32 (any value a label table holds) keep 64 bits
        limits = np.iinfo(np.int32)
        wide = data.size and (data.max() > limits.max or data.min() < limits.min)
        data = data.astype(np.int64 if wide else np.int32)
    else:
        data = data.astype(np.float32)
    _write(to_file_axes(data, reference), reference, path, None)


def save_series(arrays: Sequence[Any], reference: ImageInfo, path: str | os.PathLike) -> None:
    """Write images on ``reference``'s canonical grid as one 4D image: a series along the fourth
    (NIfTI time) axis, the spatial axes in the file's order with its header (2D images get
    their singleton third axis).

    Args:
        arrays: ``T`` arrays ``(*S)`` or ``(1, *S)`` (tensors or arrays), ``S`` the reference's
            canonical shape; written as float32.
        reference: the image whose grid and header the output takes (the fixed image).
        path: output file (``.nii.gz``).
    """
    frames = []
    for array in arrays:
        data = _to_numpy(array)
        if data.ndim == reference.ndim + 1 and data.shape[0] == 1:
            data = data[0]
        if tuple(data.shape) != tuple(reference.shape):
            raise DataError(
                f"{path}: cannot write an array of shape {data.shape} into a series of "
                f"{tuple(reference.shape)} images"
            )
        frames.append(data.astype(np.float32))
    data = to_file_axes(np.stack(frames, axis=-1), reference)
    spatial = data.shape[:-1] + (1,) * (3 - (data.ndim - 1))
    _write(data.reshape(*spatial, len(frames)), reference, path, None)


def save_ddf(ddf: Any, reference: ImageInfo, path: str | os.PathLike, affine: Any = None) -> None:
    """Write a displacement field as ITK reads it (module docstring) on ``reference``'s grid.

    Args:
        ddf: ``(ndim, *S)`` or ``(1, ndim, *S)``, voxel units of the canonical grid, regzoo's
            convention (``warped[x] = moving[x + ddf[x]]``).
        reference: the fixed image.
        path: output file.
        affine: the 4x4 affine of ``ddf``'s grid, if it is not the reference's canonical grid;
            the physical field is then resampled (linearly) onto the reference grid.
    """
    field = _to_numpy(ddf).astype(np.float64)
    if field.ndim == reference.ndim + 2 and field.shape[0] == 1:
        field = field[0]
    ndim = reference.ndim
    if field.ndim != ndim + 1 or field.shape[0] != ndim:
        raise DataError(
            f"{path}: a {ndim}D displacement field must be ({ndim}, *S), got {field.shape}"
        )
    grid = reference.grid_affine if affine is None else _to_numpy(affine).astype(np.float64)
    mm = np.tensordot(grid[:3, :ndim], field, axes=(1, 0)) * _LPS.reshape(3, *([1] * ndim))
    mm = _onto_reference(mm.astype(np.float32), reference, affine, "bilinear")
    vectors = np.moveaxis(mm[:ndim], 0, -1)  # (*S, ndim): LPS components, x and y for 2D
    data = to_file_axes(vectors, reference)  # (*file_shape, ndim)
    data = data.reshape(*data.shape[:-1], *([1] * (3 - (data.ndim - 1))), 1, ndim)
    _write(data.astype(np.float32), reference, path, "vector")


def load_ddf(
    path: str | os.PathLike, reference: ImageInfo | None = None
) -> tuple[np.ndarray, ImageInfo]:
    """Read a field written by :func:`save_ddf` (or ITK/ANTs): ``(ndim, *S)`` canonical voxel units.

    ``reference`` gives the dimensionality when the file alone is ambiguous; by default a field
    with 2 components is 2D. Returns the field and the :class:`ImageInfo` of its grid.
    """
    path = str(path)
    img = _read(path)
    shape = img.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] not in (2, 3):
        raise DataError(
            f"{path}: a displacement field must be (X, Y, Z, 1, ndim), got shape {shape}"
        )
    _check_affine(img.affine, path)
    ndim = reference.ndim if reference is not None else int(shape[4])
    vectors = np.asarray(img.dataobj, dtype=np.float64)[:, :, :, 0, :]
    if not np.isfinite(vectors).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    if ndim == 2 and 1 not in shape[:3]:
        raise DataError(
            f"{path}: a 2D displacement field needs a singleton spatial axis, got {shape}"
        )
    canonical, ornt, grid_affine, squeezed = _canonical(vectors, img.affine, ndim == 2)
    mm = np.zeros((*canonical.shape[:-1], 3))
    mm[..., : canonical.shape[-1]] = canonical
    mm *= _LPS  # LPS -> RAS (the same sign flips)
    voxels = np.linalg.pinv(grid_affine[:3, :ndim]) @ mm[..., None]
    header = img.header.copy()
    info = ImageInfo(
        path=path,
        affine=np.asarray(img.affine, dtype=np.float64),
        header=header,
        file_shape=tuple(int(s) for s in shape[:3]),
        ornt=ornt,
        squeezed=squeezed,
        shape=tuple(int(s) for s in canonical.shape[:-1]),
        grid_affine=np.asarray(grid_affine, dtype=np.float64),
    )
    return np.moveaxis(voxels[..., 0], -1, 0).astype(np.float32), info
