"""Label maps of any values: the label table, one-hot maps within a memory budget, label warping.

A dataset's label maps may hold any non-negative integers (FreeSurfer's aparc reaches 2035, some
atlases hold over 1,600 labels). Every one-hot map regzoo builds is indexed by a
:class:`LabelTable`, the sorted original values present (background 0 always first), so its memory
follows the number of labels present, never the largest value:

- datasets encode their label maps into table indices ``0 .. K-1`` (``dataset.label_table``), and
  the table is saved in the checkpoint (``"labels"``) and set on the model (``model.label_table``);
- :func:`warp_label_probabilities` is the one place a label map is warped as one-hot maps (the
  models' ``warped_label``); :func:`warp_labels` warps a label map of any values (nearest, or
  linear on one-hot then arg-max) and gives back the original values;
- :func:`one_hot` refuses, in one line and before allocating, a one-hot map larger than the
  memory budget (:func:`one_hot_budget`: half the available memory, or
  ``REGZOO_ONE_HOT_MAX_GB``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .spatial.warp import warp

__all__ = [
    "LabelTable",
    "BUDGET_ENV",
    "one_hot_budget",
    "check_one_hot_fits",
    "one_hot",
    "warp_label_probabilities",
    "warp_labels",
    "labels_around",
    "labelled_pairs",
    "region_table",
]

BUDGET_ENV = "REGZOO_ONE_HOT_MAX_GB"
_SHOWN = 5  # values named in a message before "..."

ArrayLike = TypeVar("ArrayLike", torch.Tensor, np.ndarray)


def _short(values: Iterable[int]) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    return shown + (f", ... ({len(values)} in all)" if len(values) > _SHOWN else "")


class LabelTable:
    """The sorted original label values of a dataset; index ``i`` stands for ``values[i]``.

    Background 0 is always in the table, at index 0, so zero padding and unlabelled voxels stay
    background through :meth:`encode` and :meth:`decode`.

    Args:
        values: the label values present (any order, repeats allowed); 0 is added.

    Raises:
        DataError: a negative value (label maps hold non-negative integers).
    """

    def __init__(self, values: Iterable[int]) -> None:
        ordered = sorted({0, *(int(v) for v in values)})
        if ordered[0] < 0:
            raise DataError(f"label values must be non-negative, got {ordered[0]}")
        self.values: tuple[int, ...] = tuple(ordered)
        self._lookup = torch.tensor(ordered, dtype=torch.int64)

    @classmethod
    def from_maps(cls, *maps: torch.Tensor | np.ndarray | None) -> LabelTable:
        """The table of the values present in integer label maps (``None`` entries skipped)."""
        present: set[int] = set()
        for m in maps:
            if m is not None:
                present.update(int(v) for v in torch.unique(torch.as_tensor(m)).tolist())
        return cls(present)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> LabelTable | None:
        """The table a checkpoint saved under ``"labels"`` (``None`` for data without labels)."""
        values = ckpt.get("labels")
        return None if values is None else cls(values)

    @property
    def num_classes(self) -> int:
        """``K``: the number of labels, background included."""
        return len(self.values)

    def to_list(self) -> list[int]:
        """The values as a JSON- and checkpoint-ready list."""
        return list(self.values)

    def encode(self, labels: ArrayLike, source: str = "label map") -> ArrayLike:
        """Original values to table indices ``0 .. K-1`` (int64, same shape and array type).

        A value that is not in the table is a :class:`DataError` naming ``source`` and the
        values, not mapped to background: background would silently erase a structure (its Dice,
        its warped label) where the table was built from other files than those being read.
        """
        t = torch.as_tensor(labels)
        table = self._lookup.to(t.device)
        flat = t.reshape(-1).long()
        index = torch.searchsorted(table, flat).clamp_(max=len(self.values) - 1)
        missing = table[index] != flat
        if bool(missing.any()):
            absent = torch.unique(flat[missing]).tolist()
            raise DataError(
                f"{source}: label value(s) {_short(absent)} not in the label table "
                f"({self.describe()})"
            )
        out = index.reshape(t.shape)
        return out.numpy() if isinstance(labels, np.ndarray) else out

    def decode(self, indices: ArrayLike) -> ArrayLike:
        """Table indices back to the original values (int64, same shape and array type)."""
        t = torch.as_tensor(indices).long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(f"label indices must lie in 0..{self.num_classes - 1}")
        out = self._lookup.to(t.device)[t]
        return out.numpy() if isinstance(indices, np.ndarray) else out

    def describe(self) -> str:
        """``"40 labels: 0, 2, 41, ..."`` for messages."""
        return f"{self.num_classes} labels: {_short(self.values)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelTable) and other.values == self.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return f"LabelTable({self.describe()})"


def one_hot_budget(device: torch.device | str = "cpu") -> int:
    """Bytes a one-hot map may take: ``REGZOO_ONE_HOT_MAX_GB`` (GB, 1e9 bytes) when set, else
    half the memory available now on ``device`` (free GPU memory on CUDA, ``MemAvailable`` of
    the host otherwise), which leaves room for the map's warped copy."""
    setting = os.environ.get(BUDGET_ENV)
    if setting:
        try:
            gb = float(setting)
        except ValueError:
            raise DataError(f"{BUDGET_ENV} must be a number of GB, got {setting!r}") from None
        if not gb > 0:
            raise DataError(f"{BUDGET_ENV} must be positive, got {setting!r}")
        return int(gb * 1e9)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return _available_host_memory() // 2


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_one_hot_fits(
    num_classes: int, voxels: int, device: torch.device | str = "cpu", itemsize: int = 4
) -> None:
    """Raise a one-line :class:`DataError` when ``num_classes x voxels x itemsize`` bytes exceed
    :func:`one_hot_budget`; nothing is allocated."""
    need = int(num_classes) * int(voxels) * int(itemsize)
    budget = one_hot_budget(device)
    if need > budget:
        raise DataError(
            f"a one-hot map of {num_classes} labels over {voxels} voxels needs "
            f"{need / 1e9:.3g} GB, over the memory budget of {budget / 1e9:.3g} GB "
            f"(set {BUDGET_ENV}, or warp labels nearest: eval.label_warp=nearest)"
        )


def one_hot(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(B, 1, *S)`` label indices ``0 .. num_classes-1`` to ``(B, num_classes, *S)`` one-hot maps.

    The memory budget is checked first (:func:`check_one_hot_fits`); only the result is allocated.

    Raises:
        DataError: over the budget, or an index outside ``0 .. num_classes-1`` (label maps with
            more labels than the classes asked for, e.g. a too small ``model.num_labels``).
    """
    if labels.dim() < 3 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (B, 1, *spatial), got {tuple(labels.shape)}")
    check_one_hot_fits(num_classes, labels.numel(), labels.device, torch.finfo(dtype).bits // 8)
    index = labels.long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_classes):
        raise DataError(
            f"label maps hold label index {int(index.max())}, outside the {num_classes} classes "
            "of the one-hot map (a model's num_labels / num_classes below the data's labels?)"
        )
    out = torch.zeros(
        (labels.shape[0], num_classes, *labels.shape[2:]), dtype=dtype, device=labels.device
    )
    return out.scatter_(1, index, 1)


def warp_label_probabilities(
    labels: torch.Tensor, ddf: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Warp label indices ``(B, 1, *S)`` linearly as one-hot maps: ``(B, K, *S)`` probabilities.

    Differentiable in ``ddf`` (a label loss trains the field through it); the one-hot map is in
    ``ddf``'s dtype and within the memory budget (:func:`one_hot`).
    """
    return warp(one_hot(labels, num_classes, ddf.dtype), ddf)


def warp_labels(
    labels: torch.Tensor,
    ddf: torch.Tensor,
    mode: str = "nearest",
    table: LabelTable | None = None,
) -> torch.Tensor:
    """Warp an integer label map ``(B, 1, *S)`` of any values, never interpolating the values.

    The map goes through ``table`` (by default the values it holds, :meth:`LabelTable.from_maps`),
    is warped as indices, and the result is mapped back to the original values.

    Args:
        labels: original label values (non-negative integers).
        ddf: ``(B, ndim, *S)`` voxel displacements.
        mode: ``"nearest"`` samples the nearest label; ``"linear"`` warps the one-hot maps of the
            table's ``K`` classes linearly and takes the arg-max (TransMorph's evaluation), with
            memory of ``K`` maps, checked against the budget first.
        table: the label table; a value of ``labels`` missing from it is a :class:`DataError`.

    Returns:
        ``(B, 1, *S)`` int64 original values; outside the image, background 0.
    """
    if mode not in ("nearest", "linear"):
        raise ValueError(f"label warp mode must be 'nearest' or 'linear', got {mode!r}")
    table = LabelTable.from_maps(labels) if table is None else table
    index = table.encode(labels)
    if mode == "nearest":
        warped = warp(index.float(), ddf, mode="nearest").round().long()
    else:
        warped = warp_label_probabilities(index, ddf, table.num_classes).argmax(1, keepdim=True)
    return table.decode(warped)


def labels_around(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many labels each voxel's 3^ndim neighbourhood holds (itself included).

    ``labels``: label indices ``(B, 1, *S)`` in ``0 .. num_classes-1``. Returns ``(B, 1, *S)``
    int64: 1 inside a region, 2 or more on a boundary (3 or more: a junction).
    """
    maps = one_hot(labels, num_classes)
    pool = F.max_pool2d if maps.dim() == 4 else F.max_pool3d
    return pool(maps, 3, stride=1, padding=1).sum(1, keepdim=True).long()


def labelled_pairs(batch: Mapping[str, Any]) -> torch.Tensor | None:
    """Which pairs of a batch have both label maps, ``(B,)`` bool, from the flags
    ``moving_labelled`` / ``fixed_labelled`` of partially labelled data (the other pairs'
    maps are placeholders); ``None`` when the batch has no flags (every map is real)."""
    flags = [batch[k] for k in ("moving_labelled", "fixed_labelled") if k in batch]
    if not flags:
        return None
    rows = flags[0].bool()
    for flag in flags[1:]:
        rows = rows & flag.bool()
    return rows.flatten()


def region_table(
    regions: Sequence[Sequence[int]] | None, num_labels: int | None = None, *, name: str = "regions"
) -> torch.Tensor:
    """The region of each label index, ``(L,)`` int64, from the label indices of each region.

    ``regions[k]`` lists the labels of region ``k``; ``None`` gives one region per label (then
    ``num_labels`` is required). ``L`` is ``num_labels`` when given, else the largest listed label
    plus one. A :class:`~regzoo.errors.ConfigError` naming the setting ``name`` unless every label
    ``0 .. L-1`` is in exactly one region.
    """
    if regions is None:
        if num_labels is None:
            raise ValueError("region_table: give num_labels when regions is None")
        return torch.arange(num_labels)
    listed = [int(label) for group in regions for label in group]
    size = num_labels if num_labels is not None else max(listed, default=-1) + 1
    if any(not 0 <= label < size for label in listed) or len(set(listed)) != len(listed):
        raise ConfigError(
            f"{name} must hold each label index in [0, {size}) once, got "
            f"{[list(group) for group in regions]}"
        )
    missing = sorted(set(range(size)) - set(listed))
    if missing:
        raise ConfigError(f"{name} leave out label indices {missing}")
    table = torch.empty(size, dtype=torch.int64)
    for k, group in enumerate(regions):
        table[[int(label) for label in group]] = k
    return table
