"""JRSS: few-shot registration and segmentation that teach each other by self-training.

Shi, Lu, Yin, Zhong, Yang, "Joint few-shot registration and segmentation self-training of 3D
medical images", Biomedical Signal Processing and Control 80:104294, 2023
(doi:10.1016/j.bspc.2022.104294); no code released. Three segmentation networks of one
architecture and a registration network:

- ``seg_net``, the student; ``ema_net``, the exponential moving average of the student's
  weights (core's :func:`~regzoo.models.ema_update` after every student update); ``teacher_net``,
  the teacher of the current round, fixed within it;
- ``reg_net``, a VoxelMorph network (core's ``vxm-unet`` and ``field_head``).

Schedule (:meth:`JRSS.stage`, a pure function of the step):

1. ``teacher`` (``teacher_steps``): the student learns from the labelled images alone (soft
   multi-class Dice), the registration network from ``L_i + L_r`` and, on pairs with both images
   labelled, ``L_d``. At its end the student is the first teacher (and the EMA starts from it).
2. ``round-1`` .. ``round-R`` (``round_steps`` each): the teacher's softmax ``q`` on every image
   gives pseudo-labels, its arg-max kept where ``max q >= tau``; labelled images keep their
   labels. The student sees the moving and fixed images and the moving images warped by the
   (fixed) registration network, whose targets are the moving targets warped, with dropout
   noise, and minimises ``L_c + L_u + L_d``: cross-entropy to the (pseudo-)labels over the kept
   voxels, ``KL(q || p)`` between the teacher's and the student's softmax, and soft Dice over
   the kept voxels. The registration network minimises ``L_i + L_r + L_d`` with the Dice of the
   warped moving (pseudo-)labels against the fixed ones over voxels kept on both sides. After
   each round the EMA of the student becomes the teacher.

With ``fresh_optimizer`` (default) the student's optimiser state restarts with each teacher:
Adam's second-moment estimate from the soft-Dice stage is far smaller than the cross-entropy's
gradients, and carrying it over made the first updates of round 1 large enough to drop the
student's Dice from 0.39 to 0.20 (measured on the 2D few-label data of the tests).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError
from regzoo.labels import one_hot
from regzoo.models import Batch, RegistrationModel, RegistrationOutput, ema_update
from regzoo.nn import conv_nd, field_head
from regzoo.spatial import warp

from . import JRSSConfig

__all__ = ["JRSS", "RegistrationNet", "SegmentationNet", "Targets"]

_DEFAULTS = JRSSConfig()


class RegistrationNet(nn.Module):
    """VoxelMorph (core ``vxm-unet``, LeakyReLU 0.2) with a 3x3 flow head (N(0, 1e-5)) and a dense
    transformer: ``moving``, ``fixed`` ``(B, C, *S)`` to ``ddf`` ``(B, ndim, *S)`` (voxels)."""

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        enc_features: Sequence[int],
        dec_features: Sequence[int],
    ) -> None:
        super().__init__()
        self.unet_model = build(
            "backbone",
            {
                "name": "vxm-unet",
                "ndim": ndim,
                "in_channels": 2 * in_channels,
                "enc_features": list(enc_features),
                "dec_features": list(dec_features),
            },
        )
        self.flow = field_head(ndim, self.unet_model.out_channels)
        self.transformer = build("transformer", {"name": "dense"})

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The displacement ``(B, ndim, *S)`` (voxels) taking ``moving`` onto ``fixed``."""
        params = self.flow(self.unet_model(torch.cat([moving, fixed], 1)))
        return self.transformer(params, moving.shape[2:])["ddf"]


class SegmentationNet(nn.Module):
    """The segmentation network: core's ``vxm-unet`` on one image, dropout (the student's noise,
    only when asked) and a 1x1 classifier: ``(B, C, *S)`` to logits ``(B, num_labels, *S)``.

    It has no normalisation layers, so its weights alone make a teacher (an EMA of them is a
    network of the same function class, with no batch statistics to carry over).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        num_labels: int,
        enc_features: Sequence[int],
        dec_features: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.unet_model = build(
            "backbone",
            {
                "name": "vxm-unet",
                "ndim": ndim,
                "in_channels": in_channels,
                "enc_features": list(enc_features),
                "dec_features": list(dec_features),
            },
        )
        self.dropout = float(dropout)
        self.head = conv_nd(ndim)(self.unet_model.out_channels, num_labels, 1)

    def forward(self, image: torch.Tensor, noise: bool = False) -> torch.Tensor:
        """``image`` ``(B, C, *S)`` to logits ``(B, num_labels, *S)``; ``noise``: drop features
        with probability ``dropout`` (the noisy student), whatever the module's mode."""
        features = self.unet_model(image)
        if noise and self.dropout > 0:
            features = F.dropout(features, self.dropout, training=True)
        return self.head(features)


class Targets:
    """One-hot (pseudo-)label maps ``y`` ``(N, K, *S)``, the voxels kept ``w`` ``(N, 1, *S)``
    (0/1) and the teacher's softmax ``q`` ``(N, K, *S)`` of ``N`` images."""

    def __init__(self, y: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> None:
        self.y, self.w, self.q = y, w, q


class JRSS(RegistrationModel):
    """JRSS (module docstring): ``reg_net``, the student ``seg_net``, ``ema_net`` and
    ``teacher_net``.

    Args:
        ndim: 2 or 3.
        in_channels: image channels.
        num_labels: segmentation classes (background included); label maps hold
            ``0 .. num_labels-1``.
        reg_enc_features, reg_dec_features: the registration U-Net's widths.
        seg_enc_features, seg_dec_features: the segmentation U-Net's widths.
        dropout: the student's dropout probability before its classifier.
        window: the LNCC window of ``L_i``.
        smooth_weight: weight of ``L_r`` (VoxelMorph's gradient regulariser).
        reg_dice_weight: weight of the registration's ``L_d``.
        ce_weight, kl_weight, seg_dice_weight: weights of the student's ``L_c``, ``L_u``, ``L_d``.
        threshold: tau; a teacher's voxel is a pseudo-label when its largest probability is at
            least this.
        ema_decay: EMA decay per student update.
        teacher_steps: steps training the first teacher on the labelled images.
        rounds: self-training rounds (steps past the last round stay in it).
        round_steps: steps per round.
        fresh_optimizer: restart the student's optimiser state (e.g. Adam's moments) when a
            teacher is renewed.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        num_labels: int = _DEFAULTS.num_labels,
        reg_enc_features: Sequence[int] = _DEFAULTS.reg_enc_features,
        reg_dec_features: Sequence[int] = _DEFAULTS.reg_dec_features,
        seg_enc_features: Sequence[int] = _DEFAULTS.seg_enc_features,
        seg_dec_features: Sequence[int] = _DEFAULTS.seg_dec_features,
        dropout: float = _DEFAULTS.dropout,
        window: int = _DEFAULTS.window,
        smooth_weight: float = _DEFAULTS.smooth_weight,
        reg_dice_weight: float = _DEFAULTS.reg_dice_weight,
        ce_weight: float = _DEFAULTS.ce_weight,
        kl_weight: float = _DEFAULTS.kl_weight,
        seg_dice_weight: float = _DEFAULTS.seg_dice_weight,
        threshold: float = _DEFAULTS.threshold,
        ema_decay: float = _DEFAULTS.ema_decay,
        teacher_steps: int = _DEFAULTS.teacher_steps,
        rounds: int = _DEFAULTS.rounds,
        round_steps: int = _DEFAULTS.round_steps,
        fresh_optimizer: bool = _DEFAULTS.fresh_optimizer,
    ) -> None:
        super().__init__()
        if num_labels < 2:
            raise ConfigError(f"jrss: model.num_labels must be at least 2, got {num_labels}")
        if not 0.0 <= ema_decay <= 1.0 or not 0.0 <= threshold <= 1.0:
            raise ConfigError(
                "jrss: model.ema_decay and model.threshold must be in [0, 1], got "
                f"{ema_decay}, {threshold}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"jrss: model.dropout must be in [0, 1), got {dropout}")
        if teacher_steps < 0 or rounds < 1 or round_steps < 1:
            raise ConfigError(
                "jrss: model.teacher_steps must be >= 0, model.rounds and model.round_steps "
                f">= 1, got {teacher_steps}, {rounds}, {round_steps}"
            )
        self.ndim, self.num_labels = ndim, int(num_labels)
        self.reg_net = RegistrationNet(ndim, in_channels, reg_enc_features, reg_dec_features)
        self.seg_net = SegmentationNet(
            ndim, in_channels, self.num_labels, seg_enc_features, seg_dec_features, dropout
        )
        self.ema_net = copy.deepcopy(self.seg_net).requires_grad_(False)
        self.teacher_net = copy.deepcopy(self.seg_net).requires_grad_(False)
        # The round the teacher belongs to (0: none yet), saved with the weights so that a
        # resumed run does not renew a teacher twice.
        self.register_buffer("teacher_round", torch.zeros((), dtype=torch.int64))
        self.similarity = build("loss", {"name": "lncc", "window": window})
        self.regularizer = build("loss", {"name": "grad"})
        self.dice = build("loss", {"name": "dice", "complement": True})
        self.smooth_weight, self.reg_dice_weight = smooth_weight, reg_dice_weight
        self.ce_weight, self.kl_weight = ce_weight, kl_weight
        self.seg_dice_weight = seg_dice_weight
        self.threshold, self.ema_decay = float(threshold), float(ema_decay)
        self.teacher_steps, self.rounds = int(teacher_steps), int(rounds)
        self.round_steps = int(round_steps)
        self.fresh_optimizer = bool(fresh_optimizer)

    # -- schedule ---------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """``registration`` (``reg_net``) and ``segmentation`` (the student); the EMA and the
        teacher are not optimised."""
        return {
            "registration": list(self.reg_net.parameters()),
            "segmentation": list(self.seg_net.parameters()),
        }

    def io_parameters(self) -> Iterable[nn.Parameter]:
        """Instance optimisation refines the registration network only."""
        return self.reg_net.parameters()

    def round_of(self, step: int) -> int:
        """The self-training round of (0-based) ``step``: 0 while the first teacher trains, then
        1 .. ``rounds`` (later steps stay in the last)."""
        if step < self.teacher_steps:
            return 0
        return min(1 + (step - self.teacher_steps) // self.round_steps, self.rounds)

    def stage(self, step: int) -> str:
        """``teacher``, then ``round-1`` .. ``round-R``."""
        r = self.round_of(step)
        return "teacher" if r == 0 else f"round-{r}"

    def renew_teacher(self, round_index: int) -> None:
        """Make the teacher of round ``round_index`` (>= 1): the student itself for round 1 (the
        EMA starts from it too, as it does when no teacher was made before), the EMA of the
        student's weights for later rounds."""
        if round_index == 1 or int(self.teacher_round) == 0:
            self.ema_net.load_state_dict(self.seg_net.state_dict())
        self.teacher_net.load_state_dict(self.ema_net.state_dict())
        self.teacher_round.fill_(round_index)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` to ``ddf`` ``(B, ndim, *S)`` (voxels), ``warped``,
        ``moving_seg`` / ``fixed_seg`` (the student's logits ``(B, num_labels, *S)``, no noise)
        and ``warped_label`` (the moving labels warped linearly, when the batch has them)."""
        ddf = self.reg_net(batch["moving"], batch["fixed"])
        return RegistrationOutput(
            warped=warp(batch["moving"], ddf),
            ddf=ddf,
            moving_seg=self.seg_net(batch["moving"]),
            fixed_seg=self.seg_net(batch["fixed"]),
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels),
        )

    # -- targets ----------------------------------------------------------------------------------
    @staticmethod
    def labelled(batch: Batch, side: str) -> torch.Tensor:
        """Which ``side`` (``moving`` / ``fixed``) images carry a manual label map ``(B,)`` bool:
        none when the batch has no label maps of that side (as for the label-free objective),
        else the batch's flag, else every image."""
        size, device = batch[side].shape[0], batch[side].device
        if f"{side}_label" in batch and f"{side}_labelled" in batch:
            return batch[f"{side}_labelled"].bool().flatten().to(device)
        return torch.full((size,), f"{side}_label" in batch, dtype=torch.bool, device=device)

    @torch.no_grad()
    def targets(self, batch: Batch, side: str, probs: torch.Tensor | None) -> Targets:
        """The (pseudo-)labels of ``side``'s images: manual labels (every voxel kept) where the
        image is labelled, else the arg-max of the teacher's softmax ``probs``
        ``(B, K, *S)`` kept where its maximum is at least ``threshold``. Without ``probs``
        (no teacher yet) an unlabelled image keeps no voxel."""
        image = batch[side]
        shape = (image.shape[0], self.num_labels, *image.shape[2:])
        rows = self.labelled(batch, side).view(-1, *[1] * (image.dim() - 1))
        if probs is None:
            probs = image.new_full(shape, 1.0 / self.num_labels)
            confident = torch.zeros_like(image[:, :1], dtype=torch.bool)
        else:
            confident = probs.amax(1, keepdim=True) >= self.threshold
        pseudo = one_hot(probs.argmax(1, keepdim=True), self.num_labels, probs.dtype)
        if f"{side}_label" in batch:
            manual = one_hot(batch[f"{side}_label"], self.num_labels, probs.dtype)
            y = torch.where(rows, manual, pseudo)
        else:
            y = pseudo
        w = (rows | confident).to(probs.dtype)
        return Targets(y, w, probs)

    def teacher_probs(self, image: torch.Tensor) -> torch.Tensor:
        """The teacher's softmax ``(B, K, *S)`` of ``image`` ``(B, C, *S)`` (no noise, no
        gradient)."""
        with torch.no_grad():
            return self.teacher_net(image).softmax(1)

    # -- losses -----------------------------------------------------------------------------------
    def masked_dice(
        self, pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """``1 -`` soft Dice (every class, background included) of ``pred`` and ``target``
        ``(N, K, *S)`` over the voxels ``keep`` ``(N, 1, *S)`` holds."""
        return self.dice(pred * keep, target * keep)

    def student_terms(
        self,
        images: torch.Tensor,
        targets: Targets,
        labelled: torch.Tensor | None = None,
        noise: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The student's self-training terms on ``images`` ``(N, C, *S)``: ``ce`` ``L_c`` (mean
        over the kept voxels), ``kl`` ``L_u = KL(q || p)`` (mean over voxels), ``dice`` ``L_d``
        (kept voxels); ``loss`` the weighted total.

        ``labelled`` ``(N,)`` bool: the images whose targets are manual labels (or warped manual
        labels); each term is then the sum of its mean over those and its mean over the
        pseudo-labelled images, so that the few labelled images keep their weight among many
        pseudo-labelled ones. ``None``: one mean over all images.
        """
        logits = self.seg_net(images, noise=noise)
        log_p = logits.log_softmax(1)
        if labelled is None:
            groups = [torch.ones(images.shape[0], dtype=torch.bool, device=images.device)]
        else:
            groups = [g for g in (labelled, ~labelled) if bool(g.any())]
        terms = {key: log_p.new_zeros(()) for key in ("ce", "kl", "dice")}
        for rows in groups:
            y, w, q, lp = targets.y[rows], targets.w[rows], targets.q[rows], log_p[rows]
            nll = -(y * lp).sum(1, keepdim=True)
            terms["ce"] = terms["ce"] + (nll * w).sum() / w.sum().clamp(min=1.0)
            terms["kl"] = terms["kl"] + (q * (q.clamp(min=1e-8).log() - lp)).sum(1).mean()
            terms["dice"] = terms["dice"] + self.masked_dice(lp.exp(), y, w)
        terms["loss"] = (
            self.ce_weight * terms["ce"]
            + self.kl_weight * terms["kl"]
            + self.seg_dice_weight * terms["dice"]
        )
        return terms

    def supervised(self, batch: Batch) -> torch.Tensor | None:
        """The first teacher's loss: ``1 -`` soft multi-class Dice of the student's softmax (no
        noise) on the batch's labelled images; ``None`` when none is labelled."""
        probs, labels = [], []
        for side in ("moving", "fixed"):
            rows = self.labelled(batch, side)
            if bool(rows.any()):
                probs.append(self.seg_net(batch[side][rows]).softmax(1))
                labels.append(one_hot(batch[f"{side}_label"][rows], self.num_labels))
        if not probs:
            return None
        return self.dice(torch.cat(probs), torch.cat(labels).to(probs[0].dtype))

    def registration_terms(
        self, batch: Batch, ddf: torch.Tensor, moving: Targets, fixed: Targets
    ) -> dict[str, torch.Tensor]:
        """The registration terms: ``similarity`` ``L_i = -LNCC``, ``smoothness`` ``L_r`` and
        ``dice`` ``L_d`` (the moving (pseudo-)labels warped by ``ddf`` against the fixed ones,
        over voxels kept on both sides; absent when no voxel is); ``loss`` the weighted total."""
        terms = {
            "similarity": self.similarity(warp(batch["moving"], ddf), batch["fixed"]),
            "smoothness": self.regularizer(ddf),
        }
        total = terms["similarity"] + self.smooth_weight * terms["smoothness"]
        with torch.no_grad():
            keep = fixed.w * (warp(moving.w, ddf) > 0.5).to(fixed.w.dtype)
        if bool(keep.any()):
            terms["dice"] = self.masked_dice(warp(moving.y, ddf), fixed.y, keep)
            total = total + self.reg_dice_weight * terms["dice"]
        terms["loss"] = total
        return terms

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """Both networks' supervised objective on one output (manual labels only):
        ``similarity``, ``smoothness``, ``dice`` (pairs with both images labelled) and
        ``supervised`` (the labelled images' segmentation Dice); ``loss`` their weighted sum."""
        moving, fixed = self.targets(batch, "moving", None), self.targets(batch, "fixed", None)
        terms = self.registration_terms(batch, out.ddf, moving, fixed)
        logits, labels = [], []
        for side, seg in (("moving", out.moving_seg), ("fixed", out.fixed_seg)):
            rows = self.labelled(batch, side)
            if bool(rows.any()):
                logits.append(seg[rows])
                labels.append(batch[f"{side}_label"][rows])
        if logits:
            probs = torch.cat(logits).softmax(1)
            target = one_hot(torch.cat(labels), self.num_labels, probs.dtype)
            terms["supervised"] = self.dice(probs, target)
            terms["loss"] = terms["loss"] + self.seg_dice_weight * terms["supervised"]
        return terms

    # -- training ---------------------------------------------------------------------------------
    def _teacher_step(self, batch: Batch, optim: Any) -> dict[str, torch.Tensor]:
        moving, fixed = self.targets(batch, "moving", None), self.targets(batch, "fixed", None)
        ddf = self.reg_net(batch["moving"], batch["fixed"])
        terms = {
            f"reg_{k}": v for k, v in self.registration_terms(batch, ddf, moving, fixed).items()
        }
        optim.step(terms["reg_loss"], "registration")
        supervised = self.supervised(batch)
        if supervised is not None:
            optim.step(self.seg_dice_weight * supervised, "segmentation")
            terms["seg_dice"] = supervised
        return {**terms, "loss": terms["reg_loss"]}

    def _round_step(self, batch: Batch, optim: Any) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            ddf = self.reg_net(batch["moving"], batch["fixed"])
            warped = warp(batch["moving"], ddf)
            size = batch["moving"].shape[0]
            q = self.teacher_probs(torch.cat([batch["moving"], batch["fixed"], warped]))
        moving = self.targets(batch, "moving", q[:size])
        fixed = self.targets(batch, "fixed", q[size : 2 * size])
        with torch.no_grad():
            augmented = Targets(
                warp(moving.y, ddf), (warp(moving.w, ddf) > 0.5).to(moving.w.dtype), q[2 * size :]
            )
        images = torch.cat([batch["moving"], batch["fixed"], warped])
        targets = Targets(
            *(torch.cat([getattr(t, k) for t in (moving, fixed, augmented)]) for k in "ywq")
        )
        rows = torch.cat([self.labelled(batch, "moving"), self.labelled(batch, "fixed")])
        student = self.student_terms(images, targets, torch.cat([rows, rows[:size]]))
        optim.step(student["loss"], "segmentation")
        ema_update(self.ema_net, self.seg_net, self.ema_decay)
        ddf = self.reg_net(batch["moving"], batch["fixed"])
        reg = self.registration_terms(batch, ddf, moving, fixed)
        optim.step(reg["loss"], "registration")
        kept = torch.cat([moving.w, fixed.w]).mean()
        return {
            **{f"seg_{k}": v for k, v in student.items()},
            **{f"reg_{k}": v for k, v in reg.items()},
            "kept": kept,
            "loss": student["loss"] + reg["loss"],
        }

    def training_step(self, batch: Batch, optim: Any, step: int) -> dict[str, torch.Tensor]:
        """One step of :meth:`stage`.

        - ``teacher``: the registration network on ``L_i + L_r`` (+ ``L_d`` on pairs with both
          images labelled), then the student on soft Dice over the labelled images (no update
          when the batch has none);
        - ``round-r``: at the round's first step the teacher is renewed (:meth:`renew_teacher`);
          then one student update (``L_c + L_u + L_d`` on the moving, fixed and warped moving
          images, dropout noise), the EMA of the student's weights, and one registration update
          on ``L_i + L_r + L_d`` with the teacher's pseudo-labels where an image has no labels.

        Returns the terms prefixed ``reg_`` / ``seg_``, ``kept`` (the fraction of voxels with a
        (pseudo-)label) and ``loss``.
        """
        round_index = self.round_of(step)
        if round_index == 0:
            return self._teacher_step(batch, optim)
        if int(self.teacher_round) < round_index:
            self.renew_teacher(round_index)
            if self.fresh_optimizer:
                optim["segmentation"].state.clear()
        return self._round_step(batch, optim)
