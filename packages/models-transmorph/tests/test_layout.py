"""Parameter counts of the official TransMorph networks, and the loader on their layouts.

The counts are the official networks' (``TransMorph.py``, ``TransMorph_diff.py`` and their
CONFIGS, counted by building them). That regzoo's TransMorph *is* the official network rests on
``test_official_fixture.py``: a checkpoint written from the authors' code reproduces their field.
The -bspl, -Bayes, -diff and -diff-fullres layouts (every state_dict name and shape) were written
by the official networks (``fixtures/transmorph_layouts.json``); the 2D layout below is transcribed
by hand from ``RaFD/TransMorph2D``. They check the loader's filtering (size-dependent buffers,
unused official heads); no output of those variants is compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import regzoo
from regzoo_transmorph.checkpoint import load_official_checkpoint

OFFICIAL_COUNTS = {
    "transmorph": 46_771_251,
    "transmorph-diff": 46_557_414,
    "transmorph-diff-fullres": 46_772_550,
    "transmorph-bspl": 46_806_307,
    "transmorph-bayes": 46_772_983,
    "transmorph-affine": 90_095_131,  # TransMorph_affine's TransMorphAffine at 160x192x224
    "transmorph-large": 108_343_907,
    "transmorph-small": 11_757_195,
    "transmorph-tiny": 244_527,
}
# Parameters the official network holds but never uses (regzoo drops them on load):
# TransMorph-Bayes' net.reg_head (16 -> 3, 1,299) and net.sigma_head (16 -> 1, 433).
OFFICIAL_UNUSED = {"transmorph-bayes": 1_732}
IMG_3D = (160, 192, 224)


def _swin(embed, depths, heads, window, ndim=3, in_chans=2, patch=4, prefix="transformer."):
    """Official ``SwinTransformer`` (qkv_bias False, rpe True, patch_norm True, 4 outputs)."""
    k = (patch,) * ndim
    n = math.prod(window)
    table = math.prod(2 * w - 1 for w in window)
    cell = 2**ndim
    s = {
        "patch_embed.proj.weight": (embed, in_chans, *k),
        "patch_embed.proj.bias": (embed,),
        "patch_embed.norm.weight": (embed,),
        "patch_embed.norm.bias": (embed,),
    }
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = embed * 2**i
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            s.update(
                {
                    b + "norm1.weight": (c,),
                    b + "norm1.bias": (c,),
                    b + "attn.relative_position_bias_table": (table, h),
                    b + "attn.relative_position_index": (n, n),
                    b + "attn.qkv.weight": (3 * c, c),
                    b + "attn.proj.weight": (c, c),
                    b + "attn.proj.bias": (c,),
                    b + "norm2.weight": (c,),
                    b + "norm2.bias": (c,),
                    b + "mlp.fc1.weight": (4 * c, c),
                    b + "mlp.fc1.bias": (4 * c,),
                    b + "mlp.fc2.weight": (c, 4 * c),
                    b + "mlp.fc2.bias": (c,),
                }
            )
        if i < len(depths) - 1:
            s[f"layers.{i}.downsample.reduction.weight"] = (2 * c, cell * c)
            s[f"layers.{i}.downsample.norm.weight"] = (cell * c,)
            s[f"layers.{i}.downsample.norm.bias"] = (cell * c,)
    for i in range(len(depths)):
        s[f"norm{i}.weight"] = (embed * 2**i,)
        s[f"norm{i}.bias"] = (embed * 2**i,)
    return {prefix + key: shape for key, shape in s.items()}


def _conv(name, out, inp, ndim, bias=False):
    s = {name + ".weight": (out, inp, *(3,) * ndim)}
    if bias:
        s[name + ".bias"] = (out,)
    return s


def _decoder(embed, ndim, up3_out, full, reg_head_chan=16, prefix=""):
    """``up0``-``up3`` (+ ``up4``), ``c1`` (+ ``c2``): DecoderBlock = conv1, conv2 of Conv3dReLU."""
    e = embed
    blocks = [("up0", 8 * e, 4 * e, 4 * e), ("up1", 4 * e, 2 * e, 2 * e), ("up2", 2 * e, e, e)]
    blocks.append(("up3", e, up3_out, e // 2))
    if full:
        blocks.append(("up4", e // 2, reg_head_chan, reg_head_chan))
    s = {}
    for name, inp, out, skip in blocks:
        s.update(_conv(f"{prefix}{name}.conv1.0", out, inp + skip, ndim))
        s.update(_conv(f"{prefix}{name}.conv2.0", out, out, ndim))
    s.update(_conv(prefix + "c1.0", e // 2, 2, ndim))
    if full:
        s.update(_conv(prefix + "c2.0", reg_head_chan, 2, ndim))
    return s


def official_transmorph(embed=96, depths=(2, 2, 4, 2), heads=(4, 4, 8, 8), ndim=3, img=IMG_3D):
    """``TransMorph(config)``: encoder, decoder, ``reg_head``, ``spatial_trans.grid``."""
    window = (5, 6, 7) if ndim == 3 else (8, 8)
    s = _swin(embed, depths, heads, window, ndim)
    s.update(_decoder(embed, ndim, embed // 2, full=True))
    s.update(_conv("reg_head.0", ndim, 16, ndim, bias=True))
    s["spatial_trans.grid"] = (1, ndim, *img)
    return s


def _is_buffer(name):
    return name.endswith(("relative_position_index", "spatial_trans.grid"))


def _random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout.items():
        if name.endswith("relative_position_index"):
            state[name] = torch.randint(0, 5, shape, generator=g)
        else:
            state[name] = torch.randn(shape, generator=g)
    return state


def _meta_model(name, **overrides):
    with torch.device("meta"):
        return regzoo.create_model(name, **overrides)


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_official(name):
    model = _meta_model(name)
    expected = OFFICIAL_COUNTS[name] - OFFICIAL_UNUSED.get(name, 0)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_official_2d_state_dict_loads_into_2d_transmorph():
    layout = official_transmorph(ndim=2, img=(256, 256))
    state = {
        k: torch.empty(s, dtype=torch.long if "index" in k else torch.float32)
        for k, s in layout.items()
    }
    model = _meta_model("transmorph", ndim=2)
    model.load_state_dict(state, strict=True, assign=True)
    assert sum(p.numel() for p in model.parameters()) == sum(
        math.prod(s) for k, s in layout.items() if not _is_buffer(k)
    )


# Written by the official TransMorph-bspl, -Bayes and -diff (tools/fixtures/make_transmorph_fixture.py).
LAYOUTS = json.loads((Path(__file__).parent / "fixtures" / "transmorph_layouts.json").read_text())


def _official_layout(name):
    """Names and shapes of the official network's state_dict, and regzoo options of its sizes."""
    entry = LAYOUTS[name]
    return {k: tuple(v) for k, v in entry["state_dict"].items()}, entry["network"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_variant_checkpoints_load(name):
    layout, network = _official_layout(name)
    state = _random_state(layout)
    model = regzoo.create_model(name, **network)
    load_official_checkpoint(model, state)
    loaded = model.state_dict()
    used = {k for k in layout if not _is_buffer(k) and not k.startswith(model.unused_official_keys)}
    assert set(loaded) == used
    for key in used:
        assert torch.equal(loaded[key], state[key]), key


def test_bayes_unused_official_heads_are_only_dropped_by_the_filter():
    layout, network = _official_layout("transmorph-bayes")
    assert "net.sigma_head.0.weight" in layout  # held by the official network, never used
    model = regzoo.create_model("transmorph-bayes", **network)
    with pytest.raises(RuntimeError, match="sigma_head"):
        model.load_state_dict(_random_state(layout), strict=True)
