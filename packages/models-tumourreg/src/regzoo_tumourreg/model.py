"""Concurrent registration and tumour segmentation (Estienne et al., Frontiers 2020).

- One :class:`~regzoo_tumourreg.vnet.VNetEncoder` encodes the moving and the fixed image.
- A segmentation decoder (softmax over background and the tumour classes) reads each image's
  features; a registration decoder reads their difference, level by level (moving minus fixed).
- The registration decoder's sigmoid gives spatial gradients ``g`` in (0, 1) per axis; the
  sampling position along axis ``i`` is ``sum_{k <= j} 2 g_i[k] - 1`` at index ``j``. Every step
  is positive, so the grid is strictly monotone along each axis and cannot fold along it;
  ``g = 0.5`` is the identity. (The official position lacks the ``- 1``, so its identity lies one
  voxel off; ours does not.) An L1 pull of ``g`` towards 0.5 (weight ``gradient_weight``,
  summed over voxels as Keras' activity regulariser) is the only regulariser.
- The loss trick: the registration loss, a mean squared difference of the warped moving image
  and the fixed image, is taken where neither image's predicted segmentation (arg-max, no
  gradient) is tumour; each image's segmentation loss (cross-entropy) weighs ``1 / (2 ratio)``.

Images of any size are padded (edge values) to a multiple of 16 for the V-Net; the gradients
are cropped back before they are summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from regzoo.errors import ConfigError
from regzoo.models import Batch, RegistrationModel, RegistrationOutput
from regzoo.spatial import identity_grid, warp

from .vnet import LEVELS, VNetDecoder, VNetEncoder

__all__ = ["TumourJoint", "gradients_to_ddf", "masked_mse"]

_MULTIPLE = 2 ** (LEVELS - 1)


def gradients_to_ddf(gradients: torch.Tensor) -> torch.Tensor:
    """Spatial gradients ``(B, ndim, *S)`` in (0, 1) to the displacement ``(B, ndim, *S)``
    (voxels): position ``sum_{k <= j} 2 g - 1`` along each axis, minus the voxel's index."""
    ndim = gradients.shape[1]
    positions = torch.stack(
        [torch.cumsum(2 * gradients[:, i], dim=i + 1) - 1 for i in range(ndim)], 1
    )
    return positions - identity_grid(gradients.shape[2:], gradients.device, gradients.dtype)


def masked_mse(warped: torch.Tensor, fixed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``mean(((warped - fixed) keep)^2)`` over every voxel: the official loss trick (the mean
    keeps the official normalisation; masked voxels count as zeros). ``keep`` ``(B, 1, *S)``."""
    return ((warped - fixed) * keep).pow(2).mean()


class TumourJoint(RegistrationModel):
    """Shared V-Net encoder, segmentation and registration decoders (module docstring).

    Args:
        ndim: 2 or 3.
        in_channels: channels of each image.
        features: the V-Net's first width (official 8).
        kernel: convolution size (official run 3).
        lesion_labels: label indices that are tumour; class ``k + 1`` of the segmentation is
            ``lesion_labels[k]``, class 0 everything else.
        ratio: registration over segmentation weight (official 1).
        gradient_weight: L1 pull of the gradients to 0.5 (official 1e-10).
        loss_trick: mask the registration loss with the predicted tumours (official on).
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 1,
        features: int = 8,
        kernel: int = 3,
        lesion_labels: Sequence[int] = (6,),
        ratio: float = 1.0,
        gradient_weight: float = 1e-10,
        loss_trick: bool = True,
    ) -> None:
        super().__init__()
        if not lesion_labels:
            raise ConfigError("tumour-joint: model.lesion_labels must list the tumour labels")
        self.ndim = ndim
        self.lesion_labels = [int(v) for v in lesion_labels]
        self.num_classes = 1 + len(self.lesion_labels)
        self.seg_weight = 1.0 / (2.0 * float(ratio))
        self.gradient_weight = float(gradient_weight)
        self.loss_trick = bool(loss_trick)
        self.encoder = VNetEncoder(ndim, in_channels, features, kernel)
        self.segmentation = VNetDecoder(ndim, self.num_classes, features, kernel)
        self.registration = VNetDecoder(ndim, ndim, features, kernel)

    def _padded(self, image: torch.Tensor) -> torch.Tensor:
        pads = []
        for n in reversed(image.shape[2:]):
            pads += [0, -n % _MULTIPLE]
        return F.pad(image, pads, mode="replicate") if any(pads) else image

    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` to ``ddf`` ``(B, ndim, *S)`` (voxels), ``warped``,
        ``moving_seg`` / ``fixed_seg`` logits ``(B, 1 + len(lesion_labels), *S)`` (class 0: not
        tumour) and ``extras["gradients"]`` ``(B, ndim, *S)`` in (0, 1)."""
        moving, fixed = batch["moving"], batch["fixed"]
        crop = (...,) + tuple(slice(0, n) for n in fixed.shape[2:])
        moving_levels = self.encoder(self._padded(moving))
        fixed_levels = self.encoder(self._padded(fixed))
        difference = [m - f for m, f in zip(moving_levels, fixed_levels)]
        gradients = torch.sigmoid(self.registration(difference))[crop]
        ddf = gradients_to_ddf(gradients)
        return RegistrationOutput(
            warped=warp(moving, ddf, padding="border"),
            ddf=ddf,
            moving_seg=self.segmentation(moving_levels)[crop],
            fixed_seg=self.segmentation(fixed_levels)[crop],
            warped_label=self.warp_moving_labels(batch, ddf),
            extras={"gradients": gradients},
        )

    def tumour_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """Label indices ``(B, 1, *S)`` to segmentation classes ``(B, *S)``: 0 outside the
        tumour, ``k + 1`` for ``lesion_labels[k]``."""
        classes = torch.zeros_like(labels[:, 0])
        for k, value in enumerate(self.lesion_labels):
            classes[labels[:, 0] == value] = k + 1
        return classes

    def non_tumour(self, out: RegistrationOutput) -> torch.Tensor:
        """``(B, 1, *S)`` float: 1 where neither predicted segmentation is tumour (no gradient)."""
        keep = (out.moving_seg.detach().argmax(1) == 0) & (out.fixed_seg.detach().argmax(1) == 0)
        return keep[:, None].float()

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """``registration`` (the masked MSE, or the plain one without the loss trick),
        ``gradients`` (the L1 pull), and with labels ``seg_moving`` / ``seg_fixed``
        (cross-entropy); ``loss`` is their sum, each segmentation term weighted
        ``1 / (2 ratio)``."""
        keep = self.non_tumour(out) if self.loss_trick else torch.ones_like(out.warped[:, :1])
        terms = {
            "registration": masked_mse(out.warped, batch["fixed"], keep),
            "gradients": (out.extras["gradients"] - 0.5).abs().sum(),
        }
        total = terms["registration"] + self.gradient_weight * terms["gradients"]
        for side in ("moving", "fixed"):
            if f"{side}_label" in batch:
                logits = getattr(out, f"{side}_seg")
                target = self.tumour_classes(batch[f"{side}_label"])
                terms[f"seg_{side}"] = F.cross_entropy(logits, target)
                total = total + self.seg_weight * terms[f"seg_{side}"]
        terms["loss"] = total
        return terms
