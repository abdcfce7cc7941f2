"""The synthetic dataset ``synth-organs``: a labelled template and subjects with small organs.

A stand-in for head-and-neck CT with organs at risk (OARs): a few large structures (the Perlin
label maps of :mod:`regzoo.data.synth`) and several small organs, blobs a few voxels across at
fixed places of the population template (as the optic nerves, chiasm and pituitary lie between
larger structures). The organs are extra channels of the template's label images, so every
subject and scan carries them through its own warps, as its large structures.

Pairs are atlas-to-subject: the *template* (the population's label map itself, no warp, one
rendering) is the moving image of every pair, a subject's scan the fixed image. Both label maps
come with every item: the template's is what an atlas method warps; the subject's is for
supervised training (a Dice between the warped template labels and the subject's labels) and
for evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import ConfigError
from ..registry import register_dataset
from .datasets import SYNTHMORPH_2022, SynthDataset, single_thread
from .synth import SynthMorphGenerator, perlin_noise, seeded_generator

__all__ = ["OrganGenerator", "SynthOrgansDataset", "ORGAN_CENTRES", "ORGAN_RADII"]

#: Centres of the small organs, fractions of the size per axis (2D uses the first two).
ORGAN_CENTRES: tuple[tuple[float, float, float], ...] = (
    (0.40, 0.35, 0.50),
    (0.40, 0.65, 0.50),
    (0.50, 0.50, 0.50),
    (0.62, 0.50, 0.45),
)
#: Radii of the small organs, fractions of the mean size (64: 2.9, 2.9, 2.2 and 1.9 voxels).
ORGAN_RADII: tuple[float, ...] = (0.045, 0.045, 0.035, 0.03)
# Height of an organ's channel at its centre: far above the Perlin images (std about 1.4), so
# the organ wins the arg-max out to almost its radius.
_ORGAN_HEIGHT = 50.0
# Key of the template's rendering (scan keys have 4 or 5 entries, so none collides).
_TEMPLATE_KEY = (0,)


class OrganGenerator(SynthMorphGenerator):
    """A :class:`SynthMorphGenerator` whose last ``len(radii)`` labels are small organs.

    Built from ``base`` (every setting but the template is the base's): the template's first
    ``num_labels - len(radii)`` images are Perlin images as the base draws them, and organ ``j``'s
    image is ``50 (1 - (d / r_j)^2)``, ``d`` the distance (voxels) to its centre ``c_j`` and
    ``r_j = radii[j] * mean(size)``: a paraboloid that wins the arg-max over the Perlin images
    within about ``r_j`` of ``c_j`` and is warped with them.

    Args:
        base: the generator whose settings (size, warps, image model, seed) are taken.
        centres: per organ, its centre as fractions of the size per axis (``ndim`` or more
            entries; the first ``ndim`` are used).
        radii: per organ, its radius as a fraction of the mean size.
    """

    def __init__(
        self,
        base: SynthMorphGenerator,
        centres: Sequence[Sequence[float]] = ORGAN_CENTRES,
        radii: Sequence[float] = ORGAN_RADII,
    ) -> None:
        if len(centres) != len(radii):
            raise ValueError(f"{len(centres)} organ centres for {len(radii)} radii")
        if base.num_labels - len(radii) < 2:
            raise ValueError(
                f"{base.num_labels} labels leave fewer than 2 large structures for "
                f"{len(radii)} organs"
            )
        super().__init__(**base.settings)
        self.centres = [tuple(float(c) for c in centre[: base.ndim]) for centre in centres]
        self.radii = [float(r) for r in radii]

    @property
    def num_organs(self) -> int:
        """The number of small organs (the last labels)."""
        return len(self.radii)

    @property
    def template(self) -> torch.Tensor:
        """``(num_labels, *S)``: the structures' Perlin images, then the organs' paraboloids."""
        if self._template is None:
            g = seeded_generator(self.seed, 0)
            structures = self.num_labels - self.num_organs
            noise = perlin_noise(self.shape, self.label_scales, 1.0, g, structures, modulate=False)
            axes = torch.meshgrid(
                *[torch.arange(n, dtype=torch.float32) for n in self.shape], indexing="ij"
            )
            mean_size = sum(self.shape) / len(self.shape)
            organs = []
            for centre, radius in zip(self.centres, self.radii):
                d2 = sum((a - c * (n - 1)) ** 2 for a, c, n in zip(axes, centre, self.shape))
                organs.append(_ORGAN_HEIGHT * (1 - d2 / (radius * mean_size) ** 2))
            self._template = torch.cat([noise, torch.stack(organs)])
        return self._template


@register_dataset(
    "synth-organs",
    summary="Atlas-to-subject pairs with small organs: a labelled template (moving) and subject "
    "scans (fixed) with large structures and 4 small blobs.",
    paper=SYNTHMORPH_2022,
    tags=("2d", "3d", "synthetic", "labels", "atlas"),
)
class SynthOrgansDataset(SynthDataset):
    """Template-to-subject pairs with large structures and small organs, 2D or 3D.

    The population (:class:`OrganGenerator`): ``num_structures`` large Perlin structures (label
    ``0`` is one of them, the "background") and the small organs of ``centres``/``radii`` as
    labels ``num_structures ...``. The *template* is the population's label map itself, rendered
    once: the moving image of every item. Item ``i``'s fixed image is a scan of subject
    ``i mod N`` of the split: its anatomy (``subject_std``) and a per-scan warp
    (``deform_std``), as :class:`SynthDataset` draws them (``fresh``: a new scan warp per item).
    One contrast for every image of a seed.

    Calibration (2D 64x64, defaults): the organs cover 24, 24, 16 and 12 voxels in the template
    and their identity Dice on held-out pairs is 0.47, 0.57, 0.29 and 0.35 (the true field: 0.8
    and more); an item takes about 2 ms on one CPU thread.

    Items: ``moving``, ``fixed`` ``(1, *S)`` float32 in [0, 1]; ``moving_label`` (the template's)
    and ``fixed_label`` (the subject scan's) ``(1, *S)`` int64 in ``[0, num_labels)``;
    ``spacing`` ``(ndim,)`` ones; with ``ground_truth``, ``true_ddf`` ``(ndim, *S)``, the true
    displacement from the fixed grid to the template's (voxels).

    Args:
        ndim: 2 or 3.
        size: spatial size, an int for every axis or a list.
        num_structures: large structures (labels ``0 .. num_structures - 1``).
        centres: per small organ, its centre as fractions of the size per axis.
        radii: per small organ, its radius as a fraction of the mean size.
        num_subjects: subjects of this split (an int, or a mapping split -> int).
        split: ``"train"``, ``"val"`` or ``"test"``.
        deform_std, deform_scale, subject_std, label_scales, blur_std, bias_std, gamma_std:
            as :class:`SynthDataset`.
        ground_truth: add ``true_ddf``.
        length: number of items; default ``N`` (fixed scans) or 10000 (fresh).
        fresh: a new scan per item; default True for train.
        seed: the population.
    """

    def __init__(
        self,
        ndim: int = 2,
        size: int | Sequence[int] = 64,
        num_structures: int = 4,
        centres: Sequence[Sequence[float]] = ORGAN_CENTRES,
        radii: Sequence[float] = ORGAN_RADII,
        num_subjects: int | Mapping[str, int] | None = None,
        split: str = "train",
        deform_std: float = 6.0,
        deform_scale: float = 16.0,
        subject_std: float = 2.0,
        label_scales: Sequence[float] = (8.0, 16.0),
        blur_std: float = 1.0,
        bias_std: float = 0.1,
        gamma_std: float = 0.25,
        ground_truth: bool = True,
        length: int | None = None,
        fresh: bool | None = None,
        seed: int = 0,
    ) -> None:
        if len(centres) != len(radii) or not radii:
            raise ConfigError(
                f"synth-organs: centres ({len(centres)}) and radii ({len(radii)}) must list the "
                "same organs, at least one"
            )
        if any(len(c) < ndim for c in centres):
            raise ConfigError(f"synth-organs: every organ centre needs {ndim} fractions")
        if num_structures < 2:
            raise ConfigError(f"synth-organs: num_structures must be >= 2, got {num_structures}")
        super().__init__(
            ndim=ndim,
            size=size,
            num_labels=num_structures + len(radii),
            num_subjects=num_subjects,
            split=split,
            pairing="intra",
            deform_std=deform_std,
            deform_scale=deform_scale,
            subject_std=subject_std,
            label_scales=label_scales,
            blur_std=blur_std,
            bias_std=bias_std,
            gamma_std=gamma_std,
            ground_truth=ground_truth,
            length=length,
            fresh=fresh,
            seed=seed,
        )
        self.generator = OrganGenerator(self.generator, centres, radii)
        self.num_structures = int(num_structures)
        self._template_scan: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def organ_labels(self) -> list[int]:
        """The small organs' labels, ``num_structures ... num_labels - 1``."""
        return list(range(self.num_structures, self.num_labels))

    def template_scan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The template's image ``(1, *S)`` and label map ``(1, *S)`` (computed once)."""
        if self._template_scan is None:
            gen = self.generator
            with single_thread():
                labels = gen.scan_labels(torch.zeros((self.ndim, *self.shape)))
                image = gen.render(labels, gen.contrast((0,)), _TEMPLATE_KEY)
            self._template_scan = image, labels[None]
        return self._template_scan

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(
                f"synth-organs {self.split}: index {index} out of range ({self.length} items)"
            )
        index %= self.length
        (_, subject), _, key = self.scan_keys(index)
        moving, moving_label = self.template_scan()
        with single_thread():
            fixed, fixed_label = self._scan(subject, key, moving=False)
            item = {
                "moving": moving,
                "fixed": fixed,
                "moving_label": moving_label,
                "fixed_label": fixed_label,
                "spacing": torch.ones(self.ndim, dtype=torch.float32),
            }
            if self.ground_truth:
                item["true_ddf"] = self.generator.scan_transform(self._split, subject, key)
        return item
