"""DeepAtlas: a registration and a segmentation network that supervise each other.

Xu, Niethammer, "DeepAtlas: Joint Semi-Supervised Learning of Image Registration and
Segmentation", MICCAI 2019 (doi:10.1007/978-3-030-32245-8_47); official PyTorch code
``uncbiag/DeepAtlas``. With few labelled images, F_R (registration) and F_S (segmentation) train
together:

- F_R's loss ``L_i + lambda_r L_r + lambda_a L_a``: ``L_i = -LNCC_9(m o phi, t)``, ``L_r`` the
  bending energy of the displacement, and the anatomy loss ``L_a = 1 - Dice(s_m o phi, s_t)``
  (soft Dice, every label including the background), where ``s`` is an image's manual label map
  (one-hot) or, without one, F_S's prediction (softmax, held fixed);
- F_S's loss ``lambda_a L_a + lambda_sp L_sp``: ``L_sp = 1 - Dice`` of its prediction against
  the manual labels (soft Dice, as the official segmentation script), ``L_a`` through the
  predicted side of pairs with exactly one labelled image, F_R held fixed. Pairs with both
  images labelled give F_S no anatomy term (it would not reach F_S), pairs with neither none at
  all: a batch of unlabelled pairs is no segmentation update (loss 0).

Schedule (:meth:`DeepAtlas.stage`, a pure function of the step): ``pretrain`` trains both
networks separately (F_R unsupervised, F_S supervised, one update each per step); with
``one_shot`` (Semi-DeepAtlas, one labelled image) ``pretrain-reg`` trains F_R unsupervised, then
``train-seg`` trains F_S from scratch with F_R frozen; then the joint phase alternates, each
network held fixed while the other learns: one ``joint-seg`` step, then ``reg_per_seg``
(official 20) ``joint-reg`` steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError
from regzoo.labels import one_hot
from regzoo.models import Batch, RegistrationModel, RegistrationOutput
from regzoo.nn import conv_nd, conv_transpose_nd, field_head, max_pool_nd
from regzoo.spatial import warp

from . import DeepAtlasConfig

__all__ = ["DeepAtlas", "RegistrationNet", "SegmentationUNet", "STAGES"]

STAGES: tuple[str, ...] = ("pretrain", "pretrain-reg", "train-seg", "joint-seg", "joint-reg")
_DEFAULTS = DeepAtlasConfig()


class RegistrationNet(nn.Module):
    """F_R: VoxelMorph's U-Net (stride-2 encoder, as the official ``VoxelMorphCVPR2018``) with a
    3x3 flow head and a dense transformer: ``(B, 2C, *S)`` to ``ddf`` ``(B, ndim, *S)`` voxels."""

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        enc_features: Sequence[int],
        dec_features: Sequence[int],
        negative_slope: float,
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
                "negative_slope": negative_slope,
                "strided": True,
            },
        )
        self.flow = field_head(ndim, self.unet_model.out_channels)
        self.transformer = build("transformer", {"name": "dense"})

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The displacement ``(B, ndim, *S)`` (voxels) taking ``moving`` onto ``fixed``."""
        params = self.flow(self.unet_model(torch.cat([moving, fixed], 1)))
        return self.transformer(params, moving.shape[2:])["ddf"]


class SegmentationUNet(nn.Module):
    """F_S: the official 3D U-Net: two 3x3 convolutions (ReLU, no bias) per level, three max
    pools, transposed-convolution (2x2, stride 2, ReLU) upsampling, skip concatenation and a 1x1
    output convolution: ``(B, C, *S)`` to logits ``(B, num_labels, *S)``.

    ``features``: the eight encoder widths (official 32, 64, 64, 128, 128, 256, 256, 512); each
    decoder level's convolutions take the width of the skip it joins.
    """

    def __init__(
        self, ndim: int, in_channels: int, num_labels: int, features: Sequence[int]
    ) -> None:
        super().__init__()
        if len(features) != 8:
            raise ConfigError(
                f"deepatlas: model.seg_features needs 8 widths (two per level), got {list(features)}"
            )
        conv, up = conv_nd(ndim), conv_transpose_nd(ndim)

        def pair(cin: int, mid: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                conv(cin, mid, 3, padding=1, bias=False),
                nn.ReLU(),
                conv(mid, cout, 3, padding=1, bias=False),
                nn.ReLU(),
            )

        widths = [int(f) for f in features]
        self.encoder = nn.ModuleList()
        prev = in_channels
        for level in range(4):
            self.encoder.append(pair(prev, widths[2 * level], widths[2 * level + 1]))
            prev = widths[2 * level + 1]
        self.pool = max_pool_nd(ndim)(2, ceil_mode=True)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in (2, 1, 0):
            skip = widths[2 * level + 1]
            self.up.append(nn.Sequential(up(prev, prev, 2, stride=2, bias=False), nn.ReLU()))
            self.decoder.append(pair(prev + skip, skip, skip))
            prev = skip
        self.head = conv(prev, num_labels, 1, bias=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ``(B, C, *S)`` to logits ``(B, num_labels, *S)``."""
        skips = []
        x = image
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < 3:
                skips.append(x)
                x = self.pool(x)
        for up, block in zip(self.up, self.decoder):
            skip = skips.pop()
            x = up(x)[(...,) + tuple(slice(0, s) for s in skip.shape[2:])]
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


class DeepAtlas(RegistrationModel):
    """DeepAtlas (module docstring): F_R ``reg_net`` and F_S ``seg_net``, trained jointly.

    Args:
        ndim: 2 or 3.
        in_channels: image channels.
        num_labels: F_S's classes (background included); label maps hold ``0 .. num_labels-1``.
        reg_enc_features, reg_dec_features, negative_slope: F_R's U-Net (VoxelMorph's
            ``[16, 32, 32, 32]``, ``[32, 32, 32, 32, 8, 8]``, ReLU as the official code).
        seg_features: F_S's eight encoder widths.
        window: the LNCC window (9).
        reg_weight, anatomy_weight, sup_weight: lambda_r, lambda_a, lambda_sp (1, 1, 3).
        one_shot: Semi-DeepAtlas's schedule (F_R pre-trained, then F_S from scratch).
        pretrain_steps: steps of pre-training (both networks; F_R alone with ``one_shot``).
        seg_steps: with ``one_shot``, steps training F_S with F_R frozen.
        reg_per_seg: F_R steps per F_S step in the joint phase (official 20).
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        num_labels: int = _DEFAULTS.num_labels,
        reg_enc_features: Sequence[int] = _DEFAULTS.reg_enc_features,
        reg_dec_features: Sequence[int] = _DEFAULTS.reg_dec_features,
        negative_slope: float = _DEFAULTS.negative_slope,
        seg_features: Sequence[int] = _DEFAULTS.seg_features,
        window: int = _DEFAULTS.window,
        reg_weight: float = _DEFAULTS.reg_weight,
        anatomy_weight: float = _DEFAULTS.anatomy_weight,
        sup_weight: float = _DEFAULTS.sup_weight,
        one_shot: bool = _DEFAULTS.one_shot,
        pretrain_steps: int = _DEFAULTS.pretrain_steps,
        seg_steps: int = _DEFAULTS.seg_steps,
        reg_per_seg: int = _DEFAULTS.reg_per_seg,
    ) -> None:
        super().__init__()
        if num_labels < 2:
            raise ConfigError(f"deepatlas: model.num_labels must be at least 2, got {num_labels}")
        if pretrain_steps < 0 or seg_steps < 0 or reg_per_seg < 1:
            raise ConfigError(
                "deepatlas: model.pretrain_steps and model.seg_steps must be >= 0 and "
                f"model.reg_per_seg >= 1, got {pretrain_steps}, {seg_steps}, {reg_per_seg}"
            )
        self.ndim, self.num_labels = ndim, int(num_labels)
        self.reg_net = RegistrationNet(
            ndim, in_channels, reg_enc_features, reg_dec_features, negative_slope
        )
        self.seg_net = SegmentationUNet(ndim, in_channels, self.num_labels, seg_features)
        self.similarity = build("loss", {"name": "lncc", "window": window})
        self.regularizer = build("loss", {"name": "bending"})
        self.dice = build("loss", {"name": "dice", "complement": True})
        self.reg_weight, self.anatomy_weight, self.sup_weight = (
            reg_weight,
            anatomy_weight,
            sup_weight,
        )
        self.one_shot = bool(one_shot)
        self.pretrain_steps, self.seg_steps = int(pretrain_steps), int(seg_steps)
        self.reg_per_seg = int(reg_per_seg)

    # -- schedule ---------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """``registration`` (F_R) and ``segmentation`` (F_S), one optimiser each."""
        return {
            "registration": list(self.reg_net.parameters()),
            "segmentation": list(self.seg_net.parameters()),
        }

    def io_parameters(self) -> Iterable[nn.Parameter]:
        """Instance optimisation refines F_R only."""
        return self.reg_net.parameters()

    def stage(self, step: int) -> str:
        """The stage at (0-based) ``step``: ``pretrain`` (or ``pretrain-reg`` then ``train-seg``
        with ``one_shot``), then ``joint-seg`` every ``reg_per_seg + 1`` steps starting with the
        first joint step, ``joint-reg`` between."""
        start = self.pretrain_steps
        if self.one_shot:
            if step < self.pretrain_steps:
                return "pretrain-reg"
            start += self.seg_steps
            if step < start:
                return "train-seg"
        elif step < start:
            return "pretrain"
        return "joint-seg" if (step - start) % (self.reg_per_seg + 1) == 0 else "joint-reg"

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` to ``ddf`` ``(B, ndim, *S)`` (voxels), ``warped``,
        ``moving_seg`` / ``fixed_seg`` (F_S's logits ``(B, num_labels, *S)``) and
        ``warped_label`` (the moving labels warped linearly, when the batch has them)."""
        ddf = self.reg_net(batch["moving"], batch["fixed"])
        return RegistrationOutput(
            warped=warp(batch["moving"], ddf),
            ddf=ddf,
            moving_seg=self.seg_net(batch["moving"]),
            fixed_seg=self.seg_net(batch["fixed"]),
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels),
        )

    # -- losses -----------------------------------------------------------------------------------
    @staticmethod
    def labelled(batch: Batch, side: str) -> torch.Tensor:
        """Which ``side`` (``moving`` / ``fixed``) images carry a manual label map ``(B,)`` bool:
        the batch's flag, else every image when the batch has the side's labels, else none."""
        size = batch[side].shape[0]
        device = batch[side].device
        if f"{side}_labelled" in batch:
            return batch[f"{side}_labelled"].bool().flatten().to(device)
        return torch.full((size,), f"{side}_label" in batch, dtype=torch.bool, device=device)

    def anatomy_map(self, batch: Batch, side: str, logits: torch.Tensor) -> torch.Tensor:
        """``s`` of the anatomy loss ``(B, num_labels, *S)``: the one-hot manual labels where the
        image has them, F_S's softmax (from ``logits``) elsewhere."""
        probs = logits.softmax(1)
        rows = self.labelled(batch, side)
        if not bool(rows.any()):
            return probs
        manual = one_hot(batch[f"{side}_label"], self.num_labels, probs.dtype)
        return torch.where(rows.view(-1, *[1] * (probs.dim() - 1)), manual, probs)

    def supervised(
        self, batch: Batch, moving_logits: torch.Tensor, fixed_logits: torch.Tensor
    ) -> torch.Tensor | None:
        """``L_sp``: ``1 -`` soft Dice of F_S's softmax on the labelled images of both sides
        against their labels; ``None`` when no image is labelled."""
        probs, targets = [], []
        for side, logits in (("moving", moving_logits), ("fixed", fixed_logits)):
            rows = self.labelled(batch, side)
            if bool(rows.any()):
                probs.append(logits[rows].softmax(1))
                targets.append(one_hot(batch[f"{side}_label"][rows], self.num_labels))
        if not probs:
            return None
        return self.dice(torch.cat(probs), torch.cat(targets).to(probs[0].dtype))

    def registration_terms(
        self, batch: Batch, ddf: torch.Tensor, anatomy: bool
    ) -> dict[str, torch.Tensor]:
        """F_R's terms with F_S fixed: ``similarity`` (``-LNCC``), ``bending`` and, with
        ``anatomy``, ``anatomy`` ``L_a`` (F_S's predictions, without gradient, where an image
        has no label); ``loss`` the weighted total."""
        terms = {
            "similarity": self.similarity(warp(batch["moving"], ddf), batch["fixed"]),
            "bending": self.regularizer(ddf),
        }
        total = terms["similarity"] + self.reg_weight * terms["bending"]
        if anatomy:
            with torch.no_grad():
                logits = {
                    side: self._segment_unlabelled(batch, side) for side in ("moving", "fixed")
                }
            s_m = self.anatomy_map(batch, "moving", logits["moving"])
            s_t = self.anatomy_map(batch, "fixed", logits["fixed"])
            terms["anatomy"] = self.dice(warp(s_m, ddf), s_t)
            total = total + self.anatomy_weight * terms["anatomy"]
        terms["loss"] = total
        return terms

    def _segment_unlabelled(self, batch: Batch, side: str) -> torch.Tensor:
        """F_S's logits of ``side``'s images; skipped (zeros) when every image is labelled."""
        image = batch[side]
        if bool(self.labelled(batch, side).all()):
            return image.new_zeros(image.shape[0], self.num_labels, *image.shape[2:])
        return self.seg_net(image)

    def segmentation_terms(self, batch: Batch, ddf: torch.Tensor) -> dict[str, torch.Tensor]:
        """F_S's terms with F_R fixed (``ddf`` detached): ``supervised`` ``L_sp`` (labelled
        images) and ``anatomy`` ``L_a`` over the pairs with exactly one labelled image; ``loss``
        the weighted total, a constant 0 when the batch has no labelled image."""
        moving_logits = self.seg_net(batch["moving"])
        fixed_logits = self.seg_net(batch["fixed"])
        terms: dict[str, torch.Tensor] = {}
        total = moving_logits.new_zeros(())
        supervised = self.supervised(batch, moving_logits, fixed_logits)
        if supervised is not None:
            terms["supervised"] = supervised
            total = total + self.sup_weight * supervised
        rows = self.labelled(batch, "moving") ^ self.labelled(batch, "fixed")
        if bool(rows.any()):
            s_m = self.anatomy_map(batch, "moving", moving_logits)[rows]
            s_t = self.anatomy_map(batch, "fixed", fixed_logits)[rows]
            terms["anatomy"] = self.dice(warp(s_m, ddf.detach()[rows]), s_t)
            total = total + self.anatomy_weight * terms["anatomy"]
        terms["loss"] = total
        return terms

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """Both networks' objectives on one output: ``similarity``, ``bending``, ``anatomy``
        (manual labels where present, F_S's softmax elsewhere) and ``supervised`` (labelled
        images); ``loss`` ``L_i + lambda_r L_r + lambda_a L_a + lambda_sp L_sp``."""
        terms = {
            "similarity": self.similarity(out.warped, batch["fixed"]),
            "bending": self.regularizer(out.ddf),
        }
        s_m = self.anatomy_map(batch, "moving", out.moving_seg)
        s_t = self.anatomy_map(batch, "fixed", out.fixed_seg)
        terms["anatomy"] = self.dice(warp(s_m, out.ddf), s_t)
        total = (
            terms["similarity"]
            + self.reg_weight * terms["bending"]
            + self.anatomy_weight * terms["anatomy"]
        )
        supervised = self.supervised(batch, out.moving_seg, out.fixed_seg)
        if supervised is not None:
            terms["supervised"] = supervised
            total = total + self.sup_weight * supervised
        terms["loss"] = total
        return terms

    # -- training ---------------------------------------------------------------------------------
    def _seg_update(self, batch: Batch, optim: Any) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            ddf = self.reg_net(batch["moving"], batch["fixed"])
        terms = self.segmentation_terms(batch, ddf)
        if terms["loss"].requires_grad:
            optim.step(terms["loss"], "segmentation")
        return {f"seg_{k}": v for k, v in terms.items()}

    def _reg_update(self, batch: Batch, optim: Any, anatomy: bool) -> dict[str, torch.Tensor]:
        ddf = self.reg_net(batch["moving"], batch["fixed"])
        terms = self.registration_terms(batch, ddf, anatomy)
        optim.step(terms["loss"], "registration")
        return {f"reg_{k}": v for k, v in terms.items()}

    def training_step(self, batch: Batch, optim: Any, step: int) -> dict[str, torch.Tensor]:
        """One step of :meth:`stage`; each update changes one network only.

        - ``pretrain``: F_R unsupervised (``L_i + lambda_r L_r``), then F_S on ``L_sp`` alone
          (no update when the batch has no labelled image);
        - ``pretrain-reg``: F_R unsupervised; ``train-seg`` and ``joint-seg``: F_S with F_R
          fixed (:meth:`segmentation_terms`); ``joint-reg``: F_R with F_S fixed, the anatomy
          loss included.

        Returns the terms prefixed ``reg_`` / ``seg_``; ``loss`` the last update's.
        """
        stage = self.stage(step)
        if stage in ("train-seg", "joint-seg"):
            terms = self._seg_update(batch, optim)
            return {**terms, "loss": terms["seg_loss"]}
        terms = self._reg_update(batch, optim, anatomy=stage == "joint-reg")
        if stage == "pretrain":
            logits = [self.seg_net(batch[side]) for side in ("moving", "fixed")]
            supervised = self.supervised(batch, *logits)
            if supervised is not None:
                optim.step(self.sup_weight * supervised, "segmentation")
                terms["seg_supervised"] = supervised
        return {**terms, "loss": terms["reg_loss"]}
