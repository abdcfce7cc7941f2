"""Joint organ-at-risk registration and segmentation: registration, ROI selection, ROI
segmentation, iterated, then a shape correction.

The method as a survey describes it: a lightweight 3D pipeline for head-and-neck CT (IEEE TMI
2021 per the survey; the paper could not be located, so everything below is built from the
survey's description and what is marked *ours* is our choice):

1. Registration: a VoxelMorph network (the ``vxm-unet`` backbone, a 3x3 flow head, the ``dense``
   transformer) aligns the labelled template (the moving image) to the new scan (the fixed
   image); trained with a Dice between the warped template labels and the scan's labels, the
   centre-of-mass distance loss (:func:`centre_of_mass_loss`, weight 1) and Grad.
2. ROI selection (no weights): per OAR ``k``, a box centred on the centre of mass of the warped
   template's organ, of side ``roi_scale * V_k^(1/ndim)`` voxels (``V_k`` the organ's volume in
   the template, at least ``min_roi``), resampled to a ``roi_size`` grid (linear).
3. ROI segmentation: one small U-Net (widths 16-128) shared by every OAR (*ours*: one network,
   the organ's index as ``K - 1`` constant one-hot input channels, rather than one per organ)
   segments organ ``k`` in its ROI (2 logits: background, organ) from the fixed image's ROI and
   the registered template's organ map in the same ROI (*ours*, our reading of "crops the ROI
   from the registered template"; without gradient); the ROI-classification branch
   (global mean and max of the U-Net's features, a linear layer) says which OAR the ROI holds,
   ``0`` for none. An ROI whose class is not its organ contributes no mask. The ROI
   probabilities are resampled back onto the image, smaller OARs on top of larger ones where
   ROIs overlap (*ours*; :meth:`OARJoint.assemble`).
4. Iteration: the predicted masks (probabilities, without gradient) become landmarks for the
   next registration pass, which refines the previous one (*ours*, our reading of "iterate"): it
   registers the template warped by the field so far, receiving besides the two images the
   warped template's OAR maps and the predicted masks of the scan (``2 (K - 1)`` channels, zero
   on the first pass), and its own flow ``u_i`` is composed with the field so far,
   ``phi_i = compose(phi_{i-1}, u_i)`` (:func:`regzoo.spatial.compose`); then ROI selection and
   segmentation again. ``iterations`` passes (default 2), one set of weights for all (*ours*).
5. Shape correction (*ours*; evaluation mode only): per corrected OAR, the largest connected
   component of its mask is kept and its holes are filled (``scipy.ndimage``): the OAR's
   log-probability is set to -20 on removed voxels and to 20 on filled ones.

Training (*ours*: jointly, one optimiser): the registration terms and the segmentation terms
(soft Dice + cross-entropy on each ROI against the scan's organ resampled to the ROI, and
``cls_weight`` times the ROI-classification cross-entropy, the target being the organ when its
resampled mask holds a voxel, else 0), summed over the passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError
from regzoo.labels import one_hot
from regzoo.models import Batch, RegistrationModel, RegistrationOutput
from regzoo.nn import conv_nd, field_head
from regzoo.spatial import compose, warp

from . import OARJointConfig

__all__ = [
    "OARJoint",
    "Iteration",
    "centre_of_mass",
    "centre_of_mass_loss",
    "roi_grid",
    "crop",
    "paste",
    "shape_correction",
]

_DEFAULTS = OARJointConfig()
# The floor of the log-probabilities of ``fixed_seg``; the shape correction sets an OAR's to
# -_OFF where it removes the OAR and to +_OFF where it fills a hole.
_OFF = 20.0


def centre_of_mass(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of mass of non-negative maps ``(B, K, *S)``: ``(B, K, ndim)`` voxel coordinates
    (axis order of ``S``) and the masses ``(B, K)``; a map of mass 0 has its centre at 0."""
    ndim = maps.dim() - 2
    axes = torch.meshgrid(
        *[torch.arange(n, dtype=maps.dtype, device=maps.device) for n in maps.shape[2:]],
        indexing="ij",
    )
    mass = maps.flatten(2).sum(-1)
    moments = torch.stack([(maps * a).flatten(2).sum(-1) for a in axes], dim=-1)
    return moments / mass.clamp(min=1e-8)[..., None].expand(-1, -1, ndim), mass


def centre_of_mass_loss(
    pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3
) -> torch.Tensor:
    """The centre-distance loss: mean Euclidean distance (voxels) between the centres of mass of
    ``pred`` and ``target`` ``(B, K, *S)`` (probabilities or one-hot maps), over the pairs
    ``(b, k)`` where both maps have a mass above ``eps``; 0 when there is none."""
    c_pred, m_pred = centre_of_mass(pred)
    c_target, m_target = centre_of_mass(target)
    present = ((m_pred > eps) & (m_target > eps)).to(pred.dtype)
    distance = (c_pred - c_target).square().sum(-1).clamp(min=1e-12).sqrt()
    return (distance * present).sum() / present.sum().clamp(min=1.0)


def roi_grid(centres: torch.Tensor, sides: torch.Tensor, size: int) -> torch.Tensor:
    """Voxel coordinates ``(N, *[size] * ndim, ndim)`` of ROI grids: ``size`` points per axis
    spanning ``centre +- side / 2`` (``centres`` ``(N, ndim)``, ``sides`` ``(N,)`` voxels)."""
    ndim = centres.shape[-1]
    t = torch.linspace(-0.5, 0.5, size, dtype=centres.dtype, device=centres.device)
    unit = torch.stack(torch.meshgrid(*[t] * ndim, indexing="ij"), dim=-1)
    view = (len(centres),) + (1,) * ndim + (ndim,)
    return centres.view(view) + sides.view(len(sides), *[1] * (ndim + 1)) * unit


def _normalised(points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates ``(..., ndim)`` to ``grid_sample``'s ``[-1, 1]`` (x, y, z) order."""
    size = torch.tensor([float(n) for n in shape], dtype=points.dtype, device=points.device)
    return (2.0 * points / (size - 1).clamp(min=1) - 1.0).flip(-1)


def crop(images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``images`` ``(N, C, *S)`` sampled (linear, zeros outside) at ``points`` ``(N, *R, ndim)``
    voxel coordinates: ``(N, C, *R)``."""
    grid = _normalised(points, images.shape[2:])
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def paste(
    rois: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor, shape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROI maps ``(N, C, *R)`` of :func:`roi_grid` boxes back on the image grid ``shape``:
    ``(N, C, *shape)`` (linear; outside a box, its nearest border value) and which voxels lie
    inside each box, ``(N, 1, *shape)`` bool."""
    ndim = len(shape)
    axes = torch.meshgrid(
        *[torch.arange(n, dtype=rois.dtype, device=rois.device) for n in shape], indexing="ij"
    )
    voxels = torch.stack(axes, dim=-1)[None]
    view = (len(centres),) + (1,) * ndim + (ndim,)
    t = (voxels - centres.view(view)) / sides.view(len(sides), *[1] * (ndim + 1))  # [-1/2, 1/2]
    inside = (t.abs() <= 0.5).all(-1)[:, None]
    grid = (2.0 * t).flip(-1)
    pasted = F.grid_sample(rois, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return pasted, inside


def shape_correction(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean ``mask`` (face connectivity), holes filled."""
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return ndimage.binary_fill_holes(components == 1 + int(np.argmax(sizes)))


@dataclass
class Iteration:
    """One pass of the pipeline, batch first (``O = K - 1`` OARs, ``R`` the ROI grid).

    Attributes:
        ddf: the registration's field after this pass ``(B, ndim, *S)`` (voxels).
        warped_template: the template's labels warped by it, ``(B, K, *S)`` probabilities.
        centres, sides: the ROIs, ``(B, O, ndim)`` and ``(B, O)`` voxels.
        roi_logits: ``(B, O, 2, *R)`` background/organ logits per ROI.
        roi_class: ``(B, O, K)`` ROI-classification logits (0: no OAR).
        seg: ``(B, K, *S)`` segmentation of the fixed image (log-probabilities).
        flow: this pass's own flow ``(B, ndim, *S)``, composed with the previous passes' field.
    """

    ddf: torch.Tensor
    warped_template: torch.Tensor | None = None
    centres: torch.Tensor | None = None
    sides: torch.Tensor | None = None
    roi_logits: torch.Tensor | None = None
    roi_class: torch.Tensor | None = None
    seg: torch.Tensor | None = None
    flow: torch.Tensor | None = None


class OARJoint(RegistrationModel):
    """Joint OAR registration and segmentation (module docstring: the pipeline).

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels: channels of each image.
        num_labels: classes ``K`` of the label maps, background 0 included; labels ``1 .. K-1``
            are the OARs.
        iterations: passes of registration + ROI segmentation (2: the masks of the first pass
            are fed back once).
        registration: ``vxm-unet`` backbone config of the registration network.
        transformer: the registered transformer of the flow (``dense``).
        segmentation: ``vxm-unet`` backbone config of the ROI segmentation network.
        roi_size: points per axis of the ROI grid.
        roi_scale: ROI side over ``V^(1/ndim)``, ``V`` the organ's template volume (voxels).
        min_roi: the smallest ROI side (voxels).
        dice_weight, com_weight: weights of the registration's label Dice and centre-of-mass
            distance terms.
        regularizer: registered loss on each pass's field; ``None``: none.
        reg_weight: its weight.
        seg_weight: weight of the ROI segmentation terms (soft Dice + cross-entropy).
        cls_weight: weight of the ROI-classification cross-entropy.
        correct_labels: the OARs the shape correction refines; ``None``: every OAR.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        num_labels: int = _DEFAULTS.num_labels,
        iterations: int = _DEFAULTS.iterations,
        registration: Mapping[str, Any] = _DEFAULTS.registration,
        transformer: str = _DEFAULTS.transformer,
        segmentation: Mapping[str, Any] = _DEFAULTS.segmentation,
        roi_size: int = _DEFAULTS.roi_size,
        roi_scale: float = _DEFAULTS.roi_scale,
        min_roi: float = _DEFAULTS.min_roi,
        dice_weight: float = _DEFAULTS.dice_weight,
        com_weight: float = _DEFAULTS.com_weight,
        regularizer: Mapping[str, Any] | None = _DEFAULTS.regularizer,
        reg_weight: float = _DEFAULTS.reg_weight,
        seg_weight: float = _DEFAULTS.seg_weight,
        cls_weight: float = _DEFAULTS.cls_weight,
        correct_labels: Sequence[int] | None = _DEFAULTS.correct_labels,
    ) -> None:
        super().__init__()
        if num_labels < 2:
            raise ConfigError(f"oar-joint: model.num_labels must be >= 2, got {num_labels}")
        if iterations < 1:
            raise ConfigError(f"oar-joint: model.iterations must be >= 1, got {iterations}")
        if roi_size < 2 or roi_scale <= 0 or min_roi <= 0:
            raise ConfigError(
                f"oar-joint: model.roi_size must be >= 2 and roi_scale, min_roi positive, got "
                f"{roi_size}, {roi_scale}, {min_roi}"
            )
        organs = num_labels - 1
        if correct_labels is not None and not all(0 < int(k) < num_labels for k in correct_labels):
            raise ConfigError(
                f"oar-joint: model.correct_labels must be OARs in [1, {num_labels}), got "
                f"{list(correct_labels)}"
            )
        self.ndim, self.num_labels, self.iterations = ndim, int(num_labels), int(iterations)
        self.roi_size, self.roi_scale, self.min_roi = int(roi_size), float(roi_scale), min_roi
        self.weights = {
            "dice": dice_weight,
            "com": com_weight,
            "regularizer": reg_weight,
            "seg": seg_weight,
            "cls": cls_weight,
        }
        self.correct_labels = (
            list(range(1, num_labels))
            if correct_labels is None
            else [int(k) for k in correct_labels]
        )
        conv = conv_nd(ndim)
        self.reg_net = self._backbone(registration, "registration", 2 * in_channels + 2 * organs)
        self.flow = field_head(ndim, self.reg_net.out_channels)
        self.transformer = build("transformer", {"name": transformer})
        self.seg_net = self._backbone(segmentation, "segmentation", in_channels + 1 + organs)
        self.seg_head = conv(self.seg_net.out_channels, 2, 1)
        self.roi_classifier = nn.Linear(2 * self.seg_net.out_channels, num_labels)
        self.dice = build("loss", {"name": "dice", "complement": True})
        self.roi_dice = build(
            "loss", {"name": "dice", "complement": True, "include_background": False}
        )
        self.ce = build("loss", {"name": "ce", "logits": True})
        self.regularizer = build("loss", dict(regularizer)) if regularizer else None

    def _backbone(self, config: Mapping[str, Any], what: str, in_channels: int) -> nn.Module:
        config = dict(config)
        if config.get("name") != "vxm-unet":
            raise ConfigError(f"oar-joint: model.{what} must be a vxm-unet config, got {config}")
        return build("backbone", {**config, "ndim": self.ndim, "in_channels": in_channels})

    def register(
        self, moving: torch.Tensor, fixed: torch.Tensor, hints: torch.Tensor
    ) -> torch.Tensor:
        """The registration network on ``(moving, fixed, hints)`` ``(B, 2C + 2(K-1), *S)``:
        the displacement ``(B, ndim, *S)`` (voxels)."""
        features = self.reg_net(torch.cat([moving, fixed, hints], dim=1))
        return self.transformer(self.flow(features), moving.shape[2:])["ddf"]

    def select_rois(
        self, template: torch.Tensor, warped_template: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ROI-selection layer: per OAR, the centre of mass of its warped template map and
        the side ``roi_scale * V^(1/ndim)`` (at least ``min_roi``), ``V`` its template volume:
        ``(B, O, ndim)`` and ``(B, O)`` voxels, without gradient. An OAR the warp lost (mass
        below 1e-3) is centred on the image."""
        with torch.no_grad():
            centres, mass = centre_of_mass(warped_template[:, 1:])
            middle = torch.tensor([(n - 1) / 2 for n in template.shape[2:]], dtype=centres.dtype)
            centres = torch.where((mass > 1e-3)[..., None], centres, middle.to(centres.device))
            volume = template[:, 1:].flatten(2).sum(-1)
            sides = (self.roi_scale * volume ** (1.0 / self.ndim)).clamp(min=self.min_roi)
        return centres, sides

    def segment_rois(
        self,
        fixed: torch.Tensor,
        warped_template: torch.Tensor,
        centres: torch.Tensor,
        sides: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ROI segmentation network on every ROI of the fixed image, with the registered
        template's organ in the ROI (without gradient) and the organ's index as inputs:
        ``(B, O, 2, *R)`` logits and the ROI-classification logits ``(B, O, K)``."""
        b, organs = centres.shape[:2]
        points = roi_grid(centres.flatten(0, 1), sides.flatten(), self.roi_size)
        images = crop(fixed.repeat_interleave(organs, dim=0), points)
        priors = crop(warped_template[:, 1:].detach().flatten(0, 1)[:, None], points)
        index = torch.eye(organs, dtype=fixed.dtype, device=fixed.device).repeat(b, 1)
        index = index.view(b * organs, organs, *[1] * self.ndim).expand(-1, -1, *images.shape[2:])
        features = self.seg_net(torch.cat([images, priors, index], dim=1))
        logits = self.seg_head(features)
        pooled = torch.cat([features.flatten(2).mean(-1), features.flatten(2).amax(-1)], dim=1)
        roi_class = self.roi_classifier(pooled)
        return logits.view(b, organs, *logits.shape[1:]), roi_class.view(b, organs, -1)

    def assemble(self, it: Iteration, shape: Sequence[int]) -> torch.Tensor:
        """The image's segmentation ``(B, K, *S)`` (log-probabilities) from the ROIs of ``it``.

        OAR ``k``'s probability is ``p_k = sigmoid(z_k)``, ``z_k`` its ROI's organ-minus-
        background logit pasted on the image, inside its ROI (0 outside, and everywhere when the
        ROI classification names another class). Where ROIs overlap, the smaller OAR (smaller
        ROI; equal sizes: the higher label) lies on top (*ours*): ``q_k = p_k prod(1 - p_j)``
        over the OARs ``j`` smaller than ``k``, the background ``q_0 = prod(1 - p_j)`` over all;
        the ``q`` sum to 1 and the output is ``log q``, at least -20.
        """
        b, organs = it.centres.shape[:2]
        z = (it.roi_logits[:, :, 1] - it.roi_logits[:, :, 0]).flatten(0, 1)[:, None]
        pasted, inside = paste(z, it.centres.flatten(0, 1), it.sides.flatten(), shape)
        kept = it.roi_class.argmax(-1) == torch.arange(1, organs + 1, device=z.device)
        active = (inside & kept.flatten().view(-1, *[1] * (len(shape) + 1))).view(b, organs, *shape)
        pasted = pasted.view(b, organs, *shape)
        log_p = torch.where(active, F.logsigmoid(pasted), torch.full_like(pasted, -_OFF))
        log_not = torch.where(active, F.logsigmoid(-pasted), torch.zeros_like(pasted))
        sides, index = it.sides, torch.arange(organs, device=z.device)
        above = (sides[:, None, :] < sides[:, :, None]) | (
            (sides[:, None, :] == sides[:, :, None]) & (index[None, :] > index[:, None])[None]
        )  # above[b, k, j]: OAR j lies on top of OAR k
        covered = torch.einsum("bkj,bj...->bk...", above.to(z.dtype), log_not)
        background = log_not.sum(1, keepdim=True)
        return torch.cat([background, log_p + covered], dim=1).clamp(min=-_OFF)

    def iterate(self, batch: Batch, feedback: bool = True) -> list[Iteration]:
        """Every pass of the pipeline on ``batch`` (``moving``, ``fixed`` and the template's
        ``moving_label``). Without ``moving_label`` only the first registration runs.
        ``feedback=False`` (an ablation) gives the later passes zeros for the predicted masks."""
        moving, fixed = batch["moving"], batch["fixed"]
        shape = tuple(moving.shape[2:])
        organs = self.num_labels - 1
        hints = moving.new_zeros((moving.shape[0], 2 * organs, *shape))
        if "moving_label" not in batch:
            flow = self.register(moving, fixed, hints)
            return [Iteration(flow, flow=flow)]
        template = one_hot(batch["moving_label"], self.num_labels, moving.dtype)
        passes, ddf, source = [], None, moving
        for _ in range(self.iterations):
            flow = self.register(source, fixed, hints)
            ddf = flow if ddf is None else compose(ddf, flow)
            warped_template = self.warp_moving_labels(batch, ddf, self.num_labels)
            centres, sides = self.select_rois(template, warped_template)
            roi_logits, roi_class = self.segment_rois(fixed, warped_template, centres, sides)
            it = Iteration(ddf, warped_template, centres, sides, roi_logits, roi_class, flow=flow)
            it.seg = self.assemble(it, shape)
            passes.append(it)
            source = warp(moving, ddf)
            predicted = it.seg.detach().softmax(1)[:, 1:]
            if not feedback:
                predicted = torch.zeros_like(predicted)
            hints = torch.cat([warped_template[:, 1:].detach(), predicted], dim=1)
        return passes

    @torch.no_grad()
    def correct(self, seg: torch.Tensor) -> torch.Tensor:
        """The shape correction of segmentation logits ``(B, K, *S)`` (:func:`shape_correction`
        on the arg-max mask of each OAR of ``correct_labels``): a corrected copy."""
        seg = seg.clone()
        labels = seg.argmax(1).cpu().numpy()
        for b in range(seg.shape[0]):
            for k in self.correct_labels:
                mask = labels[b] == k
                fixed = torch.from_numpy(shape_correction(mask)).to(seg.device)
                original = torch.from_numpy(mask).to(seg.device)
                seg[b, k][original & ~fixed] = -_OFF
                seg[b, k][fixed & ~original] = _OFF
        return seg

    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving`` (the template), ``fixed`` ``(B, C, *S)``, ``moving_label`` (the template's
        labels) to the last pass's ``ddf``, ``warped``, ``warped_label`` and ``fixed_seg``
        ``(B, K, *S)`` log-probabilities (shape-corrected in evaluation mode); ``extras``: per pass ``i``
        (from 0) ``ddf_i``, ``flow_i``, ``warped_label_i``, ``seg_i`` (uncorrected), ``roi_centres_i`` ``(B, O, ndim)``,
        ``roi_sides_i`` ``(B, O)``, ``roi_logits_i`` ``(B, O, 2, *R)``, ``roi_class_i``
        ``(B, O, K)``."""
        passes = self.iterate(batch)
        last = passes[-1]
        extras = {}
        for i, it in enumerate(passes):
            extras[f"ddf_{i}"] = it.ddf
            extras[f"flow_{i}"] = it.flow
            if it.seg is not None:
                extras[f"warped_label_{i}"] = it.warped_template
                extras[f"seg_{i}"] = it.seg
                extras[f"roi_centres_{i}"] = it.centres
                extras[f"roi_sides_{i}"] = it.sides
                extras[f"roi_logits_{i}"] = it.roi_logits
                extras[f"roi_class_{i}"] = it.roi_class
        seg = last.seg
        if seg is not None and not self.training and self.correct_labels:
            seg = self.correct(seg)
        return RegistrationOutput(
            warped=warp(batch["moving"], last.ddf),
            ddf=last.ddf,
            warped_label=last.warped_template,
            fixed_seg=seg,
            extras=extras,
        )

    def trajectory(self, batch: Batch, steps: int | None = None) -> list[torch.Tensor]:
        """The field of each pass, ``(B, ndim, *S)`` each (``steps`` is ignored)."""
        return [it.ddf for it in self.iterate(batch)]

    def _roi_targets(self, fixed_onehot: torch.Tensor, it: Iteration) -> torch.Tensor:
        """The scan's organ ``k`` resampled to ROI ``k`` (linear, then > 0.5): ``(B, O, 1, *R)``
        int64."""
        b, organs = it.centres.shape[:2]
        points = roi_grid(it.centres.flatten(0, 1), it.sides.flatten(), self.roi_size)
        masks = crop(fixed_onehot[:, 1:].flatten(0, 1)[:, None], points) > 0.5
        return masks.long().view(b, organs, 1, *masks.shape[2:])

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """Summed over the passes: ``dice`` (warped template labels vs the scan's, soft Dice
        ``1 - mean``), ``com`` (:func:`centre_of_mass_loss` over the OARs), ``regularizer`` (each
        pass's field), ``seg`` (per ROI: soft Dice of the organ + cross-entropy) and ``cls``
        (ROI classification); ``"loss"`` the weighted total. Without ``fixed_label`` only the
        regulariser (the label-free objective)."""
        passes = sorted(int(k[4:]) for k in out.extras if k.startswith("ddf_"))
        terms: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor) -> None:
            terms[name] = terms[name] + value if name in terms else value

        labelled = "fixed_label" in batch and "seg_0" in out.extras
        fixed_onehot = one_hot(batch["fixed_label"], self.num_labels) if labelled else None
        for i in passes:
            ddf = out.extras[f"ddf_{i}"]
            if self.regularizer is not None:
                add("regularizer", self.regularizer(out.extras[f"flow_{i}"]))
            if fixed_onehot is None:
                continue
            warped = out.extras[f"warped_label_{i}"]
            add("dice", self.dice(warped, fixed_onehot))
            add("com", centre_of_mass_loss(warped[:, 1:], fixed_onehot[:, 1:]))
            it = Iteration(
                ddf,
                centres=out.extras[f"roi_centres_{i}"],
                sides=out.extras[f"roi_sides_{i}"],
            )
            target = self._roi_targets(fixed_onehot, it).flatten(0, 1)
            logits = out.extras[f"roi_logits_{i}"].flatten(0, 1)
            add(
                "seg",
                self.roi_dice(logits.softmax(1), one_hot(target, 2)) + self.ce(logits, target),
            )
            organs = it.centres.shape[1]
            index = torch.arange(1, organs + 1, device=target.device).repeat(len(target) // organs)
            cls_target = torch.where(target.flatten(1).any(1), index, torch.zeros_like(index))
            add("cls", F.cross_entropy(out.extras[f"roi_class_{i}"].flatten(0, 1), cls_target))
        total = sum(self.weights[k] * v for k, v in terms.items())
        terms["loss"] = total if terms else out.ddf.new_zeros(())
        return terms
