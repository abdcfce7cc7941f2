"""The one preprocessing pipeline of file data: ``train``, ``evaluate --data`` and ``register``.

Every image pair goes through :class:`Preprocessing` (docs/preprocessing.md):

1. orientation: files are read in the closest canonical (RAS) orientation
   (:func:`regzoo.data.io.load_image`);
2. intensities, per image, on its own voxels: ``clip`` (a fixed window), then ``normalize``
   (``percentile``: the ``percentiles`` mapped to [0, 1] and clipped; ``minmax``; ``zscore``;
   ``none``), by MONAI's dictionary transforms;
3. geometry: the fixed image's grid resampled to ``spacing`` (mm) keeping the field of view's
   centre; the moving image and both label maps are resampled onto it in physical space (one
   interpolation each; labels nearest-neighbour); then every array is centre-padded/cropped to
   ``size`` or padded to the next multiple of ``pad_multiple`` by MONAI
   (``ResizeWithPadOrCropd`` / ``DivisiblePadd``). That grid is the *model grid*.

Its settings are the ``data`` section's keys :data:`PREPROCESSING_KEYS`, saved with every
checkpoint; :meth:`Preprocessing.from_config` reads them back. Augmentation (``data.augment``,
MONAI dictionary transforms named in the config, :func:`build_augment`) runs after step 3 and in
training only. MONAI is imported when a pipeline first runs, not with ``regzoo``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .grid import padded_grid, resample, rescaled_grid
from .io import PHOTO_CHANNELS, ImageInfo, load_image

__all__ = [
    "Preprocessing",
    "PREPROCESSING_KEYS",
    "NORMALISATIONS",
    "AUGMENT_KEYS",
    "build_augment",
    "augment_item",
    "recorded_preprocessing",
    "normalize_intensity",
]

NORMALISATIONS: tuple[str, ...] = ("percentile", "minmax", "zscore", "none")
PREPROCESSING_KEYS: tuple[str, ...] = (
    "normalize",
    "percentiles",
    "clip",
    "spacing",
    "size",
    "pad_multiple",
    "photo_channel",
)
AUGMENT_KEYS: tuple[str, ...] = (
    "moving",
    "fixed",
    "moving_label",
    "fixed_label",
    "moving_mask",
    "fixed_mask",
)


def _floats(value: Any, what: str, count: int | None = None) -> tuple[float, ...]:
    values = (value,) if np.isscalar(value) else tuple(value)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"data.{what}: expected numbers, got {value!r}") from None
    if count is not None and len(out) != count:
        raise ConfigError(f"data.{what}: expected {count} numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing of file data (module docstring); the ``data`` keys of the same names.

    Attributes:
        normalize: ``"percentile"``, ``"minmax"``, ``"zscore"`` or ``"none"``.
        percentiles: lower and upper percentile of ``"percentile"`` (0-100).
        clip: optional intensity window ``(low, high)`` applied before normalising (e.g. HU).
        spacing: voxel size (mm) of the model grid, one value or one per axis; None keeps the
            fixed image's.
        size: crop/pad the model grid to this size (centred), one value or one per axis.
        pad_multiple: without ``size``, pad each axis to a multiple of this (16 for a 4-level
            U-Net); None or 0 pads nothing.
        photo_channel: how colour photographs (PNG, JPEG) are read: ``"gray"`` (luminance) or
            ``"green"`` (the green channel, as for fundus photographs).
    """

    normalize: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    clip: tuple[float, float] | None = None
    spacing: tuple[float, ...] | None = None
    size: tuple[int, ...] | None = None
    pad_multiple: int | None = 16
    photo_channel: str = "gray"
    _transforms: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.photo_channel not in PHOTO_CHANNELS:
            raise ConfigError(
                f"data.photo_channel must be one of {', '.join(PHOTO_CHANNELS)}, "
                f"got {self.photo_channel!r}"
            )
        if self.normalize not in NORMALISATIONS:
            raise ConfigError(
                f"data.normalize must be one of {', '.join(NORMALISATIONS)}, got {self.normalize!r}"
            )
        lo, hi = _floats(self.percentiles, "percentiles", 2)
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"data.percentiles: need 0 <= low < high <= 100, got {[lo, hi]}")
        object.__setattr__(self, "percentiles", (lo, hi))
        if self.clip is not None:
            window = _floats(self.clip, "clip", 2)
            if not window[0] < window[1]:
                raise ConfigError(f"data.clip: need low < high, got {list(window)}")
            object.__setattr__(self, "clip", window)
        if self.spacing is not None:
            spacing = _floats(self.spacing, "spacing")
            if not all(s > 0 for s in spacing):
                raise ConfigError(f"data.spacing: voxel sizes must be positive, got {self.spacing}")
            object.__setattr__(self, "spacing", spacing)
        if self.size is not None:
            size = _floats(self.size, "size")
            if not all(s >= 1 and s == int(s) for s in size):
                raise ConfigError(f"data.size: expected positive integers, got {self.size!r}")
            object.__setattr__(self, "size", tuple(int(s) for s in size))
        if self.pad_multiple is not None:
            if isinstance(self.pad_multiple, bool) or int(self.pad_multiple) != self.pad_multiple:
                raise ConfigError(
                    f"data.pad_multiple: expected an integer, got {self.pad_multiple!r}"
                )
            if self.pad_multiple < 0:
                raise ConfigError(f"data.pad_multiple must be >= 0, got {self.pad_multiple}")
            object.__setattr__(self, "pad_multiple", int(self.pad_multiple) or None)

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> Preprocessing | None:
        """The preprocessing a ``data`` config section records; None when it records none.

        A section records preprocessing when it holds every key of :data:`PREPROCESSING_KEYS`
        (the file datasets' configs do; the synthetic dataset's does not); ``photo_channel``,
        added later, defaults to ``"gray"`` for the configs of earlier runs.
        """
        recorded = [k for k in PREPROCESSING_KEYS if k != "photo_channel"]
        if data is None or not all(k in data for k in recorded):
            return None
        return cls(**{k: data[k] for k in PREPROCESSING_KEYS if k in data})

    def to_config(self) -> dict[str, Any]:
        """The ``data`` keys of this pipeline (lists, YAML-ready)."""
        out = {k: getattr(self, k) for k in PREPROCESSING_KEYS}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def describe(self) -> str:
        """One line: the settings, e.g. ``normalize=percentile, percentiles=[0.5, 99.5]``."""
        return ", ".join(f"{k}={v}" for k, v in self.to_config().items() if v is not None)

    # -- intensities ----------------------------------------------------------------------------
    def _compose(self, what: str) -> Any:
        if what not in self._transforms:
            self._transforms[what] = (
                self._intensity_transforms() if what == "intensity" else self._pad_transform()
            )
        return self._transforms[what]

    def _intensity_transforms(self) -> Any:
        from monai.transforms import (
            Compose,
            NormalizeIntensityd,
            ScaleIntensityd,
            ScaleIntensityRangePercentilesd,
            ThresholdIntensityd,
        )

        steps: list[Any] = []
        if self.clip is not None:  # MONAI has no plain window: two thresholds clip
            lo, hi = self.clip
            steps += [
                ThresholdIntensityd("image", threshold=lo, above=True, cval=lo),
                ThresholdIntensityd("image", threshold=hi, above=False, cval=hi),
            ]
        if self.normalize == "percentile":
            lower, upper = self.percentiles
            steps.append(
                ScaleIntensityRangePercentilesd(
                    "image", lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True
                )
            )
        elif self.normalize == "minmax":
            steps.append(ScaleIntensityd("image", minv=0.0, maxv=1.0))
        elif self.normalize == "zscore":
            steps.append(NormalizeIntensityd("image"))
        return Compose(steps)

    def intensity(self, image: np.ndarray) -> np.ndarray:
        """Step 2 on one image ``(*S)``: clip, then normalise (float32 out)."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        out = self._compose("intensity")({"image": x})["image"]
        return _plain(out)[0].numpy().astype(np.float32, copy=False)

    def read(self, path: str, label: bool = False) -> tuple[np.ndarray, ImageInfo]:
        """Steps 1 and 2: a file in canonical orientation, intensities preprocessed (not labels)."""
        array, info = load_image(path, label=label, channel=self.photo_channel)
        return (array if label else self.intensity(array)), info

    # -- geometry -------------------------------------------------------------------------------
    def _pad_transform(self) -> Any:
        from monai.transforms import DivisiblePadd, ResizeWithPadOrCropd

        if self.size is not None:
            return ResizeWithPadOrCropd(
                AUGMENT_KEYS, spatial_size=self.size, allow_missing_keys=True
            )
        if self.pad_multiple:
            return DivisiblePadd(
                AUGMENT_KEYS, k=self.pad_multiple, method="symmetric", allow_missing_keys=True
            )
        return None

    def resampled_grid(self, fixed: ImageInfo) -> tuple[tuple[int, ...], np.ndarray]:
        """The fixed image's grid at ``spacing`` (itself without): the grid before padding."""
        for key in ("spacing", "size"):
            value = getattr(self, key)
            if value is not None and len(value) not in (1, fixed.ndim):
                raise ConfigError(
                    f"data.{key}: {len(value)} values for the {fixed.ndim}D image {fixed.path}"
                )
        if self.spacing is None:
            return fixed.shape, fixed.grid_affine
        spacing = np.broadcast_to(np.asarray(self.spacing), (fixed.ndim,))
        return rescaled_grid(fixed.shape, fixed.grid_affine, spacing)

    def model_grid(self, fixed: ImageInfo) -> tuple[tuple[int, ...], np.ndarray]:
        """The grid the model works on for a fixed image: ``(shape, 4x4 voxel-to-RAS affine)``."""
        shape, affine = self.resampled_grid(fixed)
        if self.size is not None:
            return padded_grid(shape, affine, self.size)
        return padded_grid(shape, affine, None, self.pad_multiple)

    def onto_model_grid(
        self, arrays: Mapping[str, tuple[np.ndarray, ImageInfo]], fixed: ImageInfo
    ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """Step 3: arrays (keys of :data:`AUGMENT_KEYS`) onto the model grid of ``fixed``.

        Args:
            arrays: ``key -> (array (*S), its ImageInfo)``; ``*_label`` and ``*_mask`` keys are
                integer maps (nearest-neighbour), the others images (linear, zeros outside).
            fixed: the fixed image.

        Returns:
            ``key -> (1, *S_model)`` tensors (float32 images, int64 labels) and the model grid's
            4x4 affine.
        """
        shape, affine = self.resampled_grid(fixed)
        out: dict[str, torch.Tensor] = {}
        for key, (array, info) in arrays.items():
            t = torch.tensor(np.ascontiguousarray(array))[None]
            nearest = key.endswith(("_label", "_mask"))
            out[key] = resample(
                t, info.grid_affine, shape, affine, "nearest" if nearest else "bilinear"
            )
        pad = self._compose("pad")
        if pad is not None:
            out = {k: _plain(v) for k, v in pad(out).items()}
        grid_shape, grid_affine = self.model_grid(fixed)
        assert all(tuple(v.shape[1:]) == grid_shape for v in out.values())
        return out, grid_affine


def _plain(value: Any) -> torch.Tensor:
    """A MONAI ``MetaTensor`` (or array) as a plain tensor: batches carry no metadata."""
    if hasattr(value, "as_tensor"):
        return value.as_tensor()
    return torch.as_tensor(value)


def normalize_intensity(
    image: np.ndarray,
    method: str = "percentile",
    percentiles: Sequence[float] = (0.5, 99.5),
    clip: Sequence[float] | None = None,
) -> np.ndarray:
    """Step 2 alone on one array: :meth:`Preprocessing.intensity` with these settings."""
    return Preprocessing(method, tuple(percentiles), clip).intensity(image)


def build_augment(specs: Sequence[Mapping[str, Any]] | None) -> Any:
    """The training augmentation ``data.augment`` describes: a MONAI ``Compose``, or None.

    Each entry names a dictionary transform of ``monai.transforms`` and its arguments, e.g.
    ``{name: RandGaussianNoised, keys: [moving], prob: 1.0, std: 0.1}``; ``keys`` are batch keys
    of :data:`AUGMENT_KEYS`. Raises :class:`ConfigError` (one line) for an unknown name, a key
    or an argument the transform does not take.
    """
    if not specs:
        return None
    import monai.transforms as mt

    steps = []
    for i, spec in enumerate(specs):
        where = f"data.augment[{i}]"
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(f"{where}: expected a mapping with a transform 'name', got {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        name = str(spec["name"])
        cls = getattr(mt, name, None)
        if not (inspect.isclass(cls) and issubclass(cls, mt.MapTransform)):
            raise ConfigError(
                f"{where}: {name!r} is not a dictionary transform of monai.transforms "
                "(e.g. RandGaussianNoised)"
            )
        keys = kwargs.get("keys")
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        unknown = [k for k in keys if k not in AUGMENT_KEYS]
        if not keys or unknown:
            raise ConfigError(
                f"{where}: keys must name some of {', '.join(AUGMENT_KEYS)}, got {keys!r}"
            )
        kwargs.setdefault("allow_missing_keys", True)
        try:
            steps.append(cls(**kwargs))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {name}: {str(err).splitlines()[0]}") from None
    return mt.Compose(steps)


def augment_item(augment: Any, item: dict[str, Any], seed: int) -> dict[str, Any]:
    """Apply a :func:`build_augment` pipeline to an item, its draws seeded by ``seed``."""
    augment.set_random_state(seed=seed % (2**32))
    keys = [k for k in AUGMENT_KEYS if k in item]
    out = augment({k: item[k] for k in keys})
    for k in keys:
        item[k] = _plain(out[k]).to(item[k].dtype)
    return item


def recorded_preprocessing(
    data: Mapping[str, Any] | None, model: str
) -> tuple[Preprocessing, bool]:
    """The preprocessing a ``data`` section records, else the model's defaults.

    The model's defaults are its default preset's ``data`` section when that is file data, else
    :class:`Preprocessing`'s defaults. Returns ``(pipeline, recorded)``; ``recorded`` is False
    when the defaults were taken (callers say so in one line).
    """
    found = Preprocessing.from_config(data)
    if found is not None:
        return found, True
    from ..config import resolve_config

    return Preprocessing.from_config(resolve_config(model).data) or Preprocessing(), False
