"""Backbones and building blocks shared by the models.

Registered backbones (``regzoo.build("backbone", {"name": ..., ...})``):

- ``vxm-unet``: the VoxelMorph U-Net, :class:`~regzoo.nn.unet.VxmUnet`.

A backbone is a module ``(B, in_channels, *S) -> (B, out_channels, *S)`` with an ``out_channels``
attribute; a model puts its own head on it.
"""

from ..registry import Paper, register_backbone
from . import blocks
from .blocks import (
    ConvBlock,
    activation,
    avg_pool_nd,
    channels_last,
    conv_nd,
    conv_transpose_nd,
    field_head,
    interpolation_mode,
    max_pool_nd,
    norm_nd,
    upsample_to,
)
from .unet import VxmUnet

__all__ = [
    "blocks",
    "ConvBlock",
    "VxmUnet",
    "activation",
    "avg_pool_nd",
    "channels_last",
    "conv_nd",
    "conv_transpose_nd",
    "field_head",
    "interpolation_mode",
    "max_pool_nd",
    "norm_nd",
    "upsample_to",
]

register_backbone(
    "vxm-unet",
    summary="VoxelMorph U-Net: stride-1 convs + max pooling, nearest upsampling, skip concatenation.",
    paper=Paper(
        "Balakrishnan, Zhao, Sabuncu, Guttag, Dalca",
        "VoxelMorph: a learning framework for deformable medical image registration",
        "IEEE TMI 38(8):1788-1800",
        2019,
        "https://doi.org/10.1109/TMI.2019.2897538",
    ),
    tags=("2d", "3d"),
)(VxmUnet)
