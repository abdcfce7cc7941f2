"""The training data stream: a step-indexed batch sampler, the loader and a collate that explains.

The items of training step ``s`` are a pure function of ``(seed, s)`` (:class:`StepSampler`), and
every dataset item is a pure function of its index, so the batches do not depend on the number of
worker processes, and a resumed run starts the stream at its step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..errors import ConfigError, DataError

__all__ = ["StepSampler", "make_loader", "collate"]


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


class StepSampler(Sampler[list[int]]):
    """The indices of the items of steps ``start`` to ``stop - 1``, one list per step.

    The stream is a fixed sequence of seeded epoch permutations of the ``n`` items; step ``s``
    takes the next ``batch_size`` of them. In a distributed run the global batch is
    ``batch_size * world_size`` consecutive items of the stream and rank ``r`` takes its own
    slice, so N processes see the same items as one process with the combined batch.

    Args:
        n: number of items in the dataset.
        batch_size: items per step (per process when distributed).
        seed: seeds the permutations.
        rank, world_size: this process's rank and the number of processes.
        start, stop: the steps to yield (``stop=None``: none; set it before iterating).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        if n == 0:
            raise ConfigError("the training split of the dataset is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start, self.stop = start, start if stop is None else stop
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def indices(self, step: int) -> list[int]:
        """The dataset indices of this rank's items at ``step``."""
        start = (step * self.world_size + self.rank) * self.batch_size
        return [
            int(self._permutation(pos // self.n)[pos % self.n])
            for pos in range(start, start + self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    sampler: Sampler[list[int]],
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    prefetch: int = 2,
) -> DataLoader:
    """A DataLoader over the batches ``sampler`` yields, collated by :func:`collate`.

    Args:
        dataset: a map-style dataset of batch-format dicts (docs/conventions.md).
        sampler: a batch sampler (lists of indices), e.g. :class:`StepSampler`.
        workers: worker processes that load and collate ahead of the training loop (0: load in
            the calling process, when the batch is needed).
        seed: seeds the workers' torch, NumPy and ``random`` streams through a generator of the
            loader's own, so iterating never draws from the caller's global torch generator.
        pin_memory: page-lock batches for faster copies to a CUDA device.
        prefetch: batches each worker prepares ahead (with ``workers`` > 0).
    """
    workers = int(workers)
    if workers < 0:
        raise ConfigError(f"train.workers must be >= 0, got {workers}")
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed)),
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers > 0 else None,
    )
