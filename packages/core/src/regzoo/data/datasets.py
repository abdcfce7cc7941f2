"""The embedded synthetic dataset ``synth``: registration pairs made on the fly.

Every item is a pure function of ``(seed, split, index)``, so DataLoader workers regenerate items
instead of holding arrays, and two runs with one seed see the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..labels import LabelTable, labels_around, region_table
from ..metrics.landmarks import sample_field
from ..registry import Paper, get_registry, register_dataset
from ..spatial import affine_inverse
from .pairs import check_pairing, natural_length, pair_subjects, split_id
from .synth import SynthMorphGenerator, seeded_generator

__all__ = ["SynthDataset", "SYNTHMORPH_2022", "DEFAULT_SUBJECTS", "DEFORMATIONS"]

SYNTHMORPH_2022 = Paper(
    "Hoffmann, Billot, Greve, Iglesias, Fischl, Dalca",
    "SynthMorph: learning contrast-invariant registration without acquired images",
    "IEEE TMI 41(3)",
    2022,
    "https://doi.org/10.1109/TMI.2021.3116879",
)

DEFAULT_SUBJECTS: dict[str, int] = {"train": 200, "val": 16, "test": 16}
DEFORMATIONS: tuple[str, ...] = ("smooth", "affine", "affine+smooth", "sliding")
_FRESH_LENGTH = 10_000


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, restoring the count after.

    The generator's tensors are small: extra threads only add synchronisation, which on a busy
    2-core machine cost 90 ms per 2D item against 7 ms on one thread (measured). DataLoader
    workers already run on one thread; this covers generation in the training process.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@register_dataset(
    "synth",
    summary="SynthMorph-style synthetic pairs: random label maps, warps and contrasts (no download).",
    paper=SYNTHMORPH_2022,
    tags=("2d", "3d", "synthetic", "multimodal", "labels"),
)
class SynthDataset(Dataset):
    """Seeded synthetic registration pairs with label maps, 2D or 3D.

    A population of subjects shares a template of ``num_labels`` Perlin images; a subject is the
    template under its own random diffeomorphism, a scan is a subject under one more random warp
    (``deformation``), rendered with a contrast (see :class:`~regzoo.data.synth.SynthMorphGenerator`).
    Each split has its own ``num_subjects`` subjects (seeded by split, so train, val and test never
    share one).

    Pairs (``pairing``): ``"intra"`` (default: two scans of one subject, the SynthMorph set-up of
    two warps of one label map, where the true correspondence is exact and a network learns
    quickly), ``"random"`` inter-subject pairs, ``"atlas"`` (subject 0 is the fixed image of every
    pair) and ``"all"`` ordered pairs.

    Draws: with ``fresh`` (default for ``train``) every item draws new scans (warps, noise and,
    when multimodal, contrasts) from its index: an unlimited stream, ``length`` items long. Without
    it (default for ``val``/``test``) each subject has fixed scans, so the split is a fixed set
    of pairs (``N`` intra, ``N - 1`` atlas, ``N (N - 1)`` all, ``N`` random pairs by default).

    Contrast: ``multimodal=False`` gives every image of a seed the same contrast (label means and
    stds and gamma: one "MR sequence"), with its own noise and bias field; ``multimodal=True``
    draws a new contrast for every scan (SynthMorph's training data), so moving and fixed differ.

    Calibration: the defaults (6 labels at Perlin scales 4 and 8, per-scan velocity std up to 6
    voxels at scale 16, bias std up to 0.1, 64x64) give a mean identity Dice of about 0.51 on
    held-out intra pairs, and a VoxelMorph-2 trained with MSE + 0.01 Grad (Adam 1e-3, batch 8)
    reaches 0.68-0.69 after 500 steps and 0.71 after 1000 (two seeds, 48 held-out pairs;
    0.67 after 600 steps at batch 4). Fewer, larger structures or the paper's 0.3 bias field
    learn markedly slower (e.g. 8 labels at scales 8 and 16 with bias 0.3: +0.06 in 500 steps).

    Items: ``moving``, ``fixed`` ``(1, *S)`` float32 in [0, 1]; ``moving_label``, ``fixed_label``
    ``(1, *S)`` int64 in ``[0, num_labels)``; ``spacing`` ``(ndim,)`` float32 ones (mm); with
    ``ground_truth``, ``true_ddf`` ``(ndim, *S)`` float32, the true displacement from the fixed
    grid to the moving one in voxels (``warp(moving, true_ddf)`` shows the fixed anatomy), and,
    when the moving scans have an affine, ``true_affine`` ``(ndim, ndim + 1)``, its inverse (the
    affine part of the true transform, on centred voxel coordinates as
    :func:`regzoo.spatial.affine_to_ddf` takes it); with ``mask_labels``, ``moving_mask``,
    ``fixed_mask`` ``(1, *S)`` bool (the voxels of those labels); with ``landmarks`` N > 0,
    ``fixed_landmarks`` ``(N, ndim)`` float32 voxel positions drawn (seeded by the fixed scan)
    among the label junctions of the fixed scan's mask (voxels whose neighbourhood holds three
    labels or more, as vessel bifurcations in lung CT; without ``mask_labels``: of its non-zero
    labels; where too few, label boundaries, then any voxel of the mask), and
    ``moving_landmarks`` the same points moved by the true transform, ``p + true_ddf(p)``
    (linear interpolation): the corresponding points in the moving image.

    Args:
        ndim: 2 or 3.
        size: spatial size, an int for every axis or a list.
        num_labels: labels of the label maps.
        num_subjects: subjects of this split: an int, or a mapping split -> int (splits it
            leaves out keep the default ``{"train": 200, "val": 16, "test": 16}``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        pairing: ``"intra"``, ``"random"``, ``"atlas"`` or ``"all"``.
        multimodal: a different contrast for every scan.
        deformation: ``"smooth"``, ``"affine"`` (moving scans get a random affine, fixed scans
            none), ``"affine+smooth"`` or ``"sliding"`` (intra pairs only: the fixed scan is the
            moving one with its ``regions`` sliding against each other, each moved by its own
            random diffeomorphism, then warped as a whole, so ``true_ddf`` is smooth inside each
            region of the fixed map and torn at region boundaries; both images then lie in
            ``[0.2, 1]``, tissue brighter than the zeros a region mask leaves; see
            :meth:`~regzoo.data.synth.SynthMorphGenerator.slide`).
        regions: with ``"sliding"``, the labels of each region, a list of lists covering every
            label once; ``None``: each label is its own region.
        slide_std: with ``"sliding"``, the maximal velocity std (voxels) of each region's own
            motion; ``deform_std`` is then that of the one smooth warp of the whole.
        deform_std: maximal standard deviation (voxels) of the per-scan velocity field; each scan
            draws its own in ``[0, deform_std]``.
        deform_scale: Perlin scale (downsampling factor of the noise grid) of the velocity field:
            the larger, the smoother.
        subject_std: the same for the subjects' anatomy (inter-subject differences).
        label_scales: Perlin scales of the label images: the larger, the bigger the structures.
        blur_std: Gaussian blur of the images (voxels).
        bias_std: maximal std of the log bias field (each image draws its own in ``[0, bias_std]``).
            SynthMorph uses 0.3; the default is 0.1 because the two images of a same-contrast
            pair have independent bias fields, which an MSE loss cannot tell from anatomy
            (measured with 8 labels: VoxelMorph-MSE gains 0.12 Dice in 500 steps with 0.1,
            0.06 with 0.3).
        gamma_std: std of the log gamma exponent.
        max_rotation: affine rotation range (degrees).
        scale_range: affine scaling range per axis.
        max_translation: affine translation range, a fraction of the size per axis.
        ground_truth: add ``true_ddf`` (and ``true_affine``) to every item.
        mask_labels: labels whose voxels make the masks ``moving_mask``/``fixed_mask``; ``None``:
            no masks.
        landmarks: corresponding landmark pairs per item; 0: none.
        labelled: partially labelled training data: only the first ``labelled`` subjects of the
            ``train`` split carry label maps (the few-label setting of joint registration and
            segmentation); the others' maps are zeros, and every item of that split says which
            are real with ``moving_labelled`` / ``fixed_labelled`` ``()`` bool. ``None``: every
            subject is labelled. Held-out splits stay labelled, for evaluation.
        length: number of items; default from ``pairing`` (fixed scans) or 10000 (fresh).
        fresh: draw new scans for every item; default True for train, False otherwise.
        seed: the population (template, contrasts, subjects).
    """

    def __init__(
        self,
        ndim: int = 2,
        size: int | Sequence[int] = 64,
        num_labels: int = 6,
        num_subjects: int | Mapping[str, int] | None = None,
        split: str = "train",
        pairing: str = "intra",
        multimodal: bool = False,
        deformation: str = "smooth",
        regions: Sequence[Sequence[int]] | None = None,
        slide_std: float = 3.0,
        deform_std: float = 6.0,
        deform_scale: float = 16.0,
        subject_std: float = 2.0,
        label_scales: Sequence[float] = (4.0, 8.0),
        blur_std: float = 1.0,
        bias_std: float = 0.1,
        gamma_std: float = 0.25,
        max_rotation: float = 30.0,
        scale_range: Sequence[float] = (0.8, 1.2),
        max_translation: float = 0.1,
        ground_truth: bool = True,
        mask_labels: Sequence[int] | None = None,
        landmarks: int = 0,
        labelled: int | None = None,
        length: int | None = None,
        fresh: bool | None = None,
        seed: int = 0,
    ) -> None:
        if ndim not in (2, 3):
            raise ConfigError(f"synth: ndim must be 2 or 3, got {ndim}")
        if deformation not in DEFORMATIONS:
            raise ConfigError(
                f"synth: deformation must be one of {', '.join(DEFORMATIONS)}, got {deformation!r}"
            )
        self.split = split
        self._split = split_id(split)
        if num_subjects is None or isinstance(num_subjects, Mapping):
            self.num_subjects = int({**DEFAULT_SUBJECTS, **(num_subjects or {})}[split])
        else:
            self.num_subjects = int(num_subjects)
        check_pairing(pairing, ("intra", "random", "atlas", "all"), self.num_subjects)
        if deformation == "sliding" and pairing != "intra":
            raise ConfigError(
                f"synth: deformation 'sliding' needs pairing 'intra', got {pairing!r}"
            )
        self.pairing = pairing
        self.sliding = deformation == "sliding"
        self.region_map = region_table(regions, num_labels, name="synth: regions")
        self.slide_std = float(slide_std)
        self.multimodal = bool(multimodal)
        self.deformation = deformation
        # per-scan warps for every scan, affines for moving scans only
        self.smooth = deformation != "affine"
        self.moving_affine = deformation in ("affine", "affine+smooth")
        self.ground_truth = bool(ground_truth)
        if mask_labels is not None and not all(0 <= int(v) < num_labels for v in mask_labels):
            raise ConfigError(
                f"synth: mask_labels must be labels in [0, {num_labels}), got {list(mask_labels)}"
            )
        if landmarks < 0:
            raise ConfigError(f"synth: landmarks must be 0 or more, got {landmarks}")
        self.mask_labels = None if mask_labels is None else [int(v) for v in mask_labels]
        self.landmarks = int(landmarks)
        self.labelled = None if labelled is None or split != "train" else int(labelled)
        if self.labelled is not None and not 0 <= self.labelled <= self.num_subjects:
            raise ConfigError(
                f"synth: labelled must be a number of training subjects in "
                f"[0, {self.num_subjects}], got {labelled}"
            )
        self.fresh = split == "train" if fresh is None else bool(fresh)
        natural = natural_length(pairing, self.num_subjects)
        self.length = (
            int(length)
            if length is not None
            else (max(natural, _FRESH_LENGTH) if self.fresh else natural)
        )
        self.generator = SynthMorphGenerator(
            ndim=ndim,
            size=size,
            num_labels=num_labels,
            label_scales=label_scales,
            blur_std=blur_std,
            bias_std=bias_std,
            gamma_std=gamma_std,
            subject_std=subject_std,
            deform_std=deform_std if deformation != "affine" else 0.0,
            deform_scales=deform_scale,
            max_rotation=max_rotation,
            scale_range=scale_range,
            max_translation=max_translation,
            seed=seed,
        )
        self.ndim = ndim
        self.shape = self.generator.shape
        self.num_labels = int(num_labels)

    @property
    def label_table(self) -> LabelTable:
        """Labels ``0 .. num_labels-1``: the label maps are their own table indices."""
        return LabelTable(range(self.num_labels))

    def __len__(self) -> int:
        return self.length

    def scan_keys(self, index: int) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, ...]]:
        """``((moving_subject, fixed_subject), moving_key, fixed_key)`` of item ``index``."""
        m, f = pair_subjects(
            self.pairing, self.num_subjects, index, (self.generator.seed, self._split)
        )
        if self.fresh:
            m_key = (self._split, m, 1, index, 0)
            f_key = (self._split, f, 1, index, 1)
        else:
            m_key = (self._split, m, 0, 0)
            f_key = (self._split, f, 0, 1 if self.pairing == "intra" else 0)
        if self.pairing == "atlas":
            f_key = (self._split, f, 0, 0)
        return (m, f), m_key, f_key

    def contrast_key(self, key: tuple[int, ...], moving: bool) -> tuple[int, ...]:
        """Key of the contrast of a scan: the scan's own when multimodal, else one per seed."""
        return key if self.multimodal else (0,)

    def _scan(
        self, subject: int, key: tuple[int, ...], moving: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = self.generator
        labels = gen.labels(
            self._split, subject, key, smooth=self.smooth, affine=moving and self.moving_affine
        )
        image = gen.render(labels, gen.contrast(self.contrast_key(key, moving)), key)
        return image, labels[None]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(
                f"synth {self.split}: index {index} out of range ({self.length} items)"
            )
        index %= self.length
        (m, f), m_key, f_key = self.scan_keys(index)
        gen = self.generator
        with single_thread():
            moving, moving_label = self._scan(m, m_key, moving=True)
            if self.sliding:
                labels, true_ddf = gen.slide(
                    moving_label[0], f_key, self.region_map, self.slide_std
                )
                contrast = gen.contrast(self.contrast_key(f_key, moving=False))
                fixed, fixed_label = gen.render(labels, contrast, f_key), labels[None]
                # every region brighter than the zeros a region mask leaves (tissue, not air)
                moving, fixed = 0.2 + 0.8 * moving, 0.2 + 0.8 * fixed
            else:
                fixed, fixed_label = self._scan(f, f_key, moving=False)
            item = {
                "moving": moving,
                "fixed": fixed,
                "moving_label": moving_label,
                "fixed_label": fixed_label,
                "spacing": torch.ones(self.ndim, dtype=torch.float32),
            }
            if self.mask_labels is not None:
                item["moving_mask"] = self._mask(moving_label)
                item["fixed_mask"] = self._mask(fixed_label)
            if (self.ground_truth or self.landmarks) and not self.sliding:
                true_ddf = gen.true_field(
                    self._split, (m, m_key), (f, f_key), self.smooth, self.moving_affine
                )
            if self.ground_truth:
                item["true_ddf"] = true_ddf
                if self.moving_affine:
                    item["true_affine"] = affine_inverse(gen.affine(m_key)[None])[0]
            if self.landmarks:
                inside = item["fixed_mask"] if self.mask_labels is not None else fixed_label != 0
                points = self._landmark_points(fixed_label[0], inside[0], f_key)
                item["fixed_landmarks"] = points
                item["moving_landmarks"] = points + sample_field(true_ddf[None], points[None])[0]
            if self.labelled is not None:
                for side, subject in (("moving", m), ("fixed", f)):
                    item[f"{side}_labelled"] = torch.tensor(subject < self.labelled)
                    if subject >= self.labelled:
                        item[f"{side}_label"] = torch.zeros_like(item[f"{side}_label"])
        return item

    def _mask(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.isin(labels, torch.tensor(self.mask_labels))

    def _landmark_points(
        self, labels: torch.Tensor, inside: torch.Tensor, key: tuple[int, ...]
    ) -> torch.Tensor:
        """``landmarks`` voxel positions ``(N, ndim)``, drawn from the fixed scan's ``key``: label
        junctions (3+ labels among the voxel's 3^ndim neighbours) in ``inside``; where fewer than
        N, label boundaries (2+), then every voxel of ``inside`` (of the image, if empty)."""
        count = labels_around(labels[None, None], self.num_labels)[0, 0]
        for least in (3, 2, 1):
            region = inside & (count >= least)
            if int(region.sum()) >= self.landmarks:
                break
        candidates = region.nonzero() if bool(region.any()) else torch.ones_like(inside).nonzero()
        g = seeded_generator(self.generator.seed, 9, *key)
        if len(candidates) >= self.landmarks:
            chosen = torch.randperm(len(candidates), generator=g)[: self.landmarks]
        else:
            chosen = torch.randint(len(candidates), (self.landmarks,), generator=g)
        return candidates[chosen].float()


# Named set-ups of the same generator, for methods made for hard pairs (cascades, pyramids, an
# affine stage in front of a deformable one).
get_registry("dataset").variant(
    "synth-large",
    "synth",
    summary="synth with large warps: every pair moves some voxel by 10+ voxels (velocity std 12).",
    deform_std=12.0,
)
get_registry("dataset").variant(
    "synth-unaligned",
    "synth",
    summary="synth pairs not pre-aligned: moving scans rotated up to 15 deg, shifted up to 10% "
    "of the size, scaled 0.9-1.1.",
    deformation="affine+smooth",
    max_rotation=15.0,
    max_translation=0.1,
    scale_range=[0.9, 1.1],
)
get_registry("dataset").variant(
    "synth-lung",
    "synth",
    summary="synth for lung-like registration: few large structures, masks of two of them "
    "('lungs'), 100 landmark pairs from the true transform.",
    num_labels=4,
    label_scales=[8.0, 16.0],
    deform_std=8.0,
    mask_labels=[1, 2],
    landmarks=100,
)
get_registry("dataset").variant(
    "synth-sliding",
    "synth",
    summary="synth whose four labels are regions sliding against each other: the true field is "
    "smooth inside each region and torn at their boundaries.",
    num_labels=4,
    label_scales=[8.0, 16.0],
    deformation="sliding",
    slide_std=3.0,
)
