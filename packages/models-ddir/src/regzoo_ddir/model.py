"""DDIR: one diffeomorphic network per region, fields summed under the fixed image's region masks.

Chen, Xia, Ravikumar, Frangi, "A deep discontinuity-preserving image registration network",
MICCAI 2021 (doi:10.1007/978-3-030-87202-1_5); official Keras code ``ccmim/DDIR``. A single
smooth field cannot follow the ventricles of the heart moving against each other; DDIR registers
each region with its own probabilistic diffeomorphic VoxelMorph (Dalca et al., MICCAI 2018) and
adds the fields under the fixed image's region masks, so the field is smooth inside each region
and may tear at region boundaries:

- network ``k`` sees ``(moving * mask_k(moving regions), fixed * mask_k(fixed regions))``; a
  VoxelMorph U-Net in the Keras layout (stride-2 encoder convolutions; encoder
  ``[16, 32, 32, 32]``, decoder ``[32, 32, 32, 32, 16]``, LeakyReLU 0.3, ending at half
  resolution) predicts a velocity mean and log variance (heads ``N(0, 1e-5)`` and
  ``N(0, 1e-10)`` with bias -10, as VoxelMorph-diff);
- training samples ``v_k = mean + exp(log_var / 2) * eps`` (evaluation takes the mean), integrated
  by 7 scaling-and-squaring steps at half resolution and upsampled: ``u_k``;
- ``ddf = sum_k mask_k(fixed regions) * u_k``; there is no global smoothness term.

The official loss (``DDIR/train.py``): ``20 (1 - clip(LNCC_9, 0, 1)) + 200 (1 - Dice) +
sum_k 0.025 KL_k`` with the KL prior of precision ``prior_lambda = 100`` on each network's
velocity. The official Dice binarises nearest-warped label maps, so it has no gradient; regzoo
takes the soft Dice of the one-hot moving labels warped linearly (background excluded).

The regions come from label maps, so DDIR needs both images' labels at test time too
(``regzoo register --moving-seg --fixed-seg``). SDDIR (:class:`SDDIR`) predicts them instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError, UserError
from regzoo.labels import one_hot, region_table
from regzoo.models import Batch, RegistrationModel, RegistrationOutput
from regzoo.nn import field_head
from regzoo.spatial import warp

from . import DDIRConfig, SDDIRConfig
from .coattention import CoAttentionSegmenter

__all__ = ["RegionNetwork", "DDIR", "SDDIR"]

_DEFAULTS = DDIRConfig()
_SDDIR_DEFAULTS = SDDIRConfig()


class RegionNetwork(nn.Module):
    """One region's network, the probabilistic VoxelMorph of DDIR: ``(B, 2C, *S)`` to the velocity
    mean and log variance ``(B, ndim, *S/2)`` each.

    Names follow regzoo's VoxelMorph (``unet_model``, ``flow``, ``flow_logsigma``); the official
    Keras layers are ``flow{k}`` and ``log_sigma{k}``.
    """

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
                "half_res": True,
                "negative_slope": negative_slope,
                "strided": True,
            },
        )
        width = self.unet_model.out_channels
        self.flow = field_head(ndim, width)
        self.flow_logsigma = field_head(ndim, width, std=1e-10, bias=-10.0)

    def forward(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.unet_model(pair)
        return self.flow(features), self.flow_logsigma(features)


def region_map(regions: Sequence[Sequence[int]] | None, num_regions: int) -> torch.Tensor:
    """The region of each label index ``(L,)`` int64 from the labels of each region (``None``:
    label ``k`` is region ``k``, for ``num_regions`` labels)."""
    if regions is not None and len(regions) != num_regions:
        raise ConfigError(
            f"ddir: model.regions lists {len(regions)} regions, model.num_regions is {num_regions}"
        )
    size = num_regions if regions is None else None
    return region_table(regions, size, name="ddir: model.regions")


class DDIR(RegistrationModel):
    """DDIR (module docstring): ``num_regions`` probabilistic VoxelMorph networks, one per region.

    It :attr:`~regzoo.models.RegistrationModel.reads_labels`: the regions of both images come
    from their label maps, at test time too.

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image.
        num_regions: regions, one network each (official 4: background, LV blood pool,
            myocardium, RV).
        regions: the label indices of each region (lists); ``None``: label ``k`` is region ``k``.
        enc_features, dec_features, negative_slope: each network's U-Net (official
            ``[16, 32, 32, 32]``, ``[32, 32, 32, 32, 16]``, LeakyReLU 0.3), at half resolution.
        int_steps: scaling-and-squaring steps (7).
        sim_weight, seg_weight, kl_weight: loss weights (official 20, 200, 0.025 per region).
        window: the LNCC window (9).
        prior_lambda: precision of the KL prior (official 100).
        num_labels: classes of the warped one-hot labels; ``None``: the data's label table.
    """

    reads_labels = True

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        num_regions: int = _DEFAULTS.num_regions,
        regions: Sequence[Sequence[int]] | None = _DEFAULTS.regions,
        enc_features: Sequence[int] = _DEFAULTS.enc_features,
        dec_features: Sequence[int] = _DEFAULTS.dec_features,
        negative_slope: float = _DEFAULTS.negative_slope,
        int_steps: int = _DEFAULTS.int_steps,
        sim_weight: float = _DEFAULTS.sim_weight,
        seg_weight: float = _DEFAULTS.seg_weight,
        kl_weight: float = _DEFAULTS.kl_weight,
        window: int = _DEFAULTS.window,
        prior_lambda: float = _DEFAULTS.prior_lambda,
        num_labels: int | None = _DEFAULTS.num_labels,
    ) -> None:
        super().__init__()
        if num_regions < 1:
            raise ConfigError(f"ddir: model.num_regions must be at least 1, got {num_regions}")
        self.ndim, self.in_channels = ndim, in_channels
        self.num_regions = int(num_regions)
        self.register_buffer("region_of", region_map(regions, num_regions), persistent=False)
        self.networks = nn.ModuleList(
            RegionNetwork(ndim, in_channels, enc_features, dec_features, negative_slope)
            for _ in range(num_regions)
        )
        self.transformer = build("transformer", {"name": "svf", "steps": int_steps, "downsize": 2})
        self.sim_weight, self.seg_weight, self.kl_weight = sim_weight, seg_weight, kl_weight
        self.num_labels = num_labels
        self.similarity = build("loss", {"name": "lncc", "window": window})
        self.dice = build("loss", {"name": "dice", "complement": True, "include_background": False})
        self.kl = build("loss", {"name": "kl-prior", "prior_lambda": prior_lambda})

    def region_masks(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot region masks ``(B, num_regions, *S)`` float of label maps ``(B, 1, *S)``."""
        top = int(labels.max())
        if top >= len(self.region_of):
            raise UserError(
                f"ddir: label index {top} has no region (model.num_regions "
                f"{self.num_regions}; give model.regions, the labels of each region)"
            )
        return one_hot(self.region_of[labels.long()], self.num_regions)

    def masks(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The region masks of both images from the batch's label maps."""
        if "moving_label" not in batch or "fixed_label" not in batch:
            raise UserError(
                "ddir needs the label maps of both images to split them into regions "
                "(regzoo register --moving-seg FILE --fixed-seg FILE)"
            )
        return self.region_masks(batch["moving_label"]), self.region_masks(batch["fixed_label"])

    def register_regions(
        self, batch: Batch, moving_masks: torch.Tensor, fixed_masks: torch.Tensor
    ) -> RegistrationOutput:
        """The output for given region masks ``(B, num_regions, *S)`` of both images.

        ``extras``: ``flow_mean`` and ``flow_log_sigma`` ``(B, num_regions, ndim, *S/2)``,
        ``region_ddf`` ``(B, num_regions, ndim, *S)`` (each network's field) and
        ``fixed_regions`` (the fixed masks).
        """
        moving, fixed = batch["moving"], batch["fixed"]
        shape = moving.shape[2:]
        means, log_sigmas, fields = [], [], []
        for k, network in enumerate(self.networks):
            pair = torch.cat(
                [moving * moving_masks[:, k : k + 1], fixed * fixed_masks[:, k : k + 1]], 1
            )
            mean, log_sigma = network(pair)
            velocity = mean
            if self.training:
                velocity = mean + torch.exp(0.5 * log_sigma) * torch.randn_like(mean)
            means.append(mean)
            log_sigmas.append(log_sigma)
            fields.append(self.transformer(velocity, shape)["ddf"])
        region_ddf = torch.stack(fields, 1)
        ddf = (fixed_masks.unsqueeze(2) * region_ddf).sum(1)
        return RegistrationOutput(
            warped=warp(moving, ddf),
            ddf=ddf,
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels),
            extras={
                "flow_mean": torch.stack(means, 1),
                "flow_log_sigma": torch.stack(log_sigmas, 1),
                "region_ddf": region_ddf,
                "fixed_regions": fixed_masks,
            },
        )

    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` and both label maps ``(B, 1, *S)`` to the output:
        ``ddf`` ``(B, ndim, *S)`` (voxels), ``warped``, ``warped_label`` and the extras of
        :meth:`register_regions`."""
        return self.register_regions(batch, *self.masks(batch))

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """``similarity`` ``1 - clip(LNCC, 0, 1)`` (``sim_weight``), ``segmentation`` ``1 -`` soft
        Dice of the warped one-hot labels (``seg_weight``; with labels in the batch) and ``kl``,
        the sum of the networks' KL terms (``kl_weight`` each)."""
        similarity = 1.0 - (-self.similarity(out.warped, batch["fixed"])).clamp(0.0, 1.0)
        means, log_sigmas = out.extras["flow_mean"], out.extras["flow_log_sigma"]
        kl = sum(self.kl(means[:, k], log_sigmas[:, k]) for k in range(self.num_regions))
        terms = {"similarity": similarity, "kl": kl}
        total = self.sim_weight * similarity + self.kl_weight * kl
        if out.warped_label is not None and "fixed_label" in batch:
            target = one_hot(batch["fixed_label"], out.warped_label.shape[1])
            terms["segmentation"] = self.dice(out.warped_label, target)
            total = total + self.seg_weight * terms["segmentation"]
        terms["loss"] = total
        return terms


class SDDIR(DDIR):
    """SDDIR (Chen, Xia, Ravikumar, Frangi, arXiv:2211.13828, 2022): DDIR whose regions come from
    a co-attention segmentation network that segments both images jointly
    (:class:`~regzoo_ddir.coattention.CoAttentionSegmenter`).

    Training registers with the label maps' regions, as DDIR, and trains the segmenter with the
    cross-entropy of both images (``ce_weight`` each) in the same step. At test time the predicted
    label maps (arg-max) give the regions; ``label_masks=True`` takes the batch's label maps
    instead when it has them (DDIR's result, for comparison). ``moving_seg`` and ``fixed_seg``
    are the segmenter's logits ``(B, num_labels, *S)``.

    Args (besides :class:`DDIR`'s):
        seg_features: the segmenter's encoder widths (the decoder mirrors them).
        ce_weight: weight of each image's cross-entropy.
        label_masks: register with the batch's label maps at test time.
    """

    reads_labels = False

    def __init__(
        self,
        *args: Any,
        seg_features: Sequence[int] = _SDDIR_DEFAULTS.seg_features,
        ce_weight: float = _SDDIR_DEFAULTS.ce_weight,
        label_masks: bool = _SDDIR_DEFAULTS.label_masks,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("num_labels", _SDDIR_DEFAULTS.num_labels)
        super().__init__(*args, **kwargs)
        if self.num_labels is None:
            raise ConfigError("sddir: model.num_labels (the segmenter's classes) must be set")
        self.segmenter = CoAttentionSegmenter(
            self.ndim, self.in_channels, self.num_labels, seg_features
        )
        self.ce_weight = ce_weight
        self.label_masks = bool(label_masks)

    def forward(self, batch: Batch) -> RegistrationOutput:
        """As :class:`DDIR`, with ``moving_seg``/``fixed_seg`` logits; the label maps are needed
        only for training (or ``label_masks``)."""
        moving_seg, fixed_seg = self.segmenter(batch["moving"], batch["fixed"])
        labelled = "moving_label" in batch and "fixed_label" in batch
        if labelled and (self.training or self.label_masks):
            masks = self.masks(batch)
        else:
            masks = tuple(
                self.region_masks(logits.argmax(1, keepdim=True))
                for logits in (moving_seg, fixed_seg)
            )
        out = self.register_regions(batch, *masks)
        out.moving_seg, out.fixed_seg = moving_seg, fixed_seg
        return out

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """DDIR's terms plus ``seg_moving`` and ``seg_fixed``, the cross-entropy of each image's
        logits against its label map (``ce_weight`` each; with labels in the batch)."""
        terms = super().loss(batch, out)
        for side in ("moving", "fixed"):
            if f"{side}_label" in batch:
                logits = getattr(out, f"{side}_seg")
                terms[f"seg_{side}"] = F.cross_entropy(logits, batch[f"{side}_label"][:, 0].long())
                terms["loss"] = terms["loss"] + self.ce_weight * terms[f"seg_{side}"]
        return terms
