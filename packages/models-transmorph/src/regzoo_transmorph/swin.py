"""The Swin Transformer encoder of TransMorph, written once for 2D and 3D windows.

Liu et al., "Swin Transformer: hierarchical vision transformer using shifted windows", ICCV 2021
(doi 10.1109/ICCV48922.2021.00986), as TransMorph adapts it to volumes: Chen et al., "TransMorph:
Transformer for unsupervised medical image registration", Medical Image Analysis 82:102615, 2022
(doi 10.1016/j.media.2022.102615).

Module and parameter names follow the official TransMorph code (``patch_embed.proj``,
``layers.{i}.blocks.{j}.attn.relative_position_bias_table``, ``layers.{i}.downsample.reduction``,
``norm{i}``), so released checkpoints load. Differences from the official code that do not change
a single weight:

- tokens travel between blocks as channels-last maps ``(B, *S, C)`` instead of flattened sequences
  with the sizes stored on the modules;
- the relative position index is a non-persistent buffer, recomputed from the window size (an
  index found in a checkpoint is dropped on load);
- the shifted-window mask is computed once per padded feature size and cached;
- attention runs through ``F.scaled_dot_product_attention`` (same formula, less memory);
- every axis is padded to whole windows and cropped back, as the official 3D TransMorph block
  (``TransMorph.py``, also used by -diff and -bspl) and the 2D blocks do; the official 3D
  TransMorph-Bayes and TransMorph-affine blocks crop only when one of the first two axes was
  padded, so a map padded along the third axis alone makes them fail (the token count no longer
  matches), where regzoo crops;
- odd sizes are padded before patch merging (the official patch merging requires even sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configs import Swin3dConfig

__all__ = [
    "MCDropout",
    "WindowAttention",
    "SwinBlock",
    "PatchMerging",
    "PatchEmbed",
    "SwinStage",
    "SwinEncoder",
    "relative_position_index",
    "window_partition",
    "window_reverse",
    "shifted_window_mask",
]

# Additive attention mask between tokens from different regions of a shifted window; the official
# code (and Swin) use -100 rather than -inf.
_MASK_VALUE = -100.0

# Order in which PatchMerging concatenates the 2**ndim voxels of each 2x2(x2) cell (official code;
# the reduction weights depend on it).
_MERGE_OFFSETS = {
    2: ((0, 0), (1, 0), (0, 1), (1, 1)),
    3: (
        (0, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
        (1, 1, 0),
        (0, 1, 1),
        (1, 0, 1),
        (1, 1, 1),
    ),
}
_AXES = "xyz"


class MCDropout(nn.Dropout):
    """Dropout that stays active in ``eval()`` mode (Monte-Carlo dropout, Gal & Ghahramani 2016)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, training=True, inplace=self.inplace)


def _dropout(p: float, monte_carlo: bool) -> nn.Dropout:
    return MCDropout(p) if monte_carlo else nn.Dropout(p)


def relative_position_index(window_size: Sequence[int]) -> torch.Tensor:
    """Index into the relative position bias table for every pair of tokens in a window.

    Token offsets ``d_k in [-(w_k - 1), w_k - 1]`` per axis are shifted to ``[0, 2 w_k - 2]`` and
    flattened in row-major order over axes of size ``2 w_k - 1`` (the official layout).

    Returns:
        ``(N, N)`` int64 with ``N = prod(window_size)``.
    """
    # Explicit CPU tensors, so that models can be built on the meta device.
    axes = [torch.arange(w, device="cpu") for w in window_size]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return sum(
        (rel[..., axis] + w - 1) * math.prod(2 * v - 1 for v in window_size[axis + 1 :])
        for axis, w in enumerate(window_size)
    )


def _window_pattern(ndim: int) -> tuple[str, str]:
    grid = " ".join(f"({a} w{a})" for a in _AXES[:ndim])
    windows = f"(b {' '.join(_AXES[:ndim])}) ({' '.join(f'w{a}' for a in _AXES[:ndim])}) c"
    return f"b {grid} c", windows


def window_partition(x: torch.Tensor, window_size: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C)`` with ``S`` divisible by the window to ``(B * nW, N, C)`` windows.

    Windows are ordered batch-major, then row-major over the window grid; tokens row-major within
    a window (the order the relative position index and the shift mask assume).
    """
    maps, windows = _window_pattern(len(window_size))
    sizes = {f"w{a}": w for a, w in zip(_AXES, window_size)}
    return rearrange(x, f"{maps} -> {windows}", **sizes)


def window_reverse(
    windows: torch.Tensor, window_size: Sequence[int], shape: Sequence[int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a map of spatial ``shape``."""
    maps, pattern = _window_pattern(len(window_size))
    sizes = {f"w{a}": w for a, w in zip(_AXES, window_size)}
    sizes.update({a: s // w for a, s, w in zip(_AXES, shape, window_size)})
    return rearrange(windows, f"{pattern} -> {maps}", **sizes)


@lru_cache(maxsize=32)
def _shifted_window_mask(
    shape: tuple[int, ...], window_size: tuple[int, ...], shift_size: tuple[int, ...], device: str
) -> torch.Tensor:
    # Label each voxel of the padded map by which of the three bands [0, -w), [-w, -s), [-s, end)
    # it falls into on every axis; after the cyclic shift, tokens of one window may attend to each
    # other only when their labels agree.
    region = torch.zeros(shape, dtype=torch.long)
    for axis, (n, w, s) in enumerate(zip(shape, window_size, shift_size)):
        band = torch.zeros(n, dtype=torch.long)
        band[n - w : n - s] = 1
        band[n - s :] = 2
        view = [1] * len(shape)
        view[axis] = n
        region = region * 3 + band.view(view)
    labels = window_partition(region[None, ..., None], window_size).squeeze(-1)
    mask = torch.zeros(labels.shape[0], labels.shape[1], labels.shape[1])
    mask.masked_fill_(labels[:, None, :] != labels[:, :, None], _MASK_VALUE)
    return mask.to(device)


def shifted_window_mask(
    shape: Sequence[int],
    window_size: Sequence[int],
    shift_size: Sequence[int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Additive attention mask ``(nW, N, N)`` of shifted windows on a padded map of ``shape``.

    Entries are 0 between tokens from the same region and -100 otherwise; cached by size, window,
    shift and device (do not modify the returned tensor).
    """
    return _shifted_window_mask(
        tuple(int(s) for s in shape),
        tuple(int(w) for w in window_size),
        tuple(int(s) for s in shift_size),
        str(torch.device(device)),
    )


class WindowAttention(nn.Module):
    """Multi-head self-attention within a window, with a learned relative position bias.

    Args:
        dim: token channels.
        window_size: window extent per spatial axis.
        num_heads: attention heads (``dim`` must be divisible by it).
        qkv_bias: learn a bias for the query/key/value projection (off in TransMorph).
        rpe: add the relative position bias (on in TransMorph; the table exists either way, as in
            the official code).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        monte_carlo: keep both dropouts active at inference (TransMorph-Bayes).
    """

    def __init__(
        self,
        dim: int,
        window_size: Sequence[int],
        num_heads: int,
        qkv_bias: bool = True,
        rpe: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        monte_carlo: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = tuple(int(w) for w in window_size)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.rpe = rpe
        table = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        if rpe:
            self.register_buffer(
                "relative_position_index",
                relative_position_index(self.window_size),
                persistent=False,
            )
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = _dropout(attn_drop, monte_carlo)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = _dropout(proj_drop, monte_carlo)
        self._register_load_state_dict_pre_hook(_drop_relative_position_index)

    def position_bias(self) -> torch.Tensor:
        """The relative position bias ``(heads, N, N)``."""
        n = math.prod(self.window_size)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: ``(B * nW, N, C)`` tokens of ``nW`` windows per image.
            mask: ``(nW, N, N)`` additive mask of shifted windows, or ``None``.
        """
        windows, n, c = x.shape
        qkv = self.qkv(x).reshape(windows, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.position_bias().unsqueeze(0) if self.rpe else None
        if mask is not None:
            mask = mask.unsqueeze(1)
            bias = mask if bias is None else bias + mask
            bias = bias.expand(windows // mask.shape[0], *bias.shape).reshape(
                windows, *bias.shape[1:]
            )
        if bias is not None:
            bias = bias.to(q.dtype)
        active = self.training or isinstance(self.attn_drop, MCDropout)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if active else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(windows, n, c)
        return self.proj_drop(self.proj(x))


def _drop_relative_position_index(state_dict, prefix, *args) -> None:
    # Official checkpoints store the index; it depends only on the window size and is recomputed.
    state_dict.pop(prefix + "relative_position_index", None)


class SwinBlock(nn.Module):
    """Window attention + MLP, each pre-normalised and residual, on ``(B, *S, C)`` maps.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: window extent per axis.
        shift_size: cyclic shift per axis (shifted-window block) or zeros; the shift is applied
            only when every component is positive, as in the official code.
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias, rpe: see :class:`WindowAttention`.
        drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic depth rate of both residual branches.
        monte_carlo: dropout stays on at inference (TransMorph-Bayes).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        rpe: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        monte_carlo: bool = False,
    ) -> None:
        super().__init__()
        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(int(s) for s in shift_size)
        if not all(0 <= s < w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift {self.shift_size} must lie in [0, window {self.window_size})")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, rpe, attn_drop, drop, monte_carlo
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        if monte_carlo:
            self.mlp.drop1, self.mlp.drop2 = MCDropout(drop), MCDropout(drop)

    @property
    def shifted(self) -> bool:
        return min(self.shift_size) > 0

    def padded_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """``shape`` rounded up to whole windows."""
        return tuple(-(-s // w) * w for s, w in zip(shape, self.window_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, *S, C) -> (B, *S, C)``; ``mask`` is the shifted-window mask of the padded map."""
        shape = x.shape[1:-1]
        ndim = len(shape)
        padded = self.padded_shape(shape)
        y = self.norm1(x)
        pad = [0, 0]
        for s, p in zip(reversed(shape), reversed(padded)):
            pad += [0, p - s]
        y = F.pad(y, pad)
        dims = tuple(range(1, ndim + 1))
        if self.shifted:
            y = torch.roll(y, [-s for s in self.shift_size], dims)
        y = window_partition(y, self.window_size)
        y = self.attn(y, mask if self.shifted else None)
        y = window_reverse(y, self.window_size, padded)
        if self.shifted:
            y = torch.roll(y, list(self.shift_size), dims)
        y = y[(slice(None), *[slice(0, s) for s in shape])]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the resolution: concatenate each 2x2(x2) cell, normalise, project to ``2 * dim``.

    Odd sizes are zero-padded at the end first. ``(B, *S, C) -> (B, *ceil(S / 2), 2C)``.
    """

    def __init__(self, dim: int, ndim: int = 3) -> None:
        super().__init__()
        self.ndim = ndim
        cell = 2**ndim
        self.reduction = nn.Linear(cell * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(cell * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:-1]
        pad = [0, 0]
        for s in reversed(shape):
            pad += [0, s % 2]
        x = F.pad(x, pad)
        parts = [
            x[(slice(None), *[slice(o, None, 2) for o in offset])]
            for offset in _MERGE_OFFSETS[self.ndim]
        ]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``(B, C_in, *S) -> (B, *ceil(S / p), C)``.

    The input is zero-padded at the end to whole patches; a LayerNorm follows when ``norm``.
    """

    def __init__(
        self, ndim: int, patch_size: int, in_channels: int, embed_dim: int, norm: bool = True
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        conv = nn.Conv3d if ndim == 3 else nn.Conv2d
        self.proj = conv(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad = []
        for s in reversed(x.shape[2:]):
            pad += [0, (-s) % p]
        x = self.proj(F.pad(x, pad)).movedim(1, -1)
        return self.norm(x) if self.norm is not None else x


class SwinStage(nn.Module):
    """One stage (the official ``BasicLayer``): ``depth`` blocks, every second one shifted by half
    a window, then an optional :class:`PatchMerging`.

    Args:
        use_checkpoint: recompute each block's activations in the backward pass (saves memory).
        Others: see :class:`SwinBlock`; ``drop_path`` is one rate per block.
    """

    def __init__(
        self,
        ndim: int,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int],
        mlp_ratio: float,
        qkv_bias: bool,
        rpe: bool,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
        monte_carlo: bool = False,
    ) -> None:
        super().__init__()
        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(w // 2 for w in self.window_size)
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                self.window_size,
                self.shift_size if i % 2 else (0,) * ndim,
                mlp_ratio,
                qkv_bias,
                rpe,
                drop,
                attn_drop,
                drop_path[i],
                monte_carlo,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, ndim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, *S, C)`` to (stage output, merged map for the next stage or ``None``)."""
        padded = self.blocks[0].padded_shape(x.shape[1:-1])
        mask = shifted_window_mask(padded, self.window_size, self.shift_size, x.device)
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


# The swin3d entry's config is the one source of the encoder's defaults.
_DEFAULTS = Swin3dConfig()


class SwinEncoder(nn.Module):
    """Hierarchical Swin encoder: patch embedding, stages with patch merging, a LayerNorm per output.

    Registered as the backbones ``swin3d`` and ``swin2d``. Unlike a U-Net backbone it returns one
    feature map per stage (``out_channels`` lists their widths).

    Args:
        ndim: 2 or 3.
        in_channels: input channels (2 for a concatenated moving/fixed pair).
        patch_size: edge of the patches embedded as tokens (4).
        embed_dim: channels of the first stage; stage ``i`` has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window extent per axis.
        mlp_ratio: MLP width over channels (4).
        qkv_bias: learn a query/key/value bias.
        drop_rate: dropout after patch embedding, attention projections and MLPs.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly over all blocks from 0 to this value.
        rpe: relative position bias.
        patch_norm: LayerNorm after patch embedding.
        out_indices: stages whose outputs are returned (each gets a LayerNorm ``norm{i}``).
        use_checkpoint: activation checkpointing of every block.
        mc_drop: if > 0, Monte-Carlo dropout at this rate on attention weights, projections and
            MLPs, active at inference too (TransMorph-Bayes); overrides ``drop_rate`` and
            ``attn_drop_rate`` inside the blocks.
    Shapes:
        ``(B, in_channels, *S)`` to a list of ``(B, embed_dim * 2**i, *ceil(S / (patch * 2**i)))``,
        in channels-last layout (views of the token maps, not copies).
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        patch_size: int = _DEFAULTS.patch_size,
        embed_dim: int = _DEFAULTS.embed_dim,
        depths: Sequence[int] = _DEFAULTS.depths,
        num_heads: Sequence[int] = _DEFAULTS.num_heads,
        window_size: Sequence[int] = _DEFAULTS.window_size,
        mlp_ratio: float = _DEFAULTS.mlp_ratio,
        qkv_bias: bool = _DEFAULTS.qkv_bias,
        drop_rate: float = _DEFAULTS.drop_rate,
        attn_drop_rate: float = _DEFAULTS.attn_drop_rate,
        drop_path_rate: float = _DEFAULTS.drop_path_rate,
        rpe: bool = _DEFAULTS.rpe,
        patch_norm: bool = _DEFAULTS.patch_norm,
        out_indices: Sequence[int] = _DEFAULTS.out_indices,
        use_checkpoint: bool = _DEFAULTS.use_checkpoint,
        mc_drop: float = _DEFAULTS.mc_drop,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if len(window_size) < ndim:
            raise ValueError(f"window_size needs {ndim} values, got {list(window_size)}")
        if len(num_heads) != len(depths):
            raise ValueError(
                f"num_heads {list(num_heads)} and depths {list(depths)} differ in length"
            )
        # The official diff/bspl/Bayes configs list a fourth window value that is never used.
        window_size = tuple(int(w) for w in window_size[:ndim])
        self.ndim = ndim
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_layers = len(depths)
        self.out_indices = tuple(out_indices)
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        self.patch_embed = PatchEmbed(ndim, patch_size, in_channels, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        blocks = sum(depths)
        rates = [drop_path_rate * i / max(blocks - 1, 1) for i in range(blocks)]
        monte_carlo = mc_drop > 0
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    ndim,
                    self.num_features[i],
                    depth,
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    rpe,
                    mc_drop if monte_carlo else drop_rate,
                    mc_drop if monte_carlo else attn_drop_rate,
                    rates[start : start + depth],
                    downsample=i < self.num_layers - 1,
                    use_checkpoint=use_checkpoint,
                    monte_carlo=monte_carlo,
                )
            )
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    @property
    def size_multiple(self) -> int:
        """Input sizes divisible by this give exact halvings at every stage (32 by default)."""
        return self.patch_size * 2 ** (self.num_layers - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(out).movedim(-1, 1))
        return outs
