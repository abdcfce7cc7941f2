"""Pairing strategies: which subject moves to which, shared by the synthetic and file datasets.

- ``random``: inter-subject pairs drawn at random (seeded per item), moving != fixed;
- ``atlas``: one subject (the atlas) is the fixed image of every pair, every other subject moves;
- ``all``: every ordered pair of distinct subjects, ``N (N - 1)`` pairs;
- ``intra``: two scans of the same subject (the synthetic data: same label map, two warps);
- ``paired``: the pairs a dataset lists (Learn2Reg's ``training_paired_images``).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .synth import seeded_generator

__all__ = ["PAIRINGS", "SPLITS", "split_id", "check_pairing", "natural_length", "pair_subjects"]

PAIRINGS: tuple[str, ...] = ("random", "atlas", "all", "intra", "paired")
SPLITS: tuple[str, ...] = ("train", "val", "test")


def split_id(split: str) -> int:
    """0, 1, 2 for ``train``, ``val``, ``test`` (used in seeds)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS.index(split)


def check_pairing(
    pairing: str, allowed: tuple[str, ...], num_subjects: int, atlas: int = 0
) -> None:
    """Raise :class:`ConfigError` unless ``pairing`` is one of ``allowed`` and fits ``num_subjects``."""
    if pairing not in allowed:
        raise ConfigError(f"pairing must be one of {', '.join(allowed)}, got {pairing!r}")
    need = 1 if pairing in ("intra", "paired") else 2
    if num_subjects < need:
        raise ConfigError(f"pairing {pairing!r} needs at least {need} subjects, got {num_subjects}")
    if pairing == "atlas" and not 0 <= atlas < num_subjects:
        raise ConfigError(f"atlas index {atlas} is not one of the {num_subjects} subjects")


def natural_length(pairing: str, num_subjects: int) -> int:
    """Number of distinct pairs: ``N`` (intra, random), ``N - 1`` (atlas), ``N (N - 1)`` (all)."""
    n = num_subjects
    return {"intra": n, "random": n, "paired": n, "atlas": n - 1, "all": n * (n - 1)}[pairing]


def pair_subjects(
    pairing: str, num_subjects: int, index: int, key: tuple[int, ...] = (), atlas: int = 0
) -> tuple[int, int]:
    """``(moving, fixed)`` subject indices of item ``index``.

    ``key`` seeds the draw of ``random`` pairs (with ``index``), so a pair is reproducible in any
    process. ``intra`` and ``paired`` return ``(s, s)`` with ``s = index mod N``.
    """
    n = num_subjects
    if pairing in ("intra", "paired"):
        s = index % n
        return s, s
    if pairing == "atlas":
        k = index % (n - 1)
        return (k if k < atlas else k + 1), atlas
    if pairing == "all":
        k = index % (n * (n - 1))
        a, r = divmod(k, n - 1)
        return a, (r if r < a else r + 1)
    if pairing == "random":
        g = seeded_generator(*key, 7, index)
        a = int(torch.randint(n, (), generator=g))
        b = int(torch.randint(n - 1, (), generator=g))
        return a, (b if b < a else b + 1)
    raise ConfigError(f"unknown pairing {pairing!r}; pairings: {', '.join(PAIRINGS)}")
