"""SynthMorph's generator of label maps and images.

Hoffmann, Billot, Greve, Iglesias, Fischl, Dalca, "SynthMorph: learning contrast-invariant
registration without acquired images", IEEE TMI 41(3), 2022 (official script
``voxelmorph/scripts/tf/train_synthmorph.py``). The pieces, each a function of an explicit
``torch.Generator`` so that an item is a pure function of its seed:

- :func:`perlin_noise`: Gaussian noise drawn on coarse grids (one per scale, a scale being the
  grid's downsampling factor), linearly upsampled and summed; each scale's standard deviation is
  drawn uniformly in ``[0, std]`` (the paper's "modulated" Perlin noise).
- Label maps ("shapes"): the arg-max over ``J`` Perlin images.
- :func:`random_velocity` / :func:`random_diffeomorphism`: a Perlin stationary velocity field,
  integrated by scaling and squaring at half resolution.
- :func:`random_affine`: rotation, anisotropic scaling and translation in centred voxel coordinates.
- :func:`labels_to_image`: a Gaussian intensity per label, blur, a multiplicative bias field
  ``exp(Perlin)``, min-max normalisation and a gamma ``exp(N(0, gamma_std))``.
- :meth:`SynthMorphGenerator.slide`: regions of a label map moving against each other, each by its
  own diffeomorphism (a field smooth inside each region and torn at region boundaries; ours, for
  methods made for sliding organs).

:class:`SynthMorphGenerator` combines them into subjects and scans; the registered ``synth``
dataset (:mod:`regzoo.data.datasets`) turns scans into registration pairs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..spatial import affine_inverse, affine_to_ddf, integrate_velocity, resize_field, warp

__all__ = [
    "seeded_generator",
    "perlin_noise",
    "random_velocity",
    "random_diffeomorphism",
    "random_affine",
    "rotation_matrix",
    "gaussian_blur",
    "Contrast",
    "random_contrast",
    "labels_to_image",
    "SynthMorphGenerator",
]


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of non-negative integers (independent streams per key).

    The key is hashed with NumPy's ``SeedSequence``, so the stream does not depend on the process
    (Python's ``hash`` does) and items can be regenerated in any DataLoader worker.
    """
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _uniform(g: torch.Generator, low: float, high: float, size: Sequence[int] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(size), generator=g)


def perlin_noise(
    shape: Sequence[int],
    scales: float | Sequence[float],
    std: float,
    generator: torch.Generator,
    channels: int = 1,
    modulate: bool = True,
) -> torch.Tensor:
    """Smooth noise ``(channels, *shape)``: a sum over scales of upsampled coarse Gaussian noise.

    Args:
        shape: spatial size.
        scales: downsampling factor(s): the noise is drawn on ``ceil(size / scale)`` points per
            axis (at least 2) and upsampled linearly, corner points on the image corners
            (SynthMorph's convention). The larger, the smoother.
        std: standard deviation of the coarse noise; with ``modulate`` each scale (and channel)
            draws its own in ``[0, std]``, as SynthMorph does.
        generator: the random stream.
        channels: independent noise images.
        modulate: draw the standard deviation per scale and channel.
    """
    shape = tuple(int(s) for s in shape)
    scales = [scales] if isinstance(scales, (int, float)) else list(scales)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    out = torch.zeros((1, channels, *shape))
    for scale in scales:
        coarse = tuple(max(2, math.ceil(s / float(scale))) for s in shape)
        noise = torch.randn((1, channels, *coarse), generator=generator)
        if modulate:
            sd = std * torch.rand((1, channels) + (1,) * len(shape), generator=generator)
        else:
            sd = torch.full((1, channels) + (1,) * len(shape), float(std))
        out += F.interpolate(noise * sd, size=shape, mode=mode, align_corners=True)
    return out[0]


def random_velocity(
    shape: Sequence[int], std: float, scales: float | Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """A Perlin stationary velocity field ``(ndim, *shape)`` in voxel units (std in voxels)."""
    return perlin_noise(shape, scales, std, generator, channels=len(shape))


def random_diffeomorphism(
    shape: Sequence[int],
    std: float,
    scales: float | Sequence[float],
    generator: torch.Generator,
    steps: int = 5,
    inverse: bool = False,
) -> torch.Tensor:
    """Displacement ``(ndim, *shape)`` (voxels) of exp(v) for a Perlin velocity ``v``, or of its
    inverse exp(-v) (``inverse``: the same draw from an equally seeded ``generator``).

    ``v`` is drawn and integrated (``steps`` squarings, SynthMorph's 5) at half resolution, then
    upsampled with :func:`regzoo.spatial.resize_field`, which rescales the values; the field is
    smooth at the coarsest scale anyway, and this is 2**ndim times cheaper than at full size.
    """
    shape = tuple(int(s) for s in shape)
    if std <= 0:
        return torch.zeros((len(shape), *shape))
    half = tuple(max(2, (s + 1) // 2) for s in shape)
    factor = sum((h - 1) / (s - 1) for h, s in zip(half, shape)) / len(shape)  # about 1/2
    half_scales = [scales] if isinstance(scales, (int, float)) else list(scales)
    v = random_velocity(half, std * factor, [s * factor for s in half_scales], generator)
    u = integrate_velocity(-v[None] if inverse else v[None], steps)
    return resize_field(u, shape)[0]


def rotation_matrix(angles: torch.Tensor, axis: torch.Tensor | None = None) -> torch.Tensor:
    """A rotation: 2D from one angle (radians); 3D from an angle about a unit ``axis`` (Rodrigues)."""
    c, s = torch.cos(angles), torch.sin(angles)
    if axis is None:
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    x, y, z = axis
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return torch.eye(3) + s * k + (1 - c) * (k @ k)


def random_affine(
    ndim: int,
    shape: Sequence[int],
    generator: torch.Generator,
    max_rotation: float = 30.0,
    scale_range: Sequence[float] = (0.8, 1.2),
    max_translation: float = 0.1,
) -> torch.Tensor:
    """A random affine ``(ndim, ndim + 1)`` on centred voxel coordinates (regzoo's convention).

    ``A = R @ diag(s)``: ``R`` a rotation by an angle uniform in ``[-max_rotation, max_rotation]``
    degrees (in 3D about an axis uniform on the sphere, so the total rotation angle is in range),
    ``s`` per axis uniform in ``scale_range``, and a translation per axis uniform in
    ``[-max_translation, max_translation] * size``. ``warped[x] = image[A x + b]``.
    """
    angle = math.radians(max_rotation) * (2 * torch.rand((), generator=generator) - 1)
    if ndim == 2:
        rot = rotation_matrix(angle)
    else:
        axis = torch.randn(3, generator=generator)
        rot = rotation_matrix(angle, axis / axis.norm().clamp(min=1e-8))
    scale = _uniform(generator, float(scale_range[0]), float(scale_range[1]), (ndim,))
    size = torch.tensor([float(s) for s in shape])
    shift = max_translation * size * (2 * torch.rand(ndim, generator=generator) - 1)
    return torch.cat([rot * scale[None, :], shift[:, None]], dim=1)


def gaussian_blur(image: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, *S)`` with ``std`` voxels (kernel radius 3 std, edges replicated)."""
    if std <= 0:
        return image
    radius = max(1, int(math.ceil(3 * std)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / std) ** 2)
    kernel = kernel / kernel.sum()
    ndim = image.dim() - 1
    out = image[None]
    conv = F.conv2d if ndim == 2 else F.conv3d
    channels = image.shape[0]
    for axis in range(ndim):
        view = [1] * ndim
        view[axis] = -1
        k = kernel.view(1, 1, *view).expand(channels, 1, *view)
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), k, groups=channels)
    return out[0]


@dataclass(frozen=True)
class Contrast:
    """Intensity model of one image: per-label mean and noise std, and a gamma exponent."""

    means: torch.Tensor
    stds: torch.Tensor
    gamma: float


def random_contrast(
    num_labels: int,
    generator: torch.Generator,
    mean_range: Sequence[float] = (25 / 255, 225 / 255),
    std_range: Sequence[float] = (5 / 255, 25 / 255),
    gamma_std: float = 0.25,
) -> Contrast:
    """Per-label means and stds in the paper's ranges (U(25, 225), U(5, 25) of 255) and a gamma.

    The means are spread over the range: it is cut into ``num_labels`` equal bins, each label
    takes one bin (a random permutation, so the contrast is still random) at its centre +- a
    quarter bin. Independent uniform draws (the paper's) often give two labels almost the same
    intensity, which makes their boundary invisible to an image-similarity loss; the spread
    keeps neighbouring intensities at least half a bin apart.
    """
    lo, hi = float(mean_range[0]), float(mean_range[1])
    bins = torch.randperm(num_labels, generator=generator).float()
    jitter = 0.5 * torch.rand(num_labels, generator=generator) - 0.25
    means = lo + (hi - lo) * (bins + 0.5 + jitter) / num_labels
    stds = _uniform(generator, float(std_range[0]), float(std_range[1]), (num_labels,))
    gamma = math.exp(gamma_std * float(torch.randn((), generator=generator)))
    return Contrast(means, stds, gamma)


def labels_to_image(
    labels: torch.Tensor,
    contrast: Contrast,
    generator: torch.Generator,
    blur_std: float = 1.0,
    bias_std: float = 0.3,
    bias_scale: float = 32.0,
) -> torch.Tensor:
    """SynthMorph's image from a label map ``(*S)`` int: returns ``(1, *S)`` float32 in [0, 1].

    Gaussian intensities per label, blur (``blur_std`` voxels), bias field ``exp(Perlin)`` with
    std up to ``bias_std`` at Perlin scale ``bias_scale``, min-max normalisation, then ``x**gamma``.
    """
    noise = torch.randn(labels.shape, generator=generator)
    image = (contrast.means[labels] + contrast.stds[labels] * noise)[None]
    image = gaussian_blur(image, blur_std)
    if bias_std > 0:
        image = image * torch.exp(perlin_noise(labels.shape, bias_scale, bias_std, generator))
    lo, hi = image.min(), image.max()
    image = (image - lo) / (hi - lo).clamp(min=1e-6)
    return image.clamp(0, 1) ** contrast.gamma


def _fill_from_neighbours(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``labels`` ``(*S)`` int64 in ``0 .. num_labels-1`` with ``-1`` where unknown, each unknown
    voxel given the largest value among its known 3^ndim neighbours, repeatedly, until none is
    left (all ``0`` if none is known)."""
    if bool((labels >= 0).all()):
        return labels
    if not bool((labels >= 0).any()):
        return torch.zeros_like(labels)
    pool = F.max_pool2d if labels.dim() == 2 else F.max_pool3d
    classes = torch.arange(num_labels).view(-1, *(1,) * labels.dim())
    while bool((labels < 0).any()):
        present = pool((labels[None] == classes).float()[None], 3, stride=1, padding=1)[0]
        nearby = torch.where(present > 0, classes, -1).amax(0)
        labels = torch.where(labels < 0, nearby, labels)
    return labels


def _compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``second`` then ``first`` as one field ``(ndim, *S)``; border padding keeps edges sensible."""
    return second + warp(first[None], second[None], padding="border")[0]


class SynthMorphGenerator:
    """Subjects and scans of one synthetic population (seeded; every output regenerable).

    A population shares one *template*: ``num_labels`` Perlin images drawn from ``seed`` alone.
    Subject ``s`` of a split is the template warped by the subject's own random diffeomorphism
    (its anatomy; SynthMorph also warps its noise images before the arg-max), and a scan of the
    subject is that label map warped once more, by nearest neighbour as SynthMorph warps label
    maps, with a per-scan diffeomorphism (and an affine, if asked), then rendered with a contrast. Because subjects share the template, inter-subject pairs
    have a true correspondence, as brains do; scans of one subject differ only by the scan warps.

    Args:
        ndim: 2 or 3.
        size: spatial size (one int for all axes, or a tuple).
        num_labels: number of labels ``J``.
        label_scales: Perlin scales (downsampling factors) of the label images.
        subject_std, subject_scales: velocity std (voxels) and Perlin scale of subject warps.
        deform_std, deform_scales: the same for per-scan warps (the registration problem).
        integration_steps: squarings of the velocity fields.
        blur_std, bias_std, bias_scale, gamma_std: the image model of :func:`labels_to_image`.
        max_rotation, scale_range, max_translation: ranges of :func:`random_affine`.
        cache_size: subject label maps kept in memory (``prod(size)`` bytes each).
        seed: the population.
    """

    def __init__(
        self,
        ndim: int = 2,
        size: int | Sequence[int] = 64,
        num_labels: int = 6,
        label_scales: Sequence[float] = (4.0, 8.0),
        subject_std: float = 2.0,
        subject_scales: float | Sequence[float] = 16.0,
        deform_std: float = 6.0,
        deform_scales: float | Sequence[float] = 16.0,
        integration_steps: int = 5,
        blur_std: float = 1.0,
        bias_std: float = 0.3,
        bias_scale: float = 32.0,
        gamma_std: float = 0.25,
        max_rotation: float = 30.0,
        scale_range: Sequence[float] = (0.8, 1.2),
        max_translation: float = 0.1,
        cache_size: int = 256,
        seed: int = 0,
    ) -> None:
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        self.ndim = ndim
        self.shape = (int(size),) * ndim if isinstance(size, int) else tuple(int(s) for s in size)
        if len(self.shape) != ndim:
            raise ValueError(f"size {size} does not have {ndim} entries")
        if num_labels < 2:
            raise ValueError(f"num_labels must be at least 2, got {num_labels}")
        self.num_labels = int(num_labels)
        self.label_scales = tuple(label_scales)
        self.subject_std, self.subject_scales = float(subject_std), subject_scales
        self.deform_std, self.deform_scales = float(deform_std), deform_scales
        self.integration_steps = int(integration_steps)
        self.blur_std, self.bias_std, self.bias_scale = float(blur_std), float(bias_std), bias_scale
        self.gamma_std = float(gamma_std)
        self.max_rotation, self.scale_range = float(max_rotation), tuple(scale_range)
        self.max_translation = float(max_translation)
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self._template: torch.Tensor | None = None
        self._subjects: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor's arguments: ``type(g)(**g.settings)`` draws what ``g`` draws."""
        return {
            "ndim": self.ndim,
            "size": list(self.shape),
            "num_labels": self.num_labels,
            "label_scales": self.label_scales,
            "subject_std": self.subject_std,
            "subject_scales": self.subject_scales,
            "deform_std": self.deform_std,
            "deform_scales": self.deform_scales,
            "integration_steps": self.integration_steps,
            "blur_std": self.blur_std,
            "bias_std": self.bias_std,
            "bias_scale": self.bias_scale,
            "gamma_std": self.gamma_std,
            "max_rotation": self.max_rotation,
            "scale_range": self.scale_range,
            "max_translation": self.max_translation,
            "cache_size": self.cache_size,
            "seed": self.seed,
        }

    @property
    def template(self) -> torch.Tensor:
        """The population's ``num_labels`` Perlin images ``(J, *S)``, drawn once from ``seed``."""
        if self._template is None:
            g = seeded_generator(self.seed, 0)
            # one std for every image: a modulated (smaller) std would rarely win the arg-max and
            # leave its label as scattered specks
            self._template = perlin_noise(
                self.shape, self.label_scales, 1.0, g, self.num_labels, modulate=False
            )
        return self._template

    def subject_field(self, split: int, subject: int, inverse: bool = False) -> torch.Tensor:
        """The anatomy of subject ``subject`` of split ``split``: a displacement ``(ndim, *S)``
        from the subject to the template (``inverse``: back)."""
        g = seeded_generator(self.seed, 1, split, subject)
        return random_diffeomorphism(
            self.shape, self.subject_std, self.subject_scales, g, self.integration_steps, inverse
        )

    def scan_field(self, key: Sequence[int], inverse: bool = False) -> torch.Tensor:
        """The per-scan diffeomorphism of scan ``key``: a displacement ``(ndim, *S)``
        (``inverse``: its inverse)."""
        g = seeded_generator(self.seed, 2, *key)
        return random_diffeomorphism(
            self.shape, self.deform_std, self.deform_scales, g, self.integration_steps, inverse
        )

    def affine(self, key: Sequence[int]) -> torch.Tensor:
        """The random affine ``(ndim, ndim + 1)`` of scan ``key`` (see :func:`random_affine`)."""
        g = seeded_generator(self.seed, 3, *key)
        return random_affine(
            self.ndim, self.shape, g, self.max_rotation, self.scale_range, self.max_translation
        )

    def contrast(self, key: Sequence[int]) -> Contrast:
        """The contrast drawn for ``key`` (a scan's key, or a shared key for same-contrast data)."""
        return random_contrast(
            self.num_labels, seeded_generator(self.seed, 4, *key), gamma_std=self.gamma_std
        )

    def scan_to_subject(
        self, key: Sequence[int], smooth: bool = True, affine: bool = False, inverse: bool = False
    ) -> torch.Tensor | None:
        """Displacement from scan ``key`` to its subject ``(ndim, *S)``: scan warp then affine
        (``inverse``: from the subject to the scan, the inverse affine then the inverse warp).

        ``None`` when the scan is the subject itself (neither ``smooth`` nor ``affine``).
        """
        field = None
        if affine:
            theta = self.affine(key)[None]
            field = affine_to_ddf(affine_inverse(theta) if inverse else theta, self.shape)[0]
        if smooth:
            warp_field = self.scan_field(key, inverse)
            if field is None:
                field = warp_field
            else:
                field = _compose(warp_field, field) if inverse else _compose(field, warp_field)
        return field

    def true_field(
        self,
        split: int,
        moving: tuple[int, Sequence[int]],
        fixed: tuple[int, Sequence[int]],
        smooth: bool = True,
        moving_affine: bool = False,
    ) -> torch.Tensor:
        """The true displacement ``(ndim, *S)`` (voxels) of a pair of scans, from the fixed grid to
        the moving one: ``warp(moving, field)`` shows the fixed scan's anatomy.

        Args:
            split: the split of both subjects.
            moving, fixed: ``(subject, scan key)`` of each scan.
            smooth: the scans have their per-scan warps.
            moving_affine: the moving scan has its affine (fixed scans never do).

        The fixed scan's warp, the fixed subject's anatomy, the moving subject's anatomy
        inverted, the moving scan's affine and warp inverted; the anatomy cancels exactly within
        one subject. Inverse warps are exp(-v) of the drawn velocities (no fixed-point iteration).
        """
        (m_subject, m_key), (f_subject, f_key) = moving, fixed
        field = self.scan_to_subject(f_key, smooth)
        if m_subject != f_subject:
            across = _compose(
                self.subject_field(split, m_subject, inverse=True),
                self.subject_field(split, f_subject),
            )
            field = across if field is None else _compose(across, field)
        back = self.scan_to_subject(m_key, smooth, moving_affine, inverse=True)
        if back is not None:
            field = back if field is None else _compose(back, field)
        return torch.zeros((self.ndim, *self.shape)) if field is None else field

    def scan_transform(
        self,
        split: int,
        subject: int,
        key: Sequence[int],
        smooth: bool = True,
        affine: bool = False,
    ) -> torch.Tensor:
        """Displacement from scan space to template space ``(ndim, *S)``: scan warp, affine, anatomy.

        With :meth:`scan_labels` this gives a scan's labels with sub-voxel boundaries (one
        ``num_labels``-channel warp per scan); :meth:`labels` is the faster SynthMorph way.
        """
        field = self.subject_field(split, subject)
        to_subject = self.scan_to_subject(key, smooth, affine)
        return field if to_subject is None else _compose(field, to_subject)

    def scan_labels(self, field: torch.Tensor) -> torch.Tensor:
        """The label map ``(*S)`` int64 of the template seen through ``field`` (to template space)."""
        noise = warp(self.template[None], field[None], padding="border")[0]
        return noise.max(dim=0).indices  # argmax, several times faster along dim 0 on CPU

    def subject_labels(self, split: int, subject: int) -> torch.Tensor:
        """Label map ``(*S)`` int64 of subject ``subject`` of split ``split`` (cached)."""
        key = (split, subject)
        labels = self._subjects.get(key)
        if labels is None:
            labels = self.scan_labels(self.subject_field(split, subject))
            small = torch.uint8 if self.num_labels <= 256 else torch.int16
            self._subjects[key] = labels.to(small)
            while len(self._subjects) > self.cache_size:
                self._subjects.popitem(last=False)
        else:
            self._subjects.move_to_end(key)
        return labels.long()

    def labels(
        self,
        split: int,
        subject: int,
        key: Sequence[int],
        smooth: bool = True,
        affine: bool = False,
    ) -> torch.Tensor:
        """Label map ``(*S)`` int64 of scan ``key`` of a subject: its label map warped by the
        scan's transform with nearest-neighbour interpolation, as SynthMorph warps label maps."""
        labels = self.subject_labels(split, subject)
        field = self.scan_to_subject(key, smooth, affine)
        if field is None:
            return labels
        moved = warp(labels[None, None].float(), field[None], mode="nearest", padding="border")
        return moved[0, 0].long()

    def slide(
        self,
        labels: torch.Tensor,
        key: Sequence[int],
        regions: torch.Tensor,
        slide_std: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions of the label map ``labels`` ``(*S)`` (the moving scan's) sliding against each
        other, then one smooth warp of the whole: the fixed scan's label map ``(*S)`` int64 and the
        true displacement ``(ndim, *S)`` (voxels, from the fixed grid to the moving one), smooth
        inside each region of the fixed map and discontinuous at region boundaries.

        ``regions`` ``(num_labels,)`` int64 maps each label to its region ``0 .. K-1``.

        1. Region ``k`` slides by its own diffeomorphism ``d_k`` (velocity std up to
           ``slide_std`` voxels at scale ``deform_scales``, drawn from ``key`` and ``k``). A voxel
           ``z`` is claimed by region ``k`` when the moving label at ``z + d_k(z)`` is one of region
           ``k``'s; where several regions claim it, the one ranked last in an order drawn per
           pair wins (it slid over the others); where regions pull apart and none claims it, it
           moves with the last-ranked region among its nearest claimed neighbours. Every voxel
           takes the moving label its region's motion brings, so the moving labels warped by the
           true field are the fixed ones (up to nearest-neighbour rounding); in those gaps that
           label is a neighbouring region's.
        2. The whole slid map is warped by one diffeomorphism ``w`` (``deform_std``), as the
           body moves around its organs.

        The field is ``w(x) + d_r(x + w(x))`` for the region ``r`` that moves the voxel at
        ``x + w(x)``: smooth inside each region, torn at region boundaries.
        """
        count = int(regions.max()) + 1
        slides = torch.stack(
            [
                random_diffeomorphism(
                    self.shape,
                    slide_std,
                    self.deform_scales,
                    seeded_generator(self.seed, 6, *key, k),
                    self.integration_steps,
                )
                for k in range(count)
            ]
        )
        moved = labels[None, None].float().expand(count, 1, *self.shape)
        candidates = warp(moved, slides, mode="nearest", padding="border")[:, 0].long()
        rank = torch.randperm(count, generator=seeded_generator(self.seed, 7, *key))
        ranks = rank.view(-1, *(1,) * self.ndim).expand_as(candidates)
        claimed = regions[candidates] == torch.arange(count).view(-1, *(1,) * self.ndim)
        winner = torch.where(claimed, ranks, -1).amax(0)
        winner = _fill_from_neighbours(winner, count)
        mover = torch.argsort(rank)[winner]  # the region of each rank
        slid = candidates.gather(0, mover[None])[0]
        body = self.scan_field(key)
        both = torch.stack([slid, mover]).float()[None]
        fixed, region = warp(both, body[None], mode="nearest", padding="border")[0].long()
        # each region's slide at x + w(x), linearly: smooth inside the region
        along = warp(slides.reshape(1, -1, *self.shape), body[None], padding="border")
        along = along.reshape(count, self.ndim, *self.shape)
        index = region[None, None].expand(1, self.ndim, *self.shape)
        return fixed, body + along.gather(0, index)[0]

    def render(self, labels: torch.Tensor, contrast: Contrast, key: Sequence[int]) -> torch.Tensor:
        """An image ``(1, *S)`` of ``labels`` with ``contrast``; noise and bias drawn from ``key``."""
        g = seeded_generator(self.seed, 5, *key)
        return labels_to_image(labels, contrast, g, self.blur_std, self.bias_std, self.bias_scale)
