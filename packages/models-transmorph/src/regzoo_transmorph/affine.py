"""TransMorph-affine: the TransMorph authors' affine registration network, as a regzoo model.

Chen, Frey, He, Segars, Li, Du, "TransMorph: Transformer for unsupervised medical image
registration", Medical Image Analysis 82:102615, 2022 (doi 10.1016/j.media.2022.102615); the
network is the one of the official repository's ``TransMorph_affine`` folder: TransMorph's Swin
encoder on the concatenated pair, the last stage's features instance-normalised and flattened, and
four MLP heads (``aff_mlp``, ``scl_mlp``, ``trans_mlp``, ``shear_mlp``: Linear to 100, LeakyReLU,
Linear) giving three rotation angles, three scalings, three translations and six shear angles of
a 3D affine transform. Parameter names equal the official ones, so its checkpoints load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.errors import ConfigError
from regzoo.models import Batch, RegistrationLoss, RegistrationOutput
from regzoo.spatial import affine_from_normalised, affine_to_ddf

from .configs import TransMorphAffineConfig
from .models import _TransMorphModel
from .swin import SwinEncoder

__all__ = ["TransMorphAffine", "official_affine_matrix", "affine_head"]

# The registered entry's config is the one source of the class's defaults.
_AFFINE = TransMorphAffineConfig()
HIDDEN = 100  # width of every head's hidden layer (official)
# Off-diagonal entries the six shear angles fill, in the official order (xy, xz, yx, yz, zx, zy),
# before the official transposition (see official_affine_matrix).
_SHEAR_ENTRIES = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))


def affine_head(
    in_features: int, out_features: int, weight_std: float, bias_std: float
) -> nn.Sequential:
    """Linear(in, 100), LeakyReLU(0.01), Linear(100, out); the last layer drawn from
    N(0, ``weight_std``) and N(0, ``bias_std``) (official initialisation)."""
    last = nn.Linear(HIDDEN, out_features)
    nn.init.normal_(last.weight, 0.0, weight_std)
    nn.init.normal_(last.bias, 0.0, bias_std)
    return nn.Sequential(nn.Linear(in_features, HIDDEN), nn.LeakyReLU(), last)


def _rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    """Right-handed rotations ``(B, 3, 3)`` by ``angle`` ``(B,)`` radians about ``axis``."""
    i, j = (axis + 1) % 3, (axis + 2) % 3
    c, s = torch.cos(angle), torch.sin(angle)
    m = torch.eye(3, dtype=angle.dtype, device=angle.device).repeat(angle.shape[0], 1, 1)
    m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
    return m


def official_affine_matrix(
    rotation: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor, shear: torch.Tensor
) -> torch.Tensor:
    """The official transform as an ``affine_grid`` matrix ``(B, 3, 4)`` (``align_corners=False``).

    ``A = H diag(scale) R_z R_y R_x`` and ``b = translation``, in ``affine_grid``'s (x, y, z)
    order (x the last array axis). The official code writes each matrix by rows and stacks the
    rows as columns, so its rotations turn by ``-angle`` and its shear matrix ``H`` is the
    transpose of the one written: ``H[j, i] = tan(shear_k)`` for the k-th entry ``(i, j)`` of
    (xy, xz, yx, yz, zx, zy). This is kept, so that the authors' weights give their transforms.

    Args:
        rotation: ``(B, 3)`` angles about x, y, z (radians).
        scale: ``(B, 3)`` scalings along x, y, z.
        translation: ``(B, 3)`` in normalised units (2 is the image extent).
        shear: ``(B, 6)`` shear angles (radians).
    """
    turn = [_rotation(-rotation[:, axis], axis) for axis in range(3)]
    h = torch.eye(3, dtype=shear.dtype, device=shear.device).repeat(shear.shape[0], 1, 1)
    for k, (i, j) in enumerate(_SHEAR_ENTRIES):
        h[:, j, i] = torch.tan(shear[:, k])
    a = h @ torch.diag_embed(scale) @ turn[2] @ turn[1] @ turn[0]
    return torch.cat([a, translation.unsqueeze(2)], dim=2)


class TransMorphAffine(_TransMorphModel):
    """TransMorph-affine: a Swin encoder and four MLP heads predicting a 3D affine transform.

    The pair is resized (trilinear) to ``img_size``, the network's fixed input size (none at
    160x192x224, the official size); the encoder's last map ``(B, 8 * embed_dim, *img_size / 32)``
    is instance-normalised, flattened and fed to the heads, whose outputs, scaled by 0.1, become
    rotation angles ``clamp(., -1, 1) * pi``, scalings ``clamp(1 + ., 0, 5)``, translations
    (normalised units) and shear angles ``clamp(., -1, 1) * pi``. The transform
    (:func:`official_affine_matrix`) is defined on the normalised coordinates of
    ``grid_sample(align_corners=False)``, independent of the resolution, and is applied to the
    moving image at its own size. Objective: MSE between the warped and the fixed image (official).

    Args:
        img_size: the network's input size (3 values, multiples of ``patch_size * 8``).
        in_channels: channels of each of the moving and fixed images (concatenated in the net).
        similarity: registry loss config of the objective (``{"name": "mse"}``).
        window_size: Swin windows; ``None``: the last feature grid, ``img_size // 32``, as the
            official training script sets it.
        **encoder: the other sizes of :class:`~regzoo_transmorph.swin.SwinEncoder` (``embed_dim``,
            ``depths``, ``num_heads``, ``patch_size``, ...).
    Outputs:
        ``affine`` ``(B, 3, 4)`` on centred voxel coordinates, its ``ddf`` and ``warped``;
        ``extras``: the official parameters ``rotation``, ``scale``, ``translation`` ``(B, 3)``
        and ``shear`` ``(B, 6)``.
    """

    ndim = 3

    def __init__(
        self,
        img_size: Sequence[int] = _AFFINE.img_size,
        in_channels: int = _AFFINE.in_channels,
        similarity: Mapping[str, Any] = _AFFINE.similarity,
        window_size: Sequence[int] | None = _AFFINE.window_size,
        patch_size: int = _AFFINE.patch_size,
        depths: Sequence[int] = _AFFINE.depths,
        **encoder: Any,
    ) -> None:
        super().__init__()
        multiple = patch_size * 2 ** (len(depths) - 1)
        self.img_size = tuple(int(s) for s in img_size)
        if len(self.img_size) != 3 or any(s <= 0 or s % multiple for s in self.img_size):
            raise ConfigError(
                f"img_size must be 3 positive multiples of {multiple} (patch_size * 2**stages), "
                f"got {list(img_size)}"
            )
        grid = [s // multiple for s in self.img_size]
        self.transformer = SwinEncoder(
            ndim=3,
            in_channels=2 * in_channels,
            patch_size=patch_size,
            depths=depths,
            window_size=window_size or grid,
            **encoder,
        )
        channels = self.transformer.num_features[-1]
        features = channels * math.prod(grid)
        self.aff_mlp = affine_head(features, 3, 1e-3, 1e-3)
        self.scl_mlp = affine_head(features, 3, 1e-2, 1e-2)
        self.trans_mlp = affine_head(features, 3, 1e-2, 1e-4)
        self.shear_mlp = affine_head(features, 6, 1e-2, 1e-4)
        self.inst_norm = nn.InstanceNorm3d(channels)
        self.criterion = RegistrationLoss(similarity)

    def forward(self, batch: Batch) -> RegistrationOutput:
        x = self._concat(batch)
        shape = tuple(x.shape[2:])
        if shape != self.img_size:
            x = F.interpolate(x, size=self.img_size, mode="trilinear", align_corners=False)
        features = self.inst_norm(self.transformer(x)[-1]).flatten(1)
        rotation = torch.clamp(0.1 * self.aff_mlp(features), -1, 1) * math.pi
        scale = torch.clamp(0.1 * self.scl_mlp(features) + 1, 0, 5)
        translation = 0.1 * self.trans_mlp(features)
        shear = torch.clamp(0.1 * self.shear_mlp(features), -1, 1) * math.pi
        theta = official_affine_matrix(rotation, scale, translation, shear)
        affine = affine_from_normalised(theta, shape, align_corners=False)
        return self._output(
            batch,
            affine_to_ddf(affine, shape),
            affine=affine,
            extras={
                "rotation": rotation,
                "scale": scale,
                "translation": translation,
                "shear": shear,
            },
        )
