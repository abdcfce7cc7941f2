"""Backbones and blocks: the VoxelMorph U-Net's layout and counts, any input size, block options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regzoo
from regzoo.nn import ConvBlock, VxmUnet, conv_nd, max_pool_nd, norm_nd, upsample_to

# Parameter counts of the official PyTorch VxmDense with the default features (the
# paper's 327,331 in 3D, 109,170 in 2D) minus its flow head (16 -> ndim channels, 3^ndim kernel).
FLOW_HEAD = {3: 16 * 3 * 27 + 3, 2: 16 * 2 * 9 + 2}
OFFICIAL_VXM_DENSE = {3: 327_331, 2: 109_170}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("ndim", [2, 3])
def test_helpers_pick_the_classes_of_the_dimensionality(ndim):
    assert conv_nd(ndim) is getattr(nn, f"Conv{ndim}d")
    assert max_pool_nd(ndim) is getattr(nn, f"MaxPool{ndim}d")
    assert isinstance(norm_nd(ndim, "instance", 4), getattr(nn, f"InstanceNorm{ndim}d"))
    assert isinstance(norm_nd(ndim, "batch", 4), getattr(nn, f"BatchNorm{ndim}d"))
    assert norm_nd(ndim, None, 4) is None
    with pytest.raises(ValueError):
        norm_nd(ndim, "group", 4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_conv_block_shapes_and_options(ndim):
    x = torch.randn(2, 3, *[8] * ndim)
    block = ConvBlock(ndim, 3, 5)
    assert block(x).shape == (2, 5, *[8] * ndim)
    assert block.main.bias is not None and isinstance(block.activation, nn.LeakyReLU)
    assert block.activation.negative_slope == 0.2
    strided = ConvBlock(ndim, 3, 4, stride=2, norm="instance", act="relu")
    assert strided(x).shape == (2, 4, *[4] * ndim)
    assert strided.main.bias is None  # a bias before normalisation is redundant
    y = strided(x)
    assert (y >= 0).all()
    # instance norm then ReLU: before the ReLU each channel had zero mean
    pre = strided.norm(strided.main(x))
    assert torch.allclose(pre.flatten(2).mean(-1), torch.zeros(2, 4), atol=1e-5)
    linear = ConvBlock(ndim, 3, 2, kernel=1, act=None)
    assert torch.allclose(linear(x), linear.main(x))
    with pytest.raises(ValueError):
        ConvBlock(ndim, 3, 2, act="gelu")


def test_upsample_to_matches_nearest_doubling_and_handles_odd_sizes():
    x = torch.randn(1, 2, 5, 7)
    assert torch.equal(upsample_to(x, (10, 14)), nn.Upsample(scale_factor=2, mode="nearest")(x))
    assert upsample_to(x, (9, 13)).shape == (1, 2, 9, 13)
    lin = upsample_to(x, (9, 13), mode="linear")
    assert torch.allclose(lin[..., 0, 0], x[..., 0, 0]) and torch.allclose(
        lin[..., -1, -1], x[..., -1, -1]
    )
    assert upsample_to(x, (5, 7)) is x


@pytest.mark.parametrize("ndim", [2, 3])
def test_vxm_unet_has_the_official_parameter_count_and_names(ndim):
    unet = regzoo.build("backbone", {"name": "vxm-unet", "ndim": ndim, "in_channels": 2})
    assert isinstance(unet, VxmUnet) and unet.out_channels == 16
    assert _count(unet) + FLOW_HEAD[ndim] == OFFICIAL_VXM_DENSE[ndim]
    expected = {
        f"{part}.{i}{'.0' if part != 'remaining' else ''}.main.{w}"
        for part, n in (("encoder", 4), ("decoder", 4), ("remaining", 3))
        for i in range(n)
        for w in ("weight", "bias")
    }
    assert set(unet.state_dict()) == expected
    # official widths: the last decoder level sees 32 upsampled + 16 skip channels
    assert unet.remaining[0].main.in_channels == 48
    assert unet.decoder[3][0].main.in_channels == 64


def test_vxm_unet_equals_the_official_operations_on_multiples_of_16():
    """On sizes divisible by 16 the forward is exactly pool(2) / Upsample(x2) / concat."""
    torch.manual_seed(0)
    unet = VxmUnet(2, 2).eval()
    x = torch.randn(2, 2, 32, 48)
    pool, up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="nearest")
    history, h = [], x
    for convs in unet.encoder:
        h = convs[0](h)
        history.append(h)
        h = pool(h)
    for convs in unet.decoder:
        h = torch.cat([up(convs[0](h)), history.pop()], 1)
    for conv in unet.remaining:
        h = conv(h)
    with torch.no_grad():
        assert torch.equal(unet(x), h)


@pytest.mark.parametrize(
    "size", [(21, 13), (17, 33), (5, 3), (1, 6), (9, 10, 11), (16, 16, 16), (3, 20, 7)]
)
def test_vxm_unet_takes_any_size(size):
    unet = VxmUnet(len(size), 2)
    out = unet(torch.randn(1, 2, *size))
    assert out.shape == (1, 16, *size)


@pytest.mark.parametrize("size", [(21, 13), (32, 32), (9, 10, 11)])
def test_half_res_ends_at_half_resolution(size):
    unet = VxmUnet(len(size), 2, dec_features=(32, 32, 32, 32, 16), half_res=True)
    assert unet.out_stride == 2 and unet.out_channels == 16
    out = unet(torch.randn(1, 2, *size))
    assert out.shape == (1, 16, *[(s + 1) // 2 for s in size])
    # the e0 skip (16 channels at full resolution) is never concatenated
    assert unet.remaining[0].main.in_channels == 32


def test_several_convs_per_level_and_custom_widths():
    unet = VxmUnet(
        2, 3, enc_features=(8, 8, 16, 16), dec_features=(16, 16, 8, 8, 4), nb_conv_per_level=2
    )
    assert len(unet.encoder) == 2 and all(len(level) == 2 for level in unet.encoder)
    assert unet.out_channels == 4
    assert unet(torch.randn(2, 3, 12, 10)).shape == (2, 4, 12, 10)
    with pytest.raises(ValueError, match="nb_conv_per_level"):
        VxmUnet(2, 2, enc_features=(8, 8, 8), nb_conv_per_level=2)
    with pytest.raises(ValueError, match="dec_features"):
        VxmUnet(2, 2, dec_features=(32, 32))


def test_backbone_entry_metadata():
    entry = regzoo.get_entry("backbone", "vxm-unet")
    assert entry.dims == (2, 3)
    assert "10.1109/TMI.2019.2897538" in entry.paper.url
    cfg = entry.default_config()
    assert list(cfg.enc_features) == [16, 32, 32, 32]
    assert list(cfg.dec_features) == [32, 32, 32, 32, 32, 16, 16]
    assert cfg.nb_conv_per_level == 1 and cfg.half_res is False


def test_vxm_unet_is_differentiable_end_to_end():
    unet = VxmUnet(3, 2)
    x = torch.randn(1, 2, 10, 9, 8, requires_grad=True)
    unet(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in unet.parameters())


@pytest.mark.parametrize("ndim", [2, 3])
def test_strided_vxm_unet_is_the_keras_layout(ndim):
    """The TensorFlow/paper layout (stride-2 encoder, the 16-channel skip at half resolution):
    at half resolution with decoder ``[32, 32, 32, 32, 16]`` (VoxelMorph-diff's MICCAI 2018
    network, DDIR's) the convolutions of the Keras ``unet_core``, counted by hand: encoder
    2->16, 16->32, 32->32, 32->32; decoder 32->32, 64->32, 64->32, 48->32, 32->16."""
    k = 3**ndim
    convs = [
        (2, 16),
        (16, 32),
        (32, 32),
        (32, 32),
        (32, 32),
        (64, 32),
        (64, 32),
        (48, 32),
        (32, 16),
    ]
    expected = sum(k * cin * cout + cout for cin, cout in convs)
    net = VxmUnet(ndim, 2, [16, 32, 32, 32], [32, 32, 32, 32, 16], half_res=True, strided=True)
    assert sum(p.numel() for p in net.parameters()) == expected
    size = (32, 32, 16)[:ndim] if ndim == 3 else (64, 48)
    out = net(torch.randn(1, 2, *size))
    assert out.shape == (1, 16, *[s // 2 for s in size])
    full = VxmUnet(ndim, 2, [16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16], strided=True)
    assert full(torch.randn(1, 2, *size)).shape == (1, 16, *size)
    with pytest.raises(ValueError, match="strided"):
        VxmUnet(ndim, 2, [16, 32, 32, 32], [32, 32, 32, 32], half_res=True, strided=True)
