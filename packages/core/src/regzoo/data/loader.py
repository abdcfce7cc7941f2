"""A DataLoader with seeded order, seeded workers and a collate that explains shape mismatches."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from ..errors import DataError

__all__ = ["make_loader", "collate"]


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``default_collate``, with a :class:`DataError` naming the files when sizes differ."""
    shapes = {tuple(item["fixed"].shape) for item in items if "fixed" in item}
    if len(shapes) > 1:
        names = ", ".join(str(item.get("fixed_path", "?")) for item in items)
        raise DataError(
            f"images of different sizes {sorted(shapes)} in one batch ({names}); "
            "set the dataset's size or use batch_size 1"
        )
    return default_collate(list(items))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    workers: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends on ``seed`` only.

    Args:
        dataset: a map-style dataset of batch-format dicts.
        batch_size: items per batch (per process when distributed).
        shuffle: shuffle each epoch (a generator seeded with ``seed``; with ``distributed``, a
            :class:`~torch.utils.data.DistributedSampler` seeded alike: call
            ``loader.sampler.set_epoch(e)`` for a new order per epoch).
        seed: seeds the order and the workers' NumPy/``random`` streams.
        workers: worker processes (0: load in the calling process).
        distributed: split the data between the processes of the default process group.
        drop_last: drop the last incomplete batch.
    """
    sampler = None
    generator = torch.Generator().manual_seed(int(seed))
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=int(seed), drop_last=drop_last)
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )
