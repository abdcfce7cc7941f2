"""JSSR: joint synthesis, segmentation and registration.

F. Liu et al., "JSSR: A Joint Synthesis, Segmentation, and Registration System
for 3D Multi-Modal Image Alignment of Large-scale Pathological CT Scans", ECCV 2020
(arXiv 2005.12209). No official code exists; this follows the paper's method section.

Notation as in the paper: x is the moving image (source modality), y the fixed image (target
modality). Four networks:

- G(x, y): synthesises x in y's modality (:class:`~regzoo_jssr.networks.Generator`);
- D: tells real target-modality images y from syntheses G(x, y) (PatchGAN);
- Phi: registers G(x, y) to y, an intra-modal problem, giving the transformation tau;
- S: segments target-modality images.

Losses (the paper's, with y "real" and G(x, y) "fake"):

- ``L_GAN(G, D)``: the conditional-GAN loss (binary cross-entropy on PatchGAN logits, or least
  squares);
- ``L_reg(G, Phi) = ||tau(G(x, y)) - y||_1 + lambda_smooth ||grad tau||^2``: pix2pix's L1 term,
  rewritten through the registration since the aligned target tau^-1(y) is not available;
- ``F(Phi, G) = L_GAN + L_reg``;
- ``H = (1 - Dice(tau(S(G(x, y))), S(y))) + (1 - Dice(S(y_sup), p_sup))``: cross-modal
  consistency of the segmentations once aligned, and supervision on labelled images of the
  *target* modality only (the fixed images' labels here; the moving images' labels are never
  read in training);
- total ``F + lambda_seg H`` (``lambda_seg = 1``, smoothness weight 1).

Schedule (:meth:`JSSR.stage` is a pure function of the step, so a resumed run continues the right
stage): ``pretrain-seg`` trains S on the supervised set; ``pretrain-synth-reg`` trains G and Phi
with F (each step a D update, then a (G, Phi) update); ``joint`` trains G, Phi and S with
``F + lambda_seg H`` (each step a D update, then a (G, Phi, S) update).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo import ConfigError, build
from regzoo.labels import one_hot
from regzoo.models import Batch, RegistrationModel, RegistrationOutput
from regzoo.spatial import warp

from . import JSSRConfig
from .networks import Generator, PatchDiscriminator, Register, Segmentor

__all__ = ["JSSR", "STAGES"]

STAGES: tuple[str, str, str] = ("pretrain-seg", "pretrain-synth-reg", "joint")
_GAN_LOSSES = ("bce", "lsgan")
# The registered entry's config is the one source of the defaults.
_DEFAULTS = JSSRConfig()


class JSSR(RegistrationModel):
    """Generator, discriminator, register and segmentor trained in three stages.

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels: image channels.
        num_classes: classes S predicts (background included); labels are ``0 .. num_classes-1``.
        generator: keyword arguments of :class:`~regzoo_jssr.networks.Generator`.
        discriminator: keyword arguments of :class:`~regzoo_jssr.networks.PatchDiscriminator`.
        backbone: registry config of Phi's backbone (the VoxelMorph U-Net by default).
        transformer: registry config of Phi's spatial transformer (``dense`` or ``svf``).
        segmentor: registry config of S's backbone.
        gan_loss: ``"bce"`` (the vanilla conditional-GAN loss) or ``"lsgan"`` (least squares).
        gan_weight: weight of L_GAN in F.
        smooth_weight: lambda_smooth, weight of ``||grad tau||^2`` in L_reg.
        seg_weight: lambda_seg, weight of H in the joint objective.
        seg_ce_weight: weight of a voxel-wise cross-entropy added to S's supervised Dice (0, the
            paper's pure Dice, by default). Soft Dice alone, one image per step, can drop a class
            for good: S then never predicts it and its Dice has no gradient towards it.
        stage_steps: steps of the three stages; the joint stage continues past its count.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        num_classes: int = _DEFAULTS.num_classes,
        generator: Mapping[str, Any] = _DEFAULTS.generator,
        discriminator: Mapping[str, Any] = _DEFAULTS.discriminator,
        backbone: Mapping[str, Any] = _DEFAULTS.backbone,
        transformer: Mapping[str, Any] = _DEFAULTS.transformer,
        segmentor: Mapping[str, Any] = _DEFAULTS.segmentor,
        gan_loss: str = _DEFAULTS.gan_loss,
        gan_weight: float = _DEFAULTS.gan_weight,
        smooth_weight: float = _DEFAULTS.smooth_weight,
        seg_weight: float = _DEFAULTS.seg_weight,
        seg_ce_weight: float = _DEFAULTS.seg_ce_weight,
        stage_steps: Sequence[int] = _DEFAULTS.stage_steps,
    ) -> None:
        super().__init__()
        if gan_loss not in _GAN_LOSSES:
            raise ConfigError(f"model.gan_loss must be one of {_GAN_LOSSES}, got {gan_loss!r}")
        if len(stage_steps) != 3 or any(int(s) < 0 for s in stage_steps):
            raise ConfigError(
                f"model.stage_steps needs three non-negative step counts, got {list(stage_steps)}"
            )
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be at least 2, got {num_classes}")
        weights = {
            "gan_weight": gan_weight,
            "smooth_weight": smooth_weight,
            "seg_weight": seg_weight,
            "seg_ce_weight": seg_ce_weight,
        }
        for key, value in weights.items():
            if not value >= 0:
                raise ConfigError(f"model.{key} must be a non-negative loss weight, got {value}")
        self.ndim = ndim
        self.num_classes = num_classes
        self.generator = Generator(ndim, in_channels, **generator)
        self.discriminator = PatchDiscriminator(ndim, in_channels, **discriminator)
        self.register_net = Register(ndim, in_channels, backbone, transformer)
        self.segmentor = Segmentor(ndim, in_channels, num_classes, segmentor)
        self.dice = build("loss", {"name": "dice", "complement": True})  # 1 - Dice
        self.smoothness = build("loss", {"name": "grad", "penalty": "l2"})
        self.cross_entropy = build("loss", {"name": "ce", "logits": True})
        self.gan_loss = gan_loss
        self.gan_weight = gan_weight
        self.smooth_weight = smooth_weight
        self.seg_weight = seg_weight
        self.seg_ce_weight = seg_ce_weight
        self.stage_steps = tuple(int(s) for s in stage_steps)

    # -- schedule ---------------------------------------------------------------------------------
    def stage(self, step: int) -> str:
        """``pretrain-seg``, ``pretrain-synth-reg`` or ``joint`` at (0-based) ``step``."""
        seg, synth_reg, _ = self.stage_steps
        if step < seg:
            return STAGES[0]
        if step < seg + synth_reg:
            return STAGES[1]
        return STAGES[2]

    def parameter_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """``model`` (G, Phi and S) and ``disc`` (D).

        One optimiser holds G, Phi and S: each stage updates the networks its loss reaches
        (parameters without a gradient are skipped), every network keeps its optimiser state
        from one stage to the next, and the joint (G, Phi, S) update is one backward pass.
        (One optimiser per network, G and Phi then starting stage 2 at the undecayed learning
        rate, gave a smaller joint-stage gain on an earlier quick preset.)
        """
        return {
            "model": [
                *self.generator.parameters(),
                *self.register_net.parameters(),
                *self.segmentor.parameters(),
            ],
            "disc": list(self.discriminator.parameters()),
        }

    def io_parameters(self) -> Iterable[nn.Parameter]:
        """Instance optimisation refines Phi only; G and S stay as trained."""
        return self.register_net.parameters()

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> RegistrationOutput:
        """Synthesis, registration and both segmentations for a batch.

        Returns:
            ``warped`` (x warped by tau), ``ddf`` (tau), ``synthesized`` (G(x, y), in x's
            geometry), ``moving_seg`` (S(G(x, y)) logits, x's geometry), ``fixed_seg`` (S(y)
            logits), ``warped_label`` (one-hot moving labels warped linearly, when the batch has
            ``moving_label``) and ``extras["warped_synthesized"]`` (tau(G(x, y))).
        """
        out = self._run(batch, segment=True)
        out.warped_label = self.warp_moving_labels(batch, out.ddf, self.num_classes)
        return out

    def _run(
        self, batch: Batch, segment: bool, synthesized: torch.Tensor | None = None
    ) -> RegistrationOutput:
        """Forward pass that reads only ``moving`` and ``fixed`` from the batch."""
        x, y = batch["moving"], batch["fixed"]
        if synthesized is None:
            synthesized = self.generator(x, y)
        field = self.register_net(synthesized, y)
        ddf = field["ddf"]
        out = RegistrationOutput(
            warped=warp(x, ddf),
            ddf=ddf,
            velocity=field.get("velocity"),
            synthesized=synthesized,
            extras={"warped_synthesized": warp(synthesized, ddf)},
        )
        if segment:
            out.moving_seg = self.segmentor(synthesized)
            out.fixed_seg = self.segmentor(y)
        return out

    # -- losses -----------------------------------------------------------------------------------
    def _gan(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if real else 0.0)
        if self.gan_loss == "lsgan":
            return F.mse_loss(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """D's loss: y is real, G(x, y) (detached) is fake; halved as in pix2pix."""
        d = self.discriminator
        return 0.5 * (self._gan(d(real), True) + self._gan(d(fake.detach()), False))

    def supervised_loss(
        self, batch: Batch, fixed_seg: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``1 - Dice(S(y_sup), p_sup)`` (plus ``seg_ce_weight`` times the cross-entropy) over
        the labelled fixed (target-modality) images.

        Uses ``fixed_label`` only, on the samples whose map has a non-zero label: regzoo's file
        datasets give an image without a label map an all-zero map (their ``labelled`` flag says
        whether *both* images have one, which is not what supervision of the fixed image needs).
        ``None`` when no fixed image is labelled. ``fixed_seg`` (S(y) logits, if already
        computed) saves a forward pass of S.
        """
        if "fixed_label" not in batch:
            return None
        labels = batch["fixed_label"]
        keep = labels.flatten(1).ne(0).any(1)
        if not bool(keep.any()):
            return None
        logits = self.segmentor(batch["fixed"]) if fixed_seg is None else fixed_seg
        if not bool(keep.all()):
            logits, labels = logits[keep], labels[keep]
        target = one_hot(labels, self.num_classes, logits.dtype)
        loss = self.dice(logits.softmax(1), target)
        if self.seg_ce_weight:
            loss = loss + self.seg_ce_weight * self.cross_entropy(logits, target)
        return loss

    def segmentation_terms(
        self,
        batch: Batch,
        moving_seg: torch.Tensor,
        fixed_seg: torch.Tensor,
        ddf: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The terms of H: ``seg_consistency`` ``1 - Dice(tau(S(G(x, y))), S(y))`` and, where
        fixed images are labelled, ``seg_supervised`` (:meth:`supervised_loss`).

        Args:
            moving_seg: S(G(x, y)) logits ``(B, K, *S)``; fixed_seg: S(y) logits; ddf: tau.
        """
        warped_seg = warp(moving_seg.softmax(1), ddf)
        terms = {"seg_consistency": self.dice(warped_seg, fixed_seg.softmax(1))}
        supervised = self.supervised_loss(batch, fixed_seg)
        if supervised is not None:
            terms["seg_supervised"] = supervised
        return terms

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """The (G, Phi, S) objective ``F + lambda_seg H`` by term; ``"loss"`` is the total.

        The segmentation terms are included when ``out`` carries both segmentations (the joint
        stage and evaluation); the supervised term needs ``fixed_label`` in the batch.
        """
        y = batch["fixed"]
        terms = {
            "gan": self._gan(self.discriminator(out.synthesized), True),
            "l1": (out.extras["warped_synthesized"] - y).abs().mean(),
            "smooth": self.smoothness(out.ddf),
        }
        total = self.gan_weight * terms["gan"] + terms["l1"] + self.smooth_weight * terms["smooth"]
        if out.moving_seg is not None and out.fixed_seg is not None:
            seg_terms = self.segmentation_terms(batch, out.moving_seg, out.fixed_seg, out.ddf)
            terms.update(seg_terms)
            total = total + self.seg_weight * sum(seg_terms.values())
        terms["loss"] = total
        return terms

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Batch, optim: Any, step: int) -> dict[str, torch.Tensor]:
        """One step of the stage at ``step``; never reads ``moving_label``.

        - ``pretrain-seg``: S on the labelled fixed images;
        - ``pretrain-synth-reg``: a D step (optimiser ``disc``), then G and Phi with F;
        - ``joint``: a D step, then G, Phi and S with ``F + lambda_seg H``.
        """
        stage = self.stage(step)
        if stage == STAGES[0]:
            supervised = self.supervised_loss(batch)
            if supervised is None:
                raise ConfigError(
                    "JSSR's segmentation pre-training needs labelled fixed images (fixed_label)"
                )
            optim.step(supervised, "model")
            return {"seg_supervised": supervised, "loss": supervised}
        synthesized = self.generator(batch["moving"], batch["fixed"])
        d_loss = self.discriminator_loss(batch["fixed"], synthesized)
        optim.step(d_loss, "disc")
        joint = stage == STAGES[2]
        out = self._run(batch, segment=joint, synthesized=synthesized)
        terms = self.loss(batch, out)
        optim.step(terms["loss"], "model")
        return {**terms, "disc": d_loss}
