"""The synthetic dataset ``synth-lesion``: pairs in which one image holds a lesion.

A stand-in for registering a scan with a tumour to one without (or before and after a lesion
appears): :class:`~regzoo.data.datasets.SynthDataset` pairs where, per pair, one image (moving or
fixed, drawn per pair) gets a bright disc (a ball in 3D) that covers the anatomy beneath it and
has no counterpart in the other image. Its voxels take the extra label ``num_labels`` in that
image's label map, so a method can learn to find it and registration can be scored outside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..labels import LabelTable
from ..registry import register_dataset
from .datasets import SYNTHMORPH_2022, SynthDataset
from .synth import seeded_generator

__all__ = ["SynthLesionDataset"]


@register_dataset(
    "synth-lesion",
    summary="synth pairs where one image (moving or fixed, per pair) holds a bright lesion with no "
    "counterpart in the other; label num_labels marks it.",
    paper=SYNTHMORPH_2022,
    tags=("2d", "3d", "synthetic", "labels", "pathology"),
)
class SynthLesionDataset(SynthDataset):
    """:class:`SynthDataset` pairs with a one-sided lesion.

    Per item, drawn from its index and the seed: the image that holds the lesion (moving or
    fixed, each half of the items), its centre (a voxel of a non-zero label of that image) and
    its radius (uniform in ``[lesion_radius / 2, lesion_radius]`` voxels). Inside, the image is
    ``lesion_intensity`` and the label map ``num_labels`` (the lesion label; the label table is
    ``0 .. num_labels``). ``true_ddf`` is the anatomy's true field, unchanged by the lesion.

    Args:
        lesion_radius: the largest lesion radius, voxels.
        lesion_intensity: the lesion's intensity (images lie in ``[0, 1]``).
        Others: as :class:`SynthDataset`.
    """

    def __init__(
        self,
        ndim: int = 2,
        size: int | Sequence[int] = 64,
        num_labels: int = 6,
        num_subjects: int | Mapping[str, int] | None = None,
        split: str = "train",
        pairing: str = "random",
        multimodal: bool = False,
        lesion_radius: float = 8.0,
        lesion_intensity: float = 1.0,
        deform_std: float = 6.0,
        label_scales: Sequence[float] = (4.0, 8.0),
        ground_truth: bool = True,
        length: int | None = None,
        fresh: bool | None = None,
        seed: int = 0,
    ) -> None:
        if not lesion_radius >= 1:
            raise ConfigError(
                f"synth-lesion: lesion_radius must be >= 1 voxel, got {lesion_radius}"
            )
        super().__init__(
            ndim=ndim,
            size=size,
            num_labels=num_labels,
            num_subjects=num_subjects,
            split=split,
            pairing=pairing,
            multimodal=multimodal,
            deform_std=deform_std,
            label_scales=label_scales,
            ground_truth=ground_truth,
            length=length,
            fresh=fresh,
            seed=seed,
        )
        self.lesion_radius, self.lesion_intensity = float(lesion_radius), float(lesion_intensity)

    @property
    def lesion_label(self) -> int:
        """The label (and table index) of lesion voxels: ``num_labels``."""
        return self.num_labels

    @property
    def label_table(self) -> LabelTable:
        """Labels ``0 .. num_labels``: the anatomy's and the lesion's."""
        return LabelTable(range(self.num_labels + 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        index %= self.length
        g = seeded_generator(self.generator.seed, 11, self._split, index)
        side = "moving" if bool(torch.rand((), generator=g) < 0.5) else "fixed"
        labels = item[f"{side}_label"][0]
        candidates = (labels != 0).nonzero()
        centre = candidates[torch.randint(len(candidates), (), generator=g)].float()
        radius = self.lesion_radius * (0.5 + 0.5 * float(torch.rand((), generator=g)))
        axes = torch.meshgrid(
            *[torch.arange(n, dtype=torch.float32) for n in self.shape], indexing="ij"
        )
        inside = sum((a - c) ** 2 for a, c in zip(axes, centre)) <= radius**2
        item[side] = torch.where(inside, torch.tensor(self.lesion_intensity), item[side])
        item[f"{side}_label"] = torch.where(inside, self.lesion_label, item[f"{side}_label"])
        return item
