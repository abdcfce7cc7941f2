"""The VoxelMorph network, built from registered parts.

Balakrishnan, Zhao, Sabuncu, Guttag, Dalca, "VoxelMorph: a learning framework for deformable
medical image registration", IEEE TMI 38(8):1788-1800, 2019 (doi:10.1109/TMI.2019.2897538), and for
the probabilistic diffeomorphic variant Dalca, Balakrishnan, Guttag, Sabuncu, "Unsupervised
learning for fast probabilistic diffeomorphic registration", MICCAI 2018 / MedIA 57, 2019.

``concat(moving, fixed)`` goes through the ``vxm-unet`` backbone; a 3x3(x3) convolution (weights
N(0, 1e-5), bias 0) maps its features to ``ndim`` channels, and a registered spatial transformer
turns them into a displacement: ``dense`` (VoxelMorph) or ``svf`` (scaling and squaring).
Parameter names follow the official PyTorch ``VxmDense`` (``unet_model.encoder.0.0.main.weight``,
``flow.weight``), and so do the counts: 327,331 in 3D and 109,170 in 2D with the defaults.

With ``bidir=True`` (the official ``VxmDense(bidir=True)``) the negated network output goes
through the same transformer: the inverse field is ``exp(-v)`` for an SVF and ``-u`` for a dense
field (the official code negates both; for a dense field ``-u`` is only an approximate inverse).
The fixed image warped by it is compared with the moving image, and the two image terms weigh 0.5
each, as the official training scripts' ``weights = [0.5, 0.5]``.

The rest of the objective is also the official scripts' (``scripts/torch/train.py``,
``scripts/tf/train_semisupervised_seg.py``): ``Grad('l2', loss_mult=int_downsize)`` on the
pre-integration field, with ``int_downsize = 2`` for dense models too (the scripts apply it
whatever ``int_steps``), and the semi-supervised Dice at ``seg_resolution = 2``
(``VxmDenseSemiSupervisedSeg``): one-hot label maps taken every second voxel, the moving one warped
by the field resized by exactly 1/2.

With ``probabilistic=True`` (VoxelMorph-diff) a second head ``flow_logsigma`` (weights
N(0, 1e-10), bias -10) gives the log *variance* of the velocity, as in the official TensorFlow code
(its "log_sigma" is exponentiated as a variance); training samples
``v = mean + exp(log_sigma / 2) * eps`` and evaluation uses the mean. The loss is then
``MSE / image_sigma**2 + KL`` (registered ``mse`` with ``image_sigma``, and ``kl-prior``), the
official ``Miccai2018`` loss with weights 1 and 1; note that the official code scales the MSE by
``1 / sigma**2``, not by the ``1 / (2 sigma**2)`` of the likelihood written in the paper, and
regzoo follows the code.

Masks (``voxelmorph-lung``): with ``mask_inputs`` the network registers ``moving * moving_mask``
and ``fixed * fixed_mask`` (the batch's masks, else those of the mask network, sigmoid > 0.5) and
the similarity compares the masked images; ``mask_weight`` adds ``1 - Dice`` of the moving mask
warped (linearly) and the fixed mask; ``mask_network`` is a separate ``vxm-unet`` with a
one-channel head whose sigmoid is the mask, trained with ``1 - Dice`` against the batch's masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regzoo import build
from regzoo.errors import ConfigError
from regzoo.models import Batch, RegistrationLoss, RegistrationModel, RegistrationOutput
from regzoo.nn import conv_nd, field_head
from regzoo.spatial import warp

from . import VoxelMorphConfig

__all__ = ["VoxelMorph"]

# The registered entry's config is the one source of the defaults below.
_DEFAULTS = VoxelMorphConfig()


def _as_config(part: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if part is None:
        return None
    return {"name": part} if isinstance(part, str) else dict(part)


class VoxelMorph(RegistrationModel):
    """VoxelMorph: U-Net on the concatenated pair, flow head, spatial transformer.

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels: channels of each image (the U-Net sees ``2 * in_channels``).
        enc_features, dec_features, nb_conv_per_level, half_res: the ``vxm-unet`` backbone's
            (VoxelMorph-2: ``[16, 32, 32, 32]``, ``[32, 32, 32, 32, 32, 16, 16]``).
        transformer: a registered transformer name or config: ``"dense"`` or ``"svf"`` (7 steps
            at half resolution, VoxelMorph's ``int_steps=7, int_downsize=2``).
        probabilistic: predict a velocity mean and log variance (VoxelMorph-diff).
        bidir: also return the inverse field (``inverse_ddf``: the transformer applied to the
            negated network output) and the fixed image warped by it (``extras["fixed_warped"]``),
            and weigh the image terms 0.5 (warped moving vs fixed) and 0.5 (warped fixed vs
            moving), the official ``bidir`` option.
        similarity, regularizer, reg_weight, segmentation, seg_weight: the training objective,
            registered loss configs: ``similarity(warped, fixed)``, ``reg_weight *
            regularizer(field)`` and, with ``seg_weight > 0`` and labels in the batch,
            ``seg_weight * segmentation(warped one-hot moving labels, one-hot fixed labels)``
            (semi-supervised VoxelMorph, 0.01). The regulariser sees the velocity for ``svf``
            (the official ``preint_flow``) and the displacement otherwise; its ``loss_mult`` (2 by
            default) is the official scripts' ``int_downsize``.
        seg_resolution: the label term's voxel size in image voxels (official 2): the one-hot
            maps are taken every ``seg_resolution`` voxels and the moving one is warped by
            ``ddf`` resized by exactly ``1 / seg_resolution`` (:func:`~regzoo.spatial.resize_field`
            with ``factor``); 1 compares ``warped_label`` with the fixed labels at full size.
        num_labels: classes of ``warped_label``; ``None``: the data's label table
            (:meth:`~regzoo.models.RegistrationModel.warp_moving_labels`).
        prior_lambda: precision of the KL prior added to the objective (probabilistic only;
            official 10; VoxelMorph-diff has no other regulariser).
        mask_inputs: register the masked images (module docstring).
        mask_network: ``vxm-unet`` widths (``enc_features``, ``dec_features``, ...) of the mask
            network; ``None``: none.
        mask_weight: weight of ``1 - Dice`` of the warped moving mask and the fixed mask.

    The defaults are ``voxelmorph``'s (:class:`regzoo_voxelmorph.VoxelMorphConfig`); a ``None``
    loss config leaves that term out of the objective.
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        enc_features: Sequence[int] = _DEFAULTS.enc_features,
        dec_features: Sequence[int] = _DEFAULTS.dec_features,
        nb_conv_per_level: int = _DEFAULTS.nb_conv_per_level,
        half_res: bool = _DEFAULTS.half_res,
        transformer: str | Mapping[str, Any] = _DEFAULTS.transformer,
        probabilistic: bool = _DEFAULTS.probabilistic,
        bidir: bool = _DEFAULTS.bidir,
        similarity: Mapping[str, Any] | None = _DEFAULTS.similarity,
        regularizer: Mapping[str, Any] | None = _DEFAULTS.regularizer,
        reg_weight: float = _DEFAULTS.reg_weight,
        segmentation: Mapping[str, Any] | None = _DEFAULTS.segmentation,
        seg_weight: float = _DEFAULTS.seg_weight,
        seg_resolution: int = _DEFAULTS.seg_resolution,
        num_labels: int | None = _DEFAULTS.num_labels,
        prior_lambda: float = _DEFAULTS.prior_lambda,
        mask_inputs: bool = _DEFAULTS.mask_inputs,
        mask_network: Mapping[str, Any] | None = _DEFAULTS.mask_network,
        mask_weight: float = _DEFAULTS.mask_weight,
    ) -> None:
        super().__init__()
        if int(seg_resolution) != seg_resolution or seg_resolution < 1:
            raise ConfigError(
                f"voxelmorph: seg_resolution must be a positive integer, got {seg_resolution}"
            )
        self.ndim = ndim
        self.num_labels = num_labels
        self.probabilistic = probabilistic
        self.bidir = bidir
        self.unet_model = build(
            "backbone",
            {
                "name": "vxm-unet",
                "ndim": ndim,
                "in_channels": 2 * in_channels,
                "enc_features": list(enc_features),
                "dec_features": list(dec_features),
                "nb_conv_per_level": nb_conv_per_level,
                "half_res": half_res,
            },
        )
        self.flow = field_head(ndim, self.unet_model.out_channels)
        if probabilistic:
            self.flow_logsigma = field_head(
                ndim, self.unet_model.out_channels, std=1e-10, bias=-10.0
            )
        transformer = _as_config(transformer)
        self.transformer = build("transformer", transformer)
        if probabilistic:
            self.kl = build("loss", {"name": "kl-prior", "prior_lambda": prior_lambda})
        self.objective_terms = RegistrationLoss(
            similarity=_as_config(similarity),
            regularizer=_as_config(regularizer),
            reg_weight=reg_weight,
            segmentation=_as_config(segmentation),
            seg_weight=seg_weight,
            field="velocity" if transformer["name"] == "svf" else "ddf",
            bidirectional=bidir,
            seg_resolution=seg_resolution,
        )
        self.mask_inputs = bool(mask_inputs)
        self.mask_weight = float(mask_weight)
        self.mask_net = None
        if mask_network is not None:
            backbone = {"name": "vxm-unet", **dict(mask_network)}
            backbone.update(ndim=ndim, in_channels=in_channels)
            unet = build("backbone", backbone)
            head = conv_nd(ndim)(unet.out_channels, 1, 3, padding=1)
            self.mask_net = nn.Sequential(unet, head)
        if self.mask_net is not None or self.mask_weight:
            self.mask_dice = build("loss", {"name": "dice", "complement": True})

    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` (and optional ``moving_label``) to the output.

        ``ddf`` is ``(B, ndim, *S)``; ``velocity`` (``svf``) is at the integration resolution;
        ``warped_label`` (one-hot probabilities) is there when the batch has ``moving_label``;
        ``bidir`` adds ``inverse_ddf`` ``(B, ndim, *S)`` and ``extras["fixed_warped"]``
        ``(B, C, *S)``; probabilistic models add ``extras["flow_mean"]`` and
        ``extras["flow_log_sigma"]``. With masks (the batch's ``moving_mask``/``fixed_mask`` or
        the mask network's) ``extras`` holds them as float ``moving_mask``, ``fixed_mask``
        ``(B, 1, *S)``, the mask network's ``moving_mask_logits``/``fixed_mask_logits``, and with
        ``mask_inputs`` ``warped_masked`` and ``fixed_masked`` (what the similarity compares);
        ``warped`` is always the whole moving image warped.
        """
        moving, fixed = batch["moving"], batch["fixed"]
        shape = moving.shape[2:]
        extras, masks = self._masks(batch)
        moving_in, fixed_in = moving, fixed
        if self.mask_inputs and masks[0] is not None and masks[1] is not None:
            moving_in, fixed_in = moving * masks[0], fixed * masks[1]
        features = self.unet_model(torch.cat([moving_in, fixed_in], dim=1))
        params = self.flow(features)
        if self.probabilistic:
            log_sigma = self.flow_logsigma(features)
            extras.update(flow_mean=params, flow_log_sigma=log_sigma)
            if self.training:
                params = params + torch.exp(0.5 * log_sigma) * torch.randn_like(params)
        fields = self.transformer(params, shape)
        ddf = fields["ddf"]
        if moving_in is not moving:
            extras["warped_masked"], extras["fixed_masked"] = warp(moving_in, ddf), fixed_in
        if masks[0] is not None:
            extras["moving_mask"], extras["fixed_mask"] = masks
        inverse = None
        if self.bidir:
            inverse = self.transformer(-params, shape)["ddf"]
            extras["fixed_warped"] = warp(fixed, inverse)
        return RegistrationOutput(
            warped=warp(moving, ddf),
            ddf=ddf,
            inverse_ddf=inverse,
            velocity=fields.get("velocity"),
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels),
            extras=extras,
        )

    def _masks(
        self, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor | None]]:
        """The mask network's logits (in ``extras``) and the masks ``(B, 1, *S)`` float of both
        images: the batch's where it has them, else the network's (sigmoid > 0.5), else None."""
        extras: dict[str, torch.Tensor] = {}
        both = all(batch.get(f"{side}_mask") is not None for side in ("moving", "fixed"))
        # the network's masks are needed where the batch lacks one, and its logits for training
        if self.mask_net is not None and (self.training or not both):
            logits = self.mask_net(torch.cat([batch["moving"], batch["fixed"]], dim=0))
            extras["moving_mask_logits"], extras["fixed_mask_logits"] = logits.chunk(2)
        masks = []
        for side in ("moving", "fixed"):
            given = batch.get(f"{side}_mask")
            if given is not None:
                masks.append(given.to(batch[side].dtype))
            elif self.mask_net is not None:
                masks.append((extras[f"{side}_mask_logits"] > 0).to(batch[side].dtype))
            else:
                masks.append(None)
        return extras, (masks[0], masks[1])

    def load_weights(self, state: Mapping[str, Any] | str | Path) -> None:
        """Load official or regzoo weights, strictly (regzoo's ``--weights FILE`` calls this).

        ``state`` is a file or its content: an official ``VxmDense.save`` file
        (``{'config', 'model_state'}``, whose config is checked against this model), a
        ``{'state_dict': ...}`` checkpoint or a bare state dict (official sampling-grid buffers
        are dropped); see :mod:`regzoo_voxelmorph.official`. The authors' Keras ``.h5`` files
        (the TensorFlow ``VxmDense``) load too: :mod:`regzoo_voxelmorph.keras`.
        """
        from .keras import is_hdf5, load_keras, read_keras
        from .official import load_official

        if isinstance(state, (str, Path)) and is_hdf5(state):
            state = read_keras(state)
        if isinstance(state, Mapping) and "keras_layers" in state:
            load_keras(self, state)
        else:
            load_official(self, state)

    def read_weights(self, path: Path) -> Mapping[str, Any] | None:
        """The authors' Keras ``.h5`` weights (model or weights file), read with h5py
        (:func:`regzoo_voxelmorph.keras.read_keras`); ``None`` for any other file (a torch file,
        read by the engine)."""
        from .keras import is_hdf5, read_keras

        return read_keras(path) if is_hdf5(path) else None

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """The official objective's terms by name; ``"loss"`` is their weighted sum.

        ``similarity`` (warped moving vs fixed; weight 1, or 0.5 with ``bidir`` and then
        ``similarity_inverse``, warped fixed vs moving, 0.5), ``regularizer`` (``reg_weight``),
        ``segmentation`` (``seg_weight``, when the batch has both label maps; at
        ``seg_resolution``; :class:`~regzoo.models.RegistrationLoss`) and ``kl``
        (probabilistic, weight 1); with masks ``mask_overlap`` (``mask_weight``) and, with a mask
        network and the batch's masks, ``mask_segmentation`` (weight 1). A term whose config is
        null is absent.
        """
        if "warped_masked" in out.extras:
            masked = dataclasses.replace(out, warped=out.extras["warped_masked"])
            terms = self.objective_terms({**batch, "fixed": out.extras["fixed_masked"]}, masked)
        else:
            terms = self.objective_terms(batch, out)
        if self.mask_weight and "moving_mask" in out.extras:
            warped_mask = warp(out.extras["moving_mask"], out.ddf)
            terms["mask_overlap"] = self.mask_dice(warped_mask, out.extras["fixed_mask"])
            terms["loss"] = terms["loss"] + self.mask_weight * terms["mask_overlap"]
        if "moving_mask_logits" in out.extras and "moving_mask" in batch and "fixed_mask" in batch:
            logits = torch.cat([out.extras["moving_mask_logits"], out.extras["fixed_mask_logits"]])
            target = torch.cat([batch["moving_mask"], batch["fixed_mask"]]).to(logits.dtype)
            terms["mask_segmentation"] = self.mask_dice(torch.sigmoid(logits), target)
            terms["loss"] = terms["loss"] + terms["mask_segmentation"]
        if self.probabilistic:
            terms["kl"] = self.kl(out.extras["flow_mean"], out.extras["flow_log_sigma"])
            terms["loss"] = terms["loss"] + terms["kl"]
        return terms
