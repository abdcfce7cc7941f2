"""JSSR's networks, losses and three-stage schedule, on tiny inputs.

What makes the method JSSR and not another joint model: the stage at each step and which
networks each stage updates; the segmentor supervised by the fixed (target-modality) labels
only, so the moving labels never reach a loss; Phi the VoxelMorph U-Net by default (any dense
backbone by config); D pix2pix's PatchGAN.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.errors import ConfigError
from regzoo.models import Optimizers
from regzoo.testing import suite_config, tiny_batch
from regzoo_jssr.model import STAGES
from regzoo_jssr.networks import Generator, PatchDiscriminator, Register

NUM_CLASSES = 4  # the test preset's
NETS = ("generator", "discriminator", "register_net", "segmentor")


def _model(ndim: int = 2, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return regzoo.create_model("jssr", **{**suite_config("jssr", ndim), **overrides})


def _optim(model: torch.nn.Module) -> Optimizers:
    return Optimizers({k: make_optimizer(p, lr=1e-3) for k, p in model.parameter_groups().items()})


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _snapshot(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {
        net: {k: v.detach().clone() for k, v in getattr(model, net).state_dict().items()}
        for net in NETS
    }


def _changed(before, model) -> set[str]:
    after = _snapshot(model)
    return {
        net
        for net in NETS
        if any(not torch.equal(before[net][k], after[net][k]) for k in before[net])
    }


def test_plugin_import_leaves_the_networks_out():
    """Importing the plugin registers its entries without importing the network modules (its
    datasets subclass core's, so torch comes in, as it does when the registry loads core)."""
    heavy = ["regzoo_jssr.model", "regzoo_jssr.networks", "regzoo_jssr.baseline"]
    code = f"import sys, regzoo_jssr; assert not [m for m in {heavy} if m in sys.modules]"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stage_is_a_function_of_the_step():
    model = _model(stage_steps=[3, 2, 4])
    stages = [model.stage(s) for s in range(12)]
    assert stages == [STAGES[0]] * 3 + [STAGES[1]] * 2 + [STAGES[2]] * 7
    skip_seg = _model(stage_steps=[0, 2, 1])
    assert [skip_seg.stage(s) for s in range(4)] == [STAGES[1]] * 2 + [STAGES[2]] * 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"stage_steps": [1, 2]},
        {"stage_steps": [1, -1, 2]},
        {"gan_loss": "wgan"},
        {"num_classes": 1},
        {"transformer": {"name": "affine"}},
        {"seg_ce_weight": -1.0},
        {"smooth_weight": float("nan")},
    ],
)
def test_bad_configs_are_refused(overrides):
    with pytest.raises(ConfigError):
        _model(**overrides)


@pytest.mark.parametrize("ndim", [2, 3])
def test_each_stage_updates_its_networks(ndim):
    """Stage 1 moves S only; stage 2 D, G and Phi (not S); stage 3 all four."""
    model = _model(ndim, stage_steps=[1, 1, 1])
    optim = _optim(model)
    batch = tiny_batch(ndim, (32,) * ndim, num_classes=NUM_CLASSES)
    expected = [{"segmentor"}, {"discriminator", "generator", "register_net"}, set(NETS)]
    for step, nets in enumerate(expected):
        before = _snapshot(model)
        terms = model.training_step(batch, optim, step)
        assert _changed(before, model) == nets, model.stage(step)
        assert torch.isfinite(terms["loss"])
    assert {"seg_consistency", "seg_supervised", "gan", "l1", "smooth", "disc"} <= set(terms)


class _Recorder(dict):
    """A batch that records which keys are read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def items(self):
        self.read.update(self.keys())
        return super().items()

    def values(self):
        self.read.update(self.keys())
        return super().values()


def test_moving_labels_never_reach_a_loss():
    """Supervision is on the fixed (target-modality) labels only: through all three stages the
    moving labels are never read, and other moving labels give bit-identical updates, while
    other fixed labels do change them."""
    batch = tiny_batch(2, (32, 32), num_classes=NUM_CLASSES)
    other_moving = dict(batch, moving_label=torch.randint_like(batch["moving_label"], 4))
    other_fixed = dict(batch, fixed_label=torch.randint_like(batch["fixed_label"], 4))
    runs = {}
    for name, data in (("ref", batch), ("moving", other_moving), ("fixed", other_fixed)):
        model = _model(stage_steps=[1, 1, 2])
        optim = _optim(model)
        for step in range(4):
            recorder = _Recorder(data)
            model.training_step(recorder, optim, step)
            assert "moving_label" not in recorder.read, model.stage(step)
            assert "fixed_label" in recorder.read or model.stage(step) == STAGES[1]
        runs[name] = model.state_dict()
    for key, value in runs["ref"].items():
        assert torch.equal(value, runs["moving"][key]), key
    assert any(not torch.equal(v, runs["fixed"][k]) for k, v in runs["ref"].items())


def test_supervised_loss_is_dice_plus_weighted_cross_entropy():
    """``seg_ce_weight`` adds a voxel-wise cross-entropy to the paper's 1 - Dice (0: Dice only)."""
    batch = tiny_batch(2, (32, 32), num_classes=NUM_CLASSES)
    labels = batch["fixed_label"]
    with torch.no_grad():
        dice_only = _model().supervised_loss(batch)
        logits = _model().segmentor(batch["fixed"])
        probs = logits.softmax(1)
        onehot = torch.nn.functional.one_hot(labels[:, 0], NUM_CLASSES).permute(0, 3, 1, 2)
        dice = 2 * (probs * onehot).sum((2, 3)) / (probs + onehot).sum((2, 3))
        ce = torch.nn.functional.cross_entropy(logits, labels[:, 0])
        torch.testing.assert_close(dice_only, 1 - dice.mean())
        torch.testing.assert_close(
            _model(seg_ce_weight=0.5).supervised_loss(batch), dice_only + 0.5 * ce
        )


def test_unlabelled_fixed_images_are_not_supervised():
    """A fixed label map of zeros (a file without labels) is left out of the supervised Dice."""
    model = _model()
    batch = tiny_batch(2, (32, 32), num_classes=NUM_CLASSES)
    first = {k: v[:1] for k, v in batch.items()}
    half = dict(
        batch, fixed_label=torch.cat([batch["fixed_label"][:1], 0 * batch["fixed_label"][1:]])
    )
    with torch.no_grad():
        assert torch.allclose(model.supervised_loss(half), model.supervised_loss(first))
        none = dict(batch, fixed_label=torch.zeros_like(batch["fixed_label"]))
        assert model.supervised_loss(none) is None
    with pytest.raises(ConfigError, match="labelled fixed images"):
        model.training_step(none, _optim(model), 0)


def test_outputs_of_the_forward_pass():
    model = _model().eval()
    batch = tiny_batch(2, (32, 32), num_classes=NUM_CLASSES)
    with torch.no_grad():
        out = model(batch)
        synthesized = model.generator(batch["moving"], batch["fixed"])
    assert torch.allclose(out.synthesized, synthesized)
    assert out.moving_seg.shape == out.fixed_seg.shape == (2, NUM_CLASSES, 32, 32)
    assert out.warped_label.shape == (2, NUM_CLASSES, 32, 32)
    assert torch.allclose(out.warped_label.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    assert 0.0 <= float(out.synthesized.min()) and float(out.synthesized.max()) <= 1.0  # sigmoid
    # Phi registers the synthesis to y, and the same field warps x and G(x, y).
    field = model.register_net(synthesized, batch["fixed"])["ddf"]
    assert torch.allclose(out.ddf, field)
    warped_g = regzoo.spatial.warp(synthesized, field)
    assert torch.allclose(out.extras["warped_synthesized"], warped_g, atol=1e-6)
    terms = model.loss(batch, out)
    assert torch.isclose(terms["l1"], (warped_g - batch["fixed"]).abs().mean())


def test_instance_optimisation_refines_phi_only():
    model = _model()
    ids = {id(p) for p in model.io_parameters()}
    assert ids == {id(p) for p in model.register_net.parameters()}


def test_lsgan_discriminator_loss():
    model = _model(gan_loss="lsgan")
    real, fake = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        d_real, d_fake = model.discriminator(real), model.discriminator(fake)
        expected = 0.5 * (((d_real - 1) ** 2).mean() + (d_fake**2).mean())
        assert torch.isclose(model.discriminator_loss(real, fake), expected)


def test_phi_is_voxelmorph_by_default_and_takes_any_backbone():
    """Phi with the default config is VxmDense (the paper's counts); other backbones by config."""
    assert _count(Register(3, 1, {"name": "vxm-unet"}, {"name": "dense"})) == 327_331
    assert _count(Register(2, 1, {"name": "vxm-unet"}, {"name": "dense"})) == 109_170
    small = {"name": "vxm-unet", "enc_features": [8, 8], "dec_features": [8, 8, 8]}
    model = _model(backbone=small, transformer={"name": "svf"})
    assert model.register_net.backbone.out_channels == 8
    with torch.no_grad():
        out = model(tiny_batch(2, (32, 32), num_classes=NUM_CLASSES))
    assert out.velocity is not None and out.ddf.shape == (2, 2, 32, 32)


def _patchgan_count(ndim: int) -> int:
    """pix2pix's 70x70 PatchGAN (layers=3, 64 features) on one channel, counted layer by layer.

    4x4(x4) convolutions 1->64 (bias), 64->128, 128->256 (stride 2), 256->512 (stride 1),
    512->1 (bias); the instance-normalised convolutions carry no bias, the norm no parameters.
    """
    k = 4**ndim
    return (1 * 64 * k + 64) + 64 * 128 * k + 128 * 256 * k + 256 * 512 * k + (512 * k + 1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_discriminator_is_pix2pix_patchgan(ndim):
    assert _count(PatchDiscriminator(ndim, 1, 64, 3)) == _patchgan_count(ndim)


def test_patchgan_gives_pix2pix_patch_map():
    d = PatchDiscriminator(2, 1, 8, 3)
    assert d(torch.rand(1, 1, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 30x30 logits


def test_generator_sees_y_only_through_a_pooled_code():
    """G's decoder takes x's encoder features at every level (skips) and, at the bottleneck, y's
    encoding averaged over space: a code with no geometry, so G cannot copy y's structures."""
    g = Generator(2, 1, [4, 8, 8], norm=None).eval()
    seen = []
    g.dec[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x, y = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        g(x, y)
    code = seen[0][:, :8]  # the bottleneck input: y's code, then x's deepest features
    assert torch.allclose(code, code[..., :1, :1].expand_as(code))
    assert [block[0].main.in_channels for block in g.dec] == [8 + 8, 8 + 8, 8 + 4]
