"""DiffuseMorph's networks and schedule against the authors' definitions (DiffuseMorph/DiffuseMorph).

Parameter counts were taken from the authors' ``UNet`` and ``registUnetBlock`` built with their
``config/diffuseMorph_train_3D.json`` and ``_2D.json`` settings (``model/networks.py:define_G``).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import regzoo
from regzoo_diffusemorph.networks import LinearSchedule, TimeEmbedding

# the authors' networks, counted: 3D (image_size [128, 128, 32]) and 2D (image_size 128)
OFFICIAL_3D = {"denoise_fn": 715_665, "field_fn": 361_299}  # 1,076,964 in all
OFFICIAL_2D = {"denoise_fn": 15_936_129, "field_fn": 74_736_258}  # 90,672,387 in all
# the authors' 2D U-Net configured for 64x64 images: its 8x8 level now matches attn_res [8]
OFFICIAL_2D_UNET_AT_64 = 16_724_865


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_plugin_import_is_cheap():
    """Importing the plugin registers its entries without importing torch or the networks."""
    code = (
        "import sys, regzoo_diffusemorph; "
        "assert 'torch' not in sys.modules and 'regzoo_diffusemorph.model' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("name", "expected"), [("diffusemorph", OFFICIAL_3D)])
def test_parameter_counts_equal_the_official_3d_configuration(name, expected):
    model = regzoo.create_model(name)
    assert {k: _count(getattr(model, k)) for k in expected} == expected
    assert _count(model) == 1_076_964


def test_parameter_counts_equal_the_official_2d_configuration():
    model = regzoo.create_model("diffusemorph-2d")
    assert {k: _count(getattr(model, k)) for k in OFFICIAL_2D} == OFFICIAL_2D
    assert _count(model) == 90_672_387
    assert "field_fn.inconv.block.block.2.weight" in model.state_dict()  # two convs per block


def test_attention_placement_follows_the_configured_image_size():
    """With ``image_size`` 64 the 2D U-Net's coarsest level (8) is in ``attn_res``: attention is
    added there, as the authors' code does, and the count changes."""
    unet = regzoo.create_model(
        "diffusemorph-2d", image_size=64, encoder_nc=[8] * 5, decoder_nc=[8] * 5 + [2]
    ).denoise_fn
    assert _count(unet) == OFFICIAL_2D_UNET_AT_64
    attn = [name for name, _ in unet.named_modules() if name.endswith(".attn")]
    assert "mid.0.attn" in attn and len(attn) > 1
    default = regzoo.create_model("diffusemorph").denoise_fn
    assert [n for n, _ in default.named_modules() if n.endswith(".attn")] == ["mid.0.attn"]


def test_state_dict_names_follow_the_official_layout():
    names = regzoo.create_model("diffusemorph").state_dict()
    for key in (
        "denoise_fn.time_mlp.0.inv_freq",
        "denoise_fn.time_mlp.1.weight",
        "denoise_fn.downs.0.weight",
        "denoise_fn.downs.1.res_block.mlp.1.weight",
        "denoise_fn.downs.1.res_block.block1.block.0.weight",
        "denoise_fn.downs.1.res_block.block2.block.3.weight",
        "denoise_fn.mid.0.attn.qkv.weight",
        "denoise_fn.final_conv.block.3.bias",
        "field_fn.inconv.block.block.0.weight",
        "field_fn.upconv1.upconv.weight",
        "field_fn.keepblock.block.0.weight",
        "field_fn.outconv.block.weight",
    ):
        assert key in names, key
    assert not any(k.startswith("schedule.") for k in names)


def test_official_3d_widths_at_32x32x16():
    """The authors' 3D widths run on a 32x32x16 volume: latent like the fixed image, 3-channel
    field, and a training step's terms."""
    torch.manual_seed(0)
    model = regzoo.create_model("diffusemorph", ndim=3)
    batch = {"moving": torch.rand(1, 1, 32, 32, 16), "fixed": torch.rand(1, 1, 32, 32, 16)}
    out = model(batch)
    assert out.ddf.shape == (1, 3, 32, 32, 16) and out.extras["latent"].shape == (1, 1, 32, 32, 16)
    terms = model.loss(batch, out)
    assert set(terms) == {"noise", "similarity", "regularizer", "loss"}
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_schedule_is_linear_from_1e6_to_1e2_over_2000_steps():
    schedule = LinearSchedule(2000, 1e-6, 1e-2)
    assert schedule.num_timesteps == 2000
    torch.testing.assert_close(schedule.betas[[0, -1]], torch.tensor([1e-6, 1e-2]))
    assert torch.allclose(schedule.betas.diff(), torch.full((1999,), (1e-2 - 1e-6) / 1999))


def test_q_has_the_closed_form_mean_and_variance():
    """``q(x_t | x_0)``: mean ``sqrt(abar_t) x_0``, variance ``1 - abar_t``, with ``abar_t`` the
    direct product of ``1 - beta_s`` over ``s <= t`` (computed here one factor at a time)."""
    schedule = LinearSchedule(2000, 1e-6, 1e-2)
    x0 = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 1, 999, 1999])
    betas = [1e-6 + (1e-2 - 1e-6) * s / 1999 for s in range(2000)]
    abar = [math.prod(1 - b for b in betas[: int(i) + 1]) for i in t]
    mean, var = schedule.q_mean_variance(x0, t)
    expected = torch.tensor(abar, dtype=torch.float64).sqrt().float().view(-1, 1, 1, 1) * x0
    torch.testing.assert_close(mean, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        var.flatten(), torch.tensor([1 - a for a in abar]), rtol=1e-6, atol=0
    )
    noise = torch.randn_like(x0)
    torch.testing.assert_close(schedule.q_sample(x0, t, noise), mean + var.sqrt() * noise)
    # and q_sample draws that distribution: many draws at one step
    n = 20000
    draws = schedule.q_sample(
        x0[:1].expand(n, -1, -1, -1), torch.full((n,), 999), torch.randn(n, 1, 8, 8)
    )
    mean_999, var_999 = schedule.q_mean_variance(x0[:1], t[2:3])
    torch.testing.assert_close(draws.mean(0, keepdim=True), mean_999, rtol=0, atol=0.03)
    assert torch.allclose(draws.var(0).mean(), var_999.squeeze(), rtol=0.03)


def test_time_embedding_is_sinusoidal():
    """``[sin(t / 10000^(2k/d)), cos(t / 10000^(2k/d))]``, ``k < d/2``, for integer steps."""
    emb = TimeEmbedding(8)
    t = torch.tensor([0, 1, 17, 1999])
    out = emb(t)
    expected = [
        [math.sin(s / 10000 ** (2 * k / 8)) for k in range(4)]
        + [math.cos(s / 10000 ** (2 * k / 8)) for k in range(4)]
        for s in t.tolist()
    ]
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_initialisation_is_the_authors():
    """Orthogonal weights in the diffusion network, N(0, 0.02) in the deformation network."""
    torch.manual_seed(0)
    model = regzoo.create_model("diffusemorph", ndim=2)
    w = model.denoise_fn.time_mlp[1].weight  # 32 x 8: orthonormal columns
    torch.testing.assert_close(w.T @ w, torch.eye(8), rtol=1e-5, atol=1e-5)
    conv = model.field_fn.upconv1.block.block[0]
    assert abs(conv.weight.std().item() - 0.02) < 0.002 and not conv.bias.any()
