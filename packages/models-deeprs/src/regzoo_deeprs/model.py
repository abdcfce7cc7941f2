"""DeepRS: registration, segmentation and a pixel-wise discriminator that complete each other.

He, Li, Yang, Kong, Chen, Shu, Coatrieux, Dillenseger, Li, "Deep Complementary Joint Model for
Complex Scene Registration and Few-shot Segmentation on Medical Images", ECCV 2020 (no official
code). Three networks: R (registration, a U-Net to a dense displacement ``phi``), S
(segmentation, a U-Net to class logits) and D (a pixel-wise discriminator ``D(x, f)`` in (0, 1),
the alignment confidence of image ``x`` with the fixed image ``f`` at each voxel).

- **Deep structure sampling (DSS).** ``phi_hat = alpha phi`` with ``alpha ~ U(0, 1)`` drawn per
  sample; ``(m o phi_hat, s_m o phi_hat)`` (a labelled moving image and its labels, warped
  linearly as one-hot maps) is augmentation data for S.
- **Alignment confidence map (ACM).** ``L_acm = -mean_x D(m o phi_hat, f) sum_k (s_m o
  phi_hat)_k log S(f)_k``: cross-entropy on the fixed image with the warped labels, each voxel
  weighted by D's confidence (D held fixed); with a confidence of one it is plain cross-entropy.
- **Deep region constraint (DRC).** ``L_drc = mean ||S(m o phi_hat) - S(f)||^2`` over the class
  channels of S's softmax, background included (minimised; S held fixed).
- R's loss: ``lambda_adv L_adv + lambda_drc L_drc + lambda_cc (-LNCC(m o phi, f)) + lambda_R
  Grad(phi)``, ``L_adv = -mean log D(m o phi, f)``.
- S's loss: ``lambda_acm L_acm + lambda_ce CE(S(m o phi_hat), s_m o phi_hat)`` over the pairs
  whose moving image is labelled; labelled fixed images add ``CE(S(f), s_f)`` (the same
  supervision at ``phi_hat = identity``).
- D's loss: ``-mean log D(x_r, f) - mean log(1 - D(m o phi_hat, f))``, ``x_r = beta m + (1 - beta)
  f`` (a reference that is aligned by construction).

Each training step updates D, then R, then S once each (1:1:1), the other networks held fixed,
through one optimiser per network (:meth:`DeepRS.parameter_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError
from regzoo.labels import one_hot, warp_label_probabilities
from regzoo.models import Batch, Optimizers, RegistrationModel, RegistrationOutput
from regzoo.nn import conv_nd, field_head
from regzoo.spatial import warp

from . import DeepRSConfig

__all__ = [
    "DeepRS",
    "RegistrationNet",
    "UNetHead",
    "sample_structure",
    "acm_loss",
    "drc_loss",
]

_DEFAULTS = DeepRSConfig()


def _unet(ndim: int, in_channels: int, enc: Sequence[int], dec: Sequence[int]) -> nn.Module:
    return build(
        "backbone",
        {
            "name": "vxm-unet",
            "ndim": ndim,
            "in_channels": in_channels,
            "enc_features": list(enc),
            "dec_features": list(dec),
        },
    )


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off the weight gradients of ``modules`` (inputs keep theirs) for one update of
    another network: the same update, without computing gradients nobody steps with."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class RegistrationNet(nn.Module):
    """R: core's VoxelMorph U-Net on the concatenated pair, a 3x3 flow head (core's
    ``field_head``, near-identity start) and the dense transformer: ``moving``, ``fixed``
    ``(B, C, *S)`` to ``ddf`` ``(B, ndim, *S)`` in voxels."""

    def __init__(
        self, ndim: int, in_channels: int, enc_features: Sequence[int], dec_features: Sequence[int]
    ) -> None:
        super().__init__()
        self.unet_model = _unet(ndim, 2 * in_channels, enc_features, dec_features)
        self.flow = field_head(ndim, self.unet_model.out_channels)
        self.transformer = build("transformer", {"name": "dense"})

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The displacement ``(B, ndim, *S)`` (voxels) taking ``moving`` onto ``fixed``."""
        params = self.flow(self.unet_model(torch.cat([moving, fixed], 1)))
        return self.transformer(params, moving.shape[2:])["ddf"]


class UNetHead(nn.Module):
    """A U-Net (core's ``vxm-unet``) with a 1x1 convolution head: ``(B, in_channels, *S)`` to
    ``(B, out_channels, *S)`` scores. S (``in_channels`` the image's, ``out_channels`` the
    classes: logits) and D (the image and the fixed image concatenated, one channel: the logit
    of the alignment confidence) are both this network."""

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        enc_features: Sequence[int],
        dec_features: Sequence[int],
    ) -> None:
        super().__init__()
        self.unet_model = _unet(ndim, in_channels, enc_features, dec_features)
        self.head = conv_nd(ndim)(self.unet_model.out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, in_channels, *S)`` to scores ``(B, out_channels, *S)``."""
        return self.head(self.unet_model(x))


def sample_structure(ddf: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Deep structure sampling: ``phi_hat = alpha phi``.

    Args:
        ddf: ``(B, ndim, *S)`` displacement in voxels.
        alpha: a float, or ``(B,)`` factors (one per sample, as regzoo draws them).

    Returns:
        ``(B, ndim, *S)``: the displacement scaled per sample (``alpha = 1`` is ``ddf`` itself).
    """
    if not isinstance(alpha, torch.Tensor):
        return ddf * float(alpha)
    return ddf * alpha.to(ddf).view(-1, *[1] * (ddf.dim() - 1))


def acm_loss(
    fixed_logits: torch.Tensor, warped_labels: torch.Tensor, confidence: torch.Tensor
) -> torch.Tensor:
    """The alignment-confidence-map loss ``-mean_x c(x) sum_k y_k(x) log softmax(z)_k(x)``.

    Args:
        fixed_logits: S's logits of the fixed images ``(B, K, *S)``.
        warped_labels: ``s_m o phi_hat`` as probabilities ``(B, K, *S)``.
        confidence: D's alignment confidence ``(B, 1, *S)`` in [0, 1] (no gradient wanted
            through it: pass it detached).

    Returns:
        A scalar; with ``confidence`` all ones it is the cross-entropy of ``fixed_logits``
        against ``warped_labels`` averaged over batch and voxels (core's ``ce`` with logits).
    """
    log_p = F.log_softmax(fixed_logits, dim=1)
    return -(confidence * (warped_labels * log_p).sum(1, keepdim=True)).mean()


def drc_loss(warped_logits: torch.Tensor, fixed_logits: torch.Tensor) -> torch.Tensor:
    """The deep region constraint ``mean ||softmax(S(m o phi_hat)) - softmax(S(f))||^2``, over
    batch, voxels and every class channel (background included); inputs ``(B, K, *S)``."""
    return (warped_logits.softmax(1) - fixed_logits.softmax(1)).square().mean()


class DeepRS(RegistrationModel):
    """DeepRS (module docstring): ``reg_net`` R, ``seg_net`` S and ``disc_net`` D.

    Args:
        ndim: 2 or 3.
        in_channels: image channels.
        num_labels: S's classes (background included); label maps hold ``0 .. num_labels-1``.
        reg_enc_features, reg_dec_features: R's U-Net widths.
        seg_enc_features, seg_dec_features: S's U-Net widths.
        disc_enc_features, disc_dec_features: D's U-Net widths.
        window: the LNCC window.
        adv_weight, drc_weight, cc_weight, grad_weight: lambda_adv (0.1), lambda_drc,
            lambda_cc, lambda_R (1).
        acm_weight, ce_weight: lambda_acm, lambda_ce (1).
        beta: D's reference mix ``x_r = beta m + (1 - beta) f`` (0.7).
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
        disc_enc_features: Sequence[int] = _DEFAULTS.disc_enc_features,
        disc_dec_features: Sequence[int] = _DEFAULTS.disc_dec_features,
        window: int = _DEFAULTS.window,
        adv_weight: float = _DEFAULTS.adv_weight,
        drc_weight: float = _DEFAULTS.drc_weight,
        cc_weight: float = _DEFAULTS.cc_weight,
        grad_weight: float = _DEFAULTS.grad_weight,
        acm_weight: float = _DEFAULTS.acm_weight,
        ce_weight: float = _DEFAULTS.ce_weight,
        beta: float = _DEFAULTS.beta,
        drc_field: str = _DEFAULTS.drc_field,
    ) -> None:
        super().__init__()
        if num_labels < 2:
            raise ConfigError(f"deeprs: model.num_labels must be at least 2, got {num_labels}")
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"deeprs: model.beta must be in [0, 1], got {beta}")
        self.ndim, self.num_labels = ndim, int(num_labels)
        self.reg_net = RegistrationNet(ndim, in_channels, reg_enc_features, reg_dec_features)
        self.seg_net = UNetHead(
            ndim, in_channels, self.num_labels, seg_enc_features, seg_dec_features
        )
        self.disc_net = UNetHead(ndim, 2 * in_channels, 1, disc_enc_features, disc_dec_features)
        self.similarity = build("loss", {"name": "lncc", "window": window})
        self.regularizer = build("loss", {"name": "grad"})
        self.adv_weight, self.drc_weight = float(adv_weight), float(drc_weight)
        self.cc_weight, self.grad_weight = float(cc_weight), float(grad_weight)
        self.acm_weight, self.ce_weight = float(acm_weight), float(ce_weight)
        self.beta = float(beta)
        if drc_field not in ("sampled", "full"):
            raise ConfigError(
                f"deeprs: model.drc_field must be 'sampled' or 'full', got {drc_field!r}"
            )
        self.drc_field = drc_field

    # -- schedule ---------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """``discriminator`` (D), ``registration`` (R) and ``segmentation`` (S)."""
        return {
            "discriminator": list(self.disc_net.parameters()),
            "registration": list(self.reg_net.parameters()),
            "segmentation": list(self.seg_net.parameters()),
        }

    def io_parameters(self) -> Iterable[nn.Parameter]:
        """Instance optimisation refines R only."""
        return self.reg_net.parameters()

    def stage(self, step: int) -> str:
        """One stage: every step updates D, R and S once each."""
        return "joint"

    # -- parts ------------------------------------------------------------------------------------
    def confidence_logits(self, image: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """D's logits ``(B, 1, *S)`` of the alignment of ``image`` with ``fixed`` (both
        ``(B, C, *S)``); the confidence map is their sigmoid."""
        return self.disc_net(torch.cat([image, fixed], 1))

    def confidence(self, image: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """D's alignment confidence map ``(B, 1, *S)`` in (0, 1)."""
        return torch.sigmoid(self.confidence_logits(image, fixed))

    def draw_alpha(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """DSS's factors ``alpha ~ U(0, 1)``, one per sample ``(B,)``."""
        return torch.rand(batch_size, device=device)

    @staticmethod
    def labelled(batch: Batch, side: str) -> torch.Tensor:
        """Which ``side`` (``moving`` / ``fixed``) images carry a label map ``(B,)`` bool: the
        batch's flag, else every image when the batch has the side's labels, else none."""
        size, device = batch[side].shape[0], batch[side].device
        if f"{side}_labelled" in batch:
            return batch[f"{side}_labelled"].bool().flatten().to(device)
        return torch.full((size,), f"{side}_label" in batch, dtype=torch.bool, device=device)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` to ``ddf`` ``(B, ndim, *S)`` (voxels), ``warped``,
        ``moving_seg`` / ``fixed_seg`` (S's logits ``(B, num_labels, *S)``) and ``warped_label``
        (the moving labels warped linearly, when the batch has them)."""
        ddf = self.reg_net(batch["moving"], batch["fixed"])
        return RegistrationOutput(
            warped=warp(batch["moving"], ddf),
            ddf=ddf,
            moving_seg=self.seg_net(batch["moving"]),
            fixed_seg=self.seg_net(batch["fixed"]),
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels),
        )

    # -- losses -----------------------------------------------------------------------------------
    def discriminator_terms(self, batch: Batch, sampled: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's loss ``-mean log D(x_r, f) - mean log(1 - D(m o phi_hat, f))`` with ``sampled``
        ``m o phi_hat`` ``(B, C, *S)`` (detached here); ``real``, ``fake`` and ``loss``."""
        moving, fixed = batch["moving"], batch["fixed"]
        reference = self.beta * moving + (1.0 - self.beta) * fixed
        real = self.confidence_logits(reference, fixed)
        fake = self.confidence_logits(sampled.detach(), fixed)
        terms = {
            "real": F.binary_cross_entropy_with_logits(real, torch.ones_like(real)),
            "fake": F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)),
        }
        terms["loss"] = terms["real"] + terms["fake"]
        return terms

    def registration_terms(
        self, batch: Batch, ddf: torch.Tensor, alpha: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """R's terms (D and S are only evaluated): ``adv`` ``-mean log D(m o phi, f)``, ``drc``
        (:func:`drc_loss` at ``phi_hat = alpha phi``), ``similarity`` ``-LNCC(m o phi, f)``,
        ``grad``; ``loss`` the weighted total."""
        moving, fixed = batch["moving"], batch["fixed"]
        warped = warp(moving, ddf)
        adv = self.confidence_logits(warped, fixed)
        with torch.no_grad():
            fixed_logits = self.seg_net(fixed)
        region = warped if self.drc_field == "full" else warp(moving, sample_structure(ddf, alpha))
        terms = {
            "adv": F.binary_cross_entropy_with_logits(adv, torch.ones_like(adv)),
            "drc": drc_loss(self.seg_net(region), fixed_logits),
            "similarity": self.similarity(warped, fixed),
            "grad": self.regularizer(ddf),
        }
        terms["loss"] = (
            self.adv_weight * terms["adv"]
            + self.drc_weight * terms["drc"]
            + self.cc_weight * terms["similarity"]
            + self.grad_weight * terms["grad"]
        )
        return terms

    def segmentation_terms(
        self,
        batch: Batch,
        ddf: torch.Tensor,
        alpha: torch.Tensor,
        confidence: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """S's terms with R and D fixed, on the pairs whose moving image is labelled: ``acm``
        (:func:`acm_loss`, D's confidence of ``m o phi_hat``, or ``confidence`` ``(B, 1, *S)``
        when given) and ``ce`` (S on ``m o phi_hat`` against ``s_m o phi_hat``, plus S on the
        labelled fixed images against their labels); ``loss`` the weighted total, a constant 0
        when no image of the batch is labelled."""
        ddf = ddf.detach()
        moving, fixed = batch["moving"], batch["fixed"]
        rows = self.labelled(batch, "moving")
        fixed_rows = self.labelled(batch, "fixed")
        terms: dict[str, torch.Tensor] = {}
        total = moving.new_zeros(())
        ce_parts: list[torch.Tensor] = []
        if bool(rows.any()):
            phi_hat = sample_structure(ddf[rows], alpha[rows])
            sampled = warp(moving[rows], phi_hat)
            labels = warp_label_probabilities(batch["moving_label"][rows], phi_hat, self.num_labels)
            if confidence is None:
                with torch.no_grad():
                    conf = self.confidence(sampled, fixed[rows])
            else:
                conf = confidence[rows].detach()
            terms["acm"] = acm_loss(self.seg_net(fixed[rows]), labels, conf)
            total = total + self.acm_weight * terms["acm"]
            ce_parts.append(acm_loss(self.seg_net(sampled), labels, torch.ones_like(conf)))
        if bool(fixed_rows.any()):
            target = one_hot(batch["fixed_label"][fixed_rows], self.num_labels, moving.dtype)
            ones = target.new_ones(target.shape[0], 1, *target.shape[2:])
            ce_parts.append(acm_loss(self.seg_net(fixed[fixed_rows]), target, ones))
        if ce_parts:
            terms["ce"] = torch.stack(ce_parts).mean()
            total = total + self.ce_weight * terms["ce"]
        terms["loss"] = total
        return terms

    def supervised_terms(self, batch: Batch) -> torch.Tensor | None:
        """Cross-entropy of S on every labelled image of the batch (both sides) against its
        labels, a scalar; ``None`` without a labelled image. The segmentation-only baseline."""
        logits, targets = [], []
        for side in ("moving", "fixed"):
            rows = self.labelled(batch, side)
            if bool(rows.any()):
                logits.append(self.seg_net(batch[side][rows]))
                targets.append(one_hot(batch[f"{side}_label"][rows], self.num_labels))
        if not logits:
            return None
        target = torch.cat(targets).to(logits[0].dtype)
        return -(target * F.log_softmax(torch.cat(logits), 1)).sum(1).mean()

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """R's image terms on one output (``similarity``, ``grad``, ``adv`` with D as it is) and,
        when the batch has labels, S's supervised cross-entropy ``ce``; ``loss`` the weighted
        total (the alternating training uses :meth:`training_step`)."""
        adv = self.confidence_logits(out.warped, batch["fixed"])
        terms = {
            "similarity": self.similarity(out.warped, batch["fixed"]),
            "grad": self.regularizer(out.ddf),
            "adv": F.binary_cross_entropy_with_logits(adv, torch.ones_like(adv)),
        }
        total = (
            self.cc_weight * terms["similarity"]
            + self.grad_weight * terms["grad"]
            + self.adv_weight * terms["adv"]
        )
        supervised = self.supervised_terms(batch)
        if supervised is not None:
            terms["ce"] = supervised
            total = total + self.ce_weight * supervised
        terms["loss"] = total
        return terms

    def objective(self, batch: Batch, out: RegistrationOutput) -> torch.Tensor:
        """The label-free objective of instance optimisation: ``lambda_cc (-LNCC) + lambda_R
        Grad``."""
        return self.cc_weight * self.similarity(
            out.warped, batch["fixed"]
        ) + self.grad_weight * self.regularizer(out.ddf)

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Batch, optim: Optimizers, step: int) -> dict[str, torch.Tensor]:
        """One step: D, then R, then S, one update each (1:1:1), one ``alpha`` per sample shared
        by the three. Returns the terms prefixed ``disc_`` / ``reg_`` / ``seg_``; ``loss`` R's."""
        moving = batch["moving"]
        alpha = self.draw_alpha(moving.shape[0], moving.device)
        ddf = self.reg_net(moving, batch["fixed"])
        sampled = warp(moving, sample_structure(ddf.detach(), alpha))
        disc = self.discriminator_terms(batch, sampled)
        optim.step(disc["loss"], "discriminator")
        with _frozen(self.disc_net, self.seg_net):
            reg = self.registration_terms(batch, ddf, alpha)
            optim.step(reg["loss"], "registration")
        seg = self.segmentation_terms(batch, ddf.detach(), alpha)
        if seg["loss"].requires_grad:
            optim.step(seg["loss"], "segmentation")
        terms = {f"disc_{k}": v for k, v in disc.items()}
        terms.update({f"reg_{k}": v for k, v in reg.items()})
        terms.update({f"seg_{k}": v for k, v in seg.items()})
        return {**terms, "loss": reg["loss"]}
