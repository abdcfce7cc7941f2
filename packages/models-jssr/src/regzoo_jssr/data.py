"""Multimodal pairs for JSSR: one modality moves, another is fixed.

JSSR registers scans of two *modalities* (CT phases in the paper): every moving image is in the
source modality, every fixed image in the target modality, and the segmentor is supervised in the
target modality only. Two datasets give such pairs:

- ``synth-two-contrast``: core's ``synth`` with ``multimodal=True`` meaning "one contrast per
  role". Core's ``synth`` offers one contrast for all images (``multimodal=False``) or a new
  contrast for every scan (``multimodal=True``, SynthMorph's training data), where no image
  belongs to a modality. Here all moving scans share one random contrast (label means, stds and
  gamma) and all fixed scans another, each scan keeping its own noise, bias field and warps. With
  ``multimodal=False`` it is ``synth`` unchanged.
- ``folder-multimodal``: core's ``folder`` whose files say their modality in their name
  (``<subject>_<modality>.nii.gz``), paired moving-modality to fixed-modality.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from regzoo import register_dataset
from regzoo.data import FolderDataset
from regzoo.data.datasets import SYNTHMORPH_2022, SynthDataset
from regzoo.data.files import IMAGE_EXTENSIONS
from regzoo.errors import ConfigError, DataError

__all__ = [
    "TwoContrastSynth",
    "ModalityFolderDataset",
    "MOVING_CONTRAST",
    "FIXED_CONTRAST",
    "MODALITY_PAIRINGS",
    "subject_and_modality",
]

# Contrast keys of the two modalities; core's single-contrast data uses key (0,).
MOVING_CONTRAST = (1,)
FIXED_CONTRAST = (2,)

MODALITY_PAIRINGS = ("paired", "all")


@register_dataset(
    "synth-two-contrast",
    summary="synth with one contrast per modality: moving scans in one, fixed scans in another.",
    paper=SYNTHMORPH_2022,
    tags=("2d", "3d", "synthetic", "multimodal", "labels"),
)
class TwoContrastSynth(SynthDataset):
    """:class:`~regzoo.data.SynthDataset` whose ``multimodal`` pairs have one contrast per role.

    Arguments are those of ``synth``; with ``multimodal=True`` the moving images are all in one
    contrast and the fixed images all in another (the population's ``seed`` draws both).
    """

    def contrast_key(self, key: tuple[int, ...], moving: bool) -> tuple[int, ...]:
        """One contrast per role when ``multimodal``: moving scans share one, fixed scans another."""
        if not self.multimodal:
            return super().contrast_key(key, moving)
        return MOVING_CONTRAST if moving else FIXED_CONTRAST


def subject_and_modality(path: str) -> tuple[str, str]:
    """``("case01", "ven")`` for ``.../case01_ven.nii.gz``: the modality follows the last ``_``."""
    name = os.path.basename(path)
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    subject, sep, modality = name.rpartition("_")
    if not sep or not subject or not modality:
        raise DataError(f"{path}: expected a file named <subject>_<modality> (e.g. case01_ven)")
    return subject, modality


@register_dataset(
    "folder-multimodal",
    summary="NIfTI files with a modality per file (<subject>_<modality>): one modality to another.",
    tags=("2d", "3d", "files", "labels", "multimodal"),
)
class ModalityFolderDataset(FolderDataset):
    """Pairs of a ``folder`` whose files carry their modality: moving in one, fixed in another.

    Files are named ``<subject>_<modality>`` (``case01_art.nii.gz``, ``case01_ven.nii.gz``), in
    either layout of ``folder`` (``images/`` + ``labels/`` with the same names, or flat with label
    maps ``<image><label_suffix>``, e.g. ``case01_ven_seg.nii.gz``), per split folder
    (``root/<split>/``) or one folder for every split. Label maps are optional per file: JSSR's
    segmentor is supervised by the fixed modality's maps only, so the moving modality may have
    none (its missing maps are zeros, as in ``folder``).

    Pairs (``pairing``): ``"paired"`` (default: every subject's moving-modality scan to its own
    fixed-modality scan, JSSR's intra-patient multi-phase alignment) or ``"all"`` (every
    moving-modality scan to every fixed-modality scan).

    Args:
        root: the folder.
        moving_modality: modality of the moving images (``"art"``).
        fixed_modality: modality of the fixed images (``"ven"``).
        pairing: ``"paired"`` or ``"all"``.
        split, label_suffix, length, normalize, percentiles, clip, spacing, size, pad_multiple,
            cache_size: see :class:`~regzoo.data.FolderDataset`.
    """

    def __init__(
        self,
        root: str,
        moving_modality: str,
        fixed_modality: str,
        split: str = "train",
        pairing: str = "paired",
        label_suffix: str = "_seg",
        length: int | None = None,
        normalize: str = "percentile",
        percentiles: Sequence[float] = (0.5, 99.5),
        clip: Sequence[float] | None = None,
        spacing: float | Sequence[float] | None = None,
        size: int | Sequence[int] | None = None,
        pad_multiple: int | None = 16,
        cache_size: int = 8,
    ) -> None:
        if pairing not in MODALITY_PAIRINGS:
            raise ConfigError(
                f"folder-multimodal: pairing must be one of {', '.join(MODALITY_PAIRINGS)}, "
                f"got {pairing!r}"
            )
        if moving_modality == fixed_modality:
            raise ConfigError(f"folder-multimodal: both modalities are {moving_modality!r}")
        super().__init__(
            root,
            split,
            "all",
            0,
            label_suffix,
            length,
            normalize,
            percentiles,
            clip,
            spacing,
            size,
            pad_multiple,
            cache_size,
        )
        by_modality: dict[str, dict[str, Any]] = {}
        for scan in self.scans:
            subject, modality = subject_and_modality(scan.image)
            by_modality.setdefault(modality, {})[subject] = scan
        for modality in (moving_modality, fixed_modality):
            if modality not in by_modality:
                raise DataError(
                    f"{self.describe()}: no {modality!r} images (modalities found: "
                    f"{', '.join(sorted(by_modality))})"
                )
        moving, fixed = by_modality[moving_modality], by_modality[fixed_modality]
        if pairing == "paired":
            subjects = sorted(set(moving) & set(fixed))
            if not subjects:
                raise DataError(
                    f"{self.describe()}: no subject has both a {moving_modality!r} and a "
                    f"{fixed_modality!r} image"
                )
            pairs = [(moving[s], fixed[s]) for s in subjects]
        else:
            pairs = [(moving[a], fixed[b]) for a in sorted(moving) for b in sorted(fixed)]
        self.scans = [*moving.values(), *fixed.values()]
        index = {scan: i for i, scan in enumerate(self.scans)}
        self.pairs = [(index[m], index[f]) for m, f in pairs]
        self.pairing = pairing
        self.moving_modality, self.fixed_modality = moving_modality, fixed_modality
        self._finish_setup()
