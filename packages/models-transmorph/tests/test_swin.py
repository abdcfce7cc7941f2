"""The Swin encoder: windows, shift masks and blocks, checked against timm's 2D Swin Transformer."""

from __future__ import annotations

import pytest
import torch
from timm.models import swin_transformer as timm_swin

import regzoo
from regzoo_transmorph.swin import (
    PatchMerging,
    SwinBlock,
    SwinEncoder,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


@pytest.mark.parametrize("window", [(8, 8), (5, 7)])
def test_relative_position_index_matches_timm(window):
    expected = timm_swin.get_relative_position_index(*window)
    assert torch.equal(relative_position_index(window), expected)


def test_relative_position_index_3d_indexes_offsets():
    window = (5, 6, 7)
    index = relative_position_index(window)
    n = 5 * 6 * 7
    assert index.shape == (n, n)
    assert int(index.min()) == 0 and int(index.max()) == 9 * 11 * 13 - 1
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(
        1
    )
    offsets = (coords[:, :, None] - coords[:, None, :]).flatten(1).T
    # One table entry per relative offset: equal index <=> equal offset.
    pairs = torch.cat([index.reshape(-1, 1), offsets], dim=1)
    distinct = 9 * 11 * 13
    assert torch.unique(index).numel() == distinct
    assert torch.unique(offsets, dim=0).shape[0] == distinct
    assert torch.unique(pairs, dim=0).shape[0] == distinct


@pytest.mark.parametrize("shape,window", [((12, 10), (4, 5)), ((10, 12, 14), (5, 6, 7))])
def test_window_partition_roundtrip(shape, window):
    x = torch.randn(2, *shape, 3)
    windows = window_partition(x, window)
    n_windows = 1
    for s, w in zip(shape, window):
        n_windows *= s // w
    assert windows.shape == (2 * n_windows, torch.tensor(window).prod().item(), 3)
    # The first window holds the first voxels of each axis of the first image, row-major.
    first = x[(0, *[slice(0, w) for w in window])].reshape(-1, 3)
    assert torch.equal(windows[0], first)
    assert torch.equal(window_reverse(windows, window, shape), x)


def _timm_block(dim, heads, resolution, window, shift):
    return timm_swin.SwinTransformerBlock(
        dim, resolution, num_heads=heads, window_size=window, shift_size=shift, qkv_bias=False
    ).eval()


@pytest.mark.parametrize("window", [(8, 8), (4, 6)])
@pytest.mark.parametrize("shifted", [False, True])
def test_swin_block_matches_timm(window, shifted):
    torch.manual_seed(0)
    dim, heads, resolution = 16, 2, (16, 24)
    shift = tuple(w // 2 for w in window) if shifted else (0, 0)
    ours = SwinBlock(dim, heads, window, shift, qkv_bias=False).eval()
    ref = _timm_block(dim, heads, resolution, window, shift)
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(
        "relative_position_index" in k or "attn_mask" in k for k in missing
    )
    with torch.no_grad():
        ours.attn.relative_position_bias_table.normal_(0, 0.5)
        ref.attn.relative_position_bias_table.copy_(ours.attn.relative_position_bias_table)
    x = torch.randn(2, *resolution, dim)
    mask = shifted_window_mask(resolution, window, tuple(w // 2 for w in window))
    with torch.no_grad():
        torch.testing.assert_close(ours(x, mask), ref(x), rtol=1e-5, atol=1e-5)


def test_patch_merging_matches_timm():
    torch.manual_seed(0)
    ours = PatchMerging(8, ndim=2)
    ref = timm_swin.PatchMerging(8)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 10, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_shift_mask_separates_wrapped_regions():
    mask = shifted_window_mask((10, 12, 14), (5, 6, 7), (2, 3, 3))
    assert mask.shape == (8, 210, 210)
    assert torch.all(mask[0] == 0)  # the first window contains no wrapped-around tokens
    assert torch.all(mask[-1].unique() == torch.tensor([-100.0, 0.0]))
    assert torch.equal(mask, mask.transpose(1, 2))


def test_encoder_any_size_and_registry():
    torch.manual_seed(0)
    enc = regzoo.build(
        "backbone",
        {"name": "swin3d", "embed_dim": 6, "num_heads": [2, 2, 2, 2], "drop_path_rate": 0.0},
    ).eval()
    assert isinstance(enc, SwinEncoder) and enc.out_channels == [6, 12, 24, 48]
    with torch.no_grad():
        feats = enc(torch.rand(1, 2, 18, 21, 25))
    # Patches of 4 (padded up), then halvings rounding up.
    assert [tuple(f.shape[2:]) for f in feats] == [(5, 6, 7), (3, 3, 4), (2, 2, 2), (1, 1, 1)]
    assert [f.shape[1] for f in feats] == enc.out_channels
    enc2 = regzoo.build("backbone", {"name": "swin2d", "embed_dim": 8, "num_heads": [2, 2, 2, 2]})
    assert enc2.layers[0].window_size == (8, 8)
    assert [tuple(f.shape[2:]) for f in enc2(torch.rand(1, 2, 64, 40))] == [
        (16, 10),
        (8, 5),
        (4, 3),
        (2, 2),
    ]
