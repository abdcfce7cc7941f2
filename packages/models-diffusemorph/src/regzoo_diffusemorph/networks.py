"""DiffuseMorph's two networks and its noise schedule, 2D and 3D.

Kim, Han, Ye, "DiffuseMorph: Unsupervised Deformable Image Registration Using Diffusion Model",
ECCV 2022 (doi:10.1007/978-3-031-19821-2_20).

- :class:`DiffusionUNet`: the DDPM U-Net that estimates the latent (the noise ``eps``) from
  ``concat(moving, fixed, x_t)`` and the timestep ``t``: sinusoidal time embedding and MLP,
  residual blocks of GroupNorm, Swish and 3x3(x3) convolutions with the time embedding added,
  self-attention at the levels whose resolution is in ``attn_res`` and in the middle block.
- :class:`DeformationNet`: the VoxelMorph-like network that maps ``concat(moving, latent)`` to a
  displacement field (voxels): a stride-1 convolution, four stride-2 convolutions, four transposed
  convolutions with skip connections and a last convolution, LeakyReLU(0.2).
- :class:`LinearSchedule`: the linear beta schedule and the forward process ``q(x_t | x_0)``.

Module and parameter names follow the authors' code (``time_mlp``, ``downs``, ``mid``, ``ups``,
``final_conv``; ``inconv``, ``downconv1``, ..., ``outconv``), and so do the parameter counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.nn import conv_nd, conv_transpose_nd

__all__ = [
    "TimeEmbedding",
    "SelfAttention",
    "ResnetBlock",
    "DiffusionUNet",
    "DeformationNet",
    "LinearSchedule",
]


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of a timestep: ``[sin(t w_k), cos(t w_k)]`` with
    ``w_k = 10000^(-2k / dim)``, ``k = 0 .. dim/2 - 1`` (Vaswani et al.'s positional encoding).

    ``t`` ``(B,)`` (integer steps) to ``(B, dim)``. ``inv_freq`` is a buffer, as in the authors' code.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim
        k = torch.arange(0, dim, 2, dtype=torch.float32)
        self.register_buffer("inv_freq", torch.exp(k * (-math.log(10000.0) / dim)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.reshape(-1).float()[:, None] * self.inv_freq[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Block(nn.Module):
    """GroupNorm, Swish, (dropout), 3x3(x3) convolution; the submodule is named ``block``."""

    def __init__(self, ndim: int, dim: int, dim_out: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            conv_nd(ndim)(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    """Two :class:`Block` s with the projected time embedding added between them, plus a residual
    (1x1 convolution when the widths differ)."""

    def __init__(
        self, ndim: int, dim: int, dim_out: int, time_dim: int, groups: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out))
        self.block1 = Block(ndim, dim, dim_out, groups)
        self.block2 = Block(ndim, dim_out, dim_out, groups, dropout)
        self.res_conv = conv_nd(ndim)(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        h = h + self.mlp(time_emb).reshape(*time_emb.shape[:1], -1, *[1] * (x.dim() - 2))
        return self.block2(h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over all voxels, after a GroupNorm.

    ``kind="dot"``: softmax(q^T k / sqrt(C)) attention (the authors' 2D network, one head);
    ``kind="linear"``: the keys are normalised by a softmax over the voxels and the values pooled
    into a ``c x c`` context per head, which the queries read (the authors' 3D network, four heads:
    memory linear in the number of voxels). The 1x1 ``qkv`` convolution has no bias.
    """

    def __init__(self, ndim: int, channels: int, heads: int, groups: int, kind: str) -> None:
        super().__init__()
        if kind not in ("dot", "linear"):
            raise ValueError(f"attention must be 'dot' or 'linear', got {kind!r}")
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads, self.kind = heads, kind
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = conv_nd(ndim)(channels, 3 * channels, 1, bias=False)
        self.out = conv_nd(ndim)(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        h, d = self.heads, c // self.heads
        qkv = self.qkv(self.norm(x)).flatten(2)  # (B, 3C, N)
        if self.kind == "linear":  # channels ordered (q|k|v, head, c)
            q, k, v = qkv.reshape(b, 3, h, d, -1).unbind(1)
            context = torch.einsum("bhdn,bhen->bhde", k.softmax(dim=-1), v)
            out = torch.einsum("bhde,bhdn->bhen", context, q)
        else:  # channels ordered (head, q|k|v, c)
            q, k, v = qkv.reshape(b, h, 3, d, -1).unbind(2)
            attn = torch.einsum("bhcn,bhcm->bhnm", q, k).div(math.sqrt(c)).softmax(dim=-1)
            out = torch.einsum("bhnm,bhcm->bhcn", attn, v)
        return self.out(out.reshape(x.shape)) + x


class ResnetBlocWithAttn(nn.Module):
    """A :class:`ResnetBlock` (``res_block``), optionally followed by :class:`SelfAttention`
    (``attn``)."""

    def __init__(
        self,
        ndim: int,
        dim: int,
        dim_out: int,
        time_dim: int,
        groups: int,
        dropout: float,
        attention: tuple[int, str] | None,
    ) -> None:
        super().__init__()
        self.res_block = ResnetBlock(ndim, dim, dim_out, time_dim, groups, dropout)
        if attention is not None:
            self.attn = SelfAttention(ndim, dim_out, attention[0], groups, attention[1])

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        x = self.res_block(x, time_emb)
        return self.attn(x) if hasattr(self, "attn") else x


class _Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling and a 3x3(x3) convolution (``conv``)."""

    def __init__(self, ndim: int, dim: int) -> None:
        super().__init__()
        self.conv = conv_nd(ndim)(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Downsample(nn.Module):
    """A stride-2 3x3(x3) convolution (``conv``)."""

    def __init__(self, ndim: int, dim: int) -> None:
        super().__init__()
        self.conv = conv_nd(ndim)(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DiffusionUNet(nn.Module):
    """The DDPM U-Net of DiffuseMorph (after Ho et al.'s, as the authors' code builds it).

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channel: input channels (``concat(moving, fixed, x_t)``: 3 for grey images).
        out_channel: output channels (the latent, shaped as the fixed image: 1).
        inner_channel: width of the first level and of the time embedding (3D: 8, 2D: 64).
        channel_mults: width of each level as a multiple of ``inner_channel`` (``[1, 2, 4, 4]``).
        attn_res: resolutions at which the encoder and decoder levels carry self-attention.
        res_blocks: residual blocks per encoder level (the decoder has one more).
        dropout: dropout in the second block of each residual block.
        image_size: the resolution of the first level, used only to decide which levels are in
            ``attn_res`` (level ``i`` has resolution ``image_size // 2**i``), as the authors' code
            does with its configured image size: 128 in both official configurations, whose
            ``attn_res`` (10 in 3D, 8 in 2D) then matches no level, so attention sits in the
            middle block only. The parameter count therefore depends on ``image_size``.
        norm_groups: GroupNorm groups (3D: 4, 2D: 32).
        attn_heads, attention: see :class:`SelfAttention` (3D: 4 heads, ``"linear"``; 2D: 1,
            ``"dot"``).

    Inputs ``(B, in_channel, *S)`` with every spatial size a multiple of
    ``2 ** (len(channel_mults) - 1)``, and ``t`` ``(B,)``; output ``(B, out_channel, *S)``.
    """

    def __init__(
        self,
        ndim: int,
        in_channel: int,
        out_channel: int,
        inner_channel: int,
        channel_mults: Sequence[int],
        attn_res: Sequence[int],
        res_blocks: int,
        dropout: float,
        image_size: int,
        norm_groups: int,
        attn_heads: int,
        attention: str,
    ) -> None:
        super().__init__()
        attn = (attn_heads, attention)
        self.time_mlp = nn.Sequential(
            TimeEmbedding(inner_channel),
            nn.Linear(inner_channel, 4 * inner_channel),
            nn.SiLU(),
            nn.Linear(4 * inner_channel, inner_channel),
        )
        tdim, groups = inner_channel, norm_groups

        def resblock(dim: int, dim_out: int, with_attn: bool) -> ResnetBlocWithAttn:
            return ResnetBlocWithAttn(
                ndim, dim, dim_out, tdim, groups, dropout, attn if with_attn else None
            )

        pre = inner_channel
        skips = [pre]
        res = image_size
        downs: list[nn.Module] = [conv_nd(ndim)(in_channel, inner_channel, 3, padding=1)]
        for level, mult in enumerate(channel_mults):
            width = inner_channel * mult
            for _ in range(res_blocks):
                downs.append(resblock(pre, width, res in attn_res))
                skips.append(width)
                pre = width
            if level < len(channel_mults) - 1:
                downs.append(_Downsample(ndim, pre))
                skips.append(pre)
                res //= 2
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([resblock(pre, pre, True), resblock(pre, pre, False)])
        ups: list[nn.Module] = []
        for level in reversed(range(len(channel_mults))):
            width = inner_channel * channel_mults[level]
            for _ in range(res_blocks + 1):
                ups.append(resblock(pre + skips.pop(), width, res in attn_res))
                pre = width
            if level > 0:
                ups.append(_Upsample(ndim, pre))
                res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(ndim, pre, out_channel, groups)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(t)
        feats = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            if isinstance(layer, ResnetBlocWithAttn):
                x = layer(torch.cat([x, feats.pop()], dim=1), emb)
            else:
                x = layer(x)
        return self.final_conv(x)


class _ConvAct(nn.Module):
    """``convs`` 3x3(x3) convolutions, each followed by LeakyReLU(0.2); the first has ``stride``.
    The sequence is named ``block`` (the authors' 3D network has one convolution, the 2D two)."""

    def __init__(self, ndim: int, cin: int, cout: int, convs: int, stride: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers.append(
                conv_nd(ndim)(cin if i == 0 else cout, cout, 3, stride if i == 0 else 1, 1)
            )
            layers.append(nn.LeakyReLU(0.2))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Wrapped(nn.Module):
    """A :class:`_ConvAct` one level down (``block.block``), as the authors' ``inblock`` and
    ``downblock`` nest it."""

    def __init__(self, ndim: int, cin: int, cout: int, convs: int, stride: int) -> None:
        super().__init__()
        self.block = _ConvAct(ndim, cin, cout, convs, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Up(nn.Module):
    """Transposed 3x3(x3) convolution x2 (``upconv``) of the coarse features, concatenated after
    the skip features, then a :class:`_ConvAct` (``block``)."""

    def __init__(self, ndim: int, cin: int, cskip: int, cout: int, convs: int) -> None:
        super().__init__()
        self.upconv = conv_transpose_nd(ndim)(cin, cin, 3, stride=2, padding=1, output_padding=1)
        self.block = _ConvAct(ndim, cskip + cin, cout, convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.upconv(x)], dim=1))


class _Out(nn.Module):
    def __init__(self, ndim: int, cin: int, cout: int) -> None:
        super().__init__()
        self.block = conv_nd(ndim)(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DeformationNet(nn.Module):
    """DiffuseMorph's deformation network: ``concat(moving, latent)`` to a displacement (voxels).

    Args:
        ndim: spatial dimensions.
        in_channel: input channels (2 for grey images).
        encoder_nc: the five encoder widths (3D: ``[16, 32, 32, 32, 32]``; 2D:
            ``[64, 128, 256, 512, 1024]``); the first level keeps the resolution, each next one
            halves it.
        decoder_nc: the six decoder widths, the last one ``ndim`` (3D: ``[32, 32, 32, 8, 8, 3]``;
            2D: ``[1024, 512, 256, 128, 64, 2]``); the fourth is a same-resolution block.
        convs_per_block: convolutions per block (3D: 1, 2D: 2).

    Input ``(B, in_channel, *S)``, sizes multiples of 16; output ``(B, ndim, *S)``, channel i
    along spatial axis i.
    """

    def __init__(
        self,
        ndim: int,
        in_channel: int,
        encoder_nc: Sequence[int],
        decoder_nc: Sequence[int],
        convs_per_block: int,
    ) -> None:
        super().__init__()
        if len(encoder_nc) != 5 or len(decoder_nc) != 6:
            raise ValueError(
                f"encoder_nc needs 5 widths and decoder_nc 6, got {list(encoder_nc)}, "
                f"{list(decoder_nc)}"
            )
        if decoder_nc[-1] != ndim:
            raise ValueError(f"decoder_nc must end with ndim={ndim}, got {list(decoder_nc)}")
        e, d, n = list(encoder_nc), list(decoder_nc), convs_per_block
        self.inconv = _Wrapped(ndim, in_channel, e[0], n, stride=1)
        self.downconv1 = _Wrapped(ndim, e[0], e[1], n, stride=2)
        self.downconv2 = _Wrapped(ndim, e[1], e[2], n, stride=2)
        self.downconv3 = _Wrapped(ndim, e[2], e[3], n, stride=2)
        self.downconv4 = _Wrapped(ndim, e[3], e[4], n, stride=2)
        self.upconv1 = _Up(ndim, e[4], e[3], d[0], n)
        self.upconv2 = _Up(ndim, d[0], e[2], d[1], n)
        self.upconv3 = _Up(ndim, d[1], e[1], d[2], n)
        self.keepblock = _ConvAct(ndim, d[2], d[3], n)
        self.upconv4 = _Up(ndim, d[3], e[0], d[4], n)
        self.outconv = _Out(ndim, d[4], d[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inconv(x)
        x2 = self.downconv1(x1)
        x3 = self.downconv2(x2)
        x4 = self.downconv3(x3)
        x = self.upconv1(self.downconv4(x4), x4)
        x = self.upconv2(x, x3)
        x = self.keepblock(self.upconv3(x, x2))
        return self.outconv(self.upconv4(x, x1))


class LinearSchedule(nn.Module):
    """The linear beta schedule ``beta_t = linspace(start, end, T)`` (computed in float64) and
    the forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``,
    ``abar_t = prod_{s <= t} (1 - beta_s)``; ``t`` indexes ``0 .. T-1`` as in the authors' code.

    The buffers are computed in float64 and stored in float32 (``1 - abar_t`` directly, which
    float32 would lose for small ``t``); they are not saved in checkpoints: the config defines them.
    """

    def __init__(self, n_timestep: int, linear_start: float, linear_end: float) -> None:
        super().__init__()
        if n_timestep < 1 or not 0 < linear_start <= linear_end < 1:
            raise ValueError(
                f"schedule needs T >= 1 and 0 < start <= end < 1, got T={n_timestep}, "
                f"start={linear_start}, end={linear_end}"
            )
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = int(n_timestep)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", abar.sqrt().float(), persistent=False)
        self.register_buffer("one_minus_alphas_cumprod", (1.0 - abar).float(), persistent=False)
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", (1.0 - abar).sqrt().float(), persistent=False
        )

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values[t].to(like.dtype).reshape(-1, *[1] * (like.dim() - 1))

    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(B, C, *S)`` and variance ``(B, 1, ...)`` of ``q(x_t | x_0)`` at steps ``t`` ``(B,)``."""
        mean = self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
        return mean, self._at(self.one_minus_alphas_cumprod, t, x_start)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw of ``x_t ~ q(x_t | x_0)``: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )
