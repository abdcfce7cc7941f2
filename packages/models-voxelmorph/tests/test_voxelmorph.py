"""VoxelMorph, VoxelMorph-1 and VoxelMorph-diff: what makes them those methods.

Parameter counts are those of the official PyTorch ``VxmDense`` (voxelmorph 0.2, ``networks.py``)
with the same features; files written by the official code and its outputs on them are compared in
``test_official_fixture.py``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import regzoo
from regzoo.config import resolve_config
from regzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from regzoo.engine.optim import make_optimizer
from regzoo.engine.trainer import train
from regzoo.errors import ConfigError
from regzoo.labels import one_hot
from regzoo.models import Optimizers, contract_problem
from regzoo.spatial import compose, integrate_velocity, jacobian_determinant, resize_field, warp
from regzoo.testing import check_model, parametrize_models, tiny_batch

# Official VxmDense parameter counts (flow head included): the paper gives 327,331 for the 3D
# default; the others were counted on voxelmorph 0.2's PyTorch VxmDense / Unet with the same
# features. VoxelMorph-diff is the Unet with half_res=True and two 3x3 heads (mean, log sigma).
OFFICIAL_COUNTS = {
    ("voxelmorph", 3): 327_331,
    ("voxelmorph", 2): 109_170,
    ("voxelmorph-1", 3): 276_523,
    ("voxelmorph-1", 2): 92_274,
    ("voxelmorph-diff", 3): 280_198,
    ("voxelmorph-diff", 2): 93_284,
}


def test_plugin_import_is_cheap():
    """Importing the plugin registers its entries without importing torch or the network."""
    code = (
        "import sys, regzoo_voxelmorph; "
        "assert 'torch' not in sys.modules and 'regzoo_voxelmorph.model' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _batch(ndim: int, size, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    return tiny_batch(ndim, size, batch_size=batch_size, seed=seed)


@pytest.mark.parametrize(("name", "ndim"), sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_the_official_vxm_dense(name, ndim):
    assert _count(regzoo.create_model(name, ndim=ndim)) == OFFICIAL_COUNTS[(name, ndim)]


@pytest.mark.parametrize("transformer", ["dense", "svf"])
def test_svf_adds_no_parameters(transformer):
    model = regzoo.create_model("voxelmorph", ndim=3, transformer=transformer)
    assert _count(model) == OFFICIAL_COUNTS[("voxelmorph", 3)]


def test_state_dict_names_follow_the_official_layout():
    names = list(regzoo.create_model("voxelmorph", ndim=3).state_dict())
    assert names[:2] == ["unet_model.encoder.0.0.main.weight", "unet_model.encoder.0.0.main.bias"]
    assert "unet_model.decoder.3.0.main.weight" in names
    assert "unet_model.remaining.2.main.weight" in names
    assert names[-2:] == ["flow.weight", "flow.bias"]
    diff = regzoo.create_model("voxelmorph-diff", ndim=2).state_dict()
    assert diff["flow_logsigma.weight"].shape == (2, 16, 3, 3)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("voxelmorph", (64, 64)),
        ("voxelmorph", (37, 45)),
        ("voxelmorph", (20, 24, 18)),
        ("voxelmorph-1", (33, 17)),
        ("voxelmorph-diff", (37, 45)),
        ("voxelmorph-diff", (15, 20, 17)),
    ],
)
def test_forward_shapes_on_any_size(name, size):
    ndim = len(size)
    model = regzoo.create_model(name, ndim=ndim)
    batch = _batch(ndim, size)
    out = model(batch)
    assert out.warped.shape == (2, 1, *size)
    assert out.ddf.shape == (2, ndim, *size)
    assert out.warped_label.shape == (2, 4, *size)
    if name == "voxelmorph-diff":
        half = tuple((s + 1) // 2 for s in size)  # the U-Net ends at half resolution
        assert (
            out.extras["flow_mean"].shape == out.extras["flow_log_sigma"].shape == (2, ndim, *half)
        )
        assert out.velocity.shape == (2, ndim, *[s // 2 for s in size])
    else:
        assert out.velocity is None


@pytest.mark.parametrize("name", ["voxelmorph", "voxelmorph-diff"])
def test_untrained_model_is_near_identity(name):
    torch.manual_seed(0)
    model = regzoo.create_model(name, ndim=2).eval()
    batch = _batch(2, (48, 40))
    out = model(batch)
    # flow head weights ~ N(0, 1e-5), bias 0: displacements of order 1e-4 voxel
    assert out.ddf.abs().max() < 1e-2
    assert (out.warped - batch["moving"]).abs().max() < 1e-2


def test_flow_head_initialisation():
    torch.manual_seed(0)
    model = regzoo.create_model("voxelmorph-diff", ndim=3)
    assert model.flow.weight.std().item() == pytest.approx(1e-5, rel=0.1)
    assert torch.all(model.flow.bias == 0)
    assert model.flow_logsigma.weight.abs().max() < 1e-8
    assert torch.all(model.flow_logsigma.bias == -10)


def test_svf_by_config_is_diffeomorphic_and_regularises_the_velocity():
    cfg = resolve_config("voxelmorph", overrides=["model.transformer=svf"])
    assert cfg.model.transformer == "svf"
    torch.manual_seed(0)
    svf = regzoo.create_model("voxelmorph", ndim=2, transformer="svf")
    dense = regzoo.create_model("voxelmorph", ndim=2)
    # the same flow-head output, several voxels and rough: a dense field folds, its exp does not
    g = torch.Generator().manual_seed(0)
    coarse = 3.0 * torch.randn(2, 2, 8, 8, generator=g)
    params = torch.nn.functional.interpolate(
        coarse, size=(48, 48), mode="bicubic", align_corners=True
    )
    folds = {}
    for name, model in (("svf", svf), ("dense", dense)):
        ddf = model.transformer(params, (48, 48))["ddf"]
        # the Learn2Reg scorer's form: central differences, 2 border voxels cropped
        folds[name] = (jacobian_determinant(ddf)[..., 2:-2, 2:-2] <= 0).float().mean().item()
    assert folds["dense"] > 0.05 and folds["svf"] == 0.0
    assert svf(_batch(2, (48, 48))).velocity.shape == (2, 2, 24, 24)


@pytest.mark.parametrize("shape", [(32, 40), (37, 45), (10, 12, 8), (9, 8, 11)])
def test_svf_resize_is_the_official_resize_transform(shape):
    """The velocity is the network output resized as the official ``ResizeTransform`` (values
    times exactly 0.5, ``align_corners=True``), the field the integral resized by exactly 2; at
    odd sizes, where the official field comes back one voxel short, regzoo's has the image size.

    The reference is voxelmorph 0.3's ``ResizeDisplacementField``, 0.2's ``ResizeTransform``
    under its new name (``F.interpolate(field * f, scale_factor=f, align_corners=True)``).
    """
    official = pytest.importorskip("voxelmorph.nn.modules").ResizeDisplacementField
    g = torch.Generator().manual_seed(0)
    field = 3.0 * torch.randn(2, len(shape), *shape, generator=g)
    for factor in (0.5, 2.0):
        torch.testing.assert_close(
            resize_field(field, factor=factor), official(factor)(field), atol=0, rtol=0
        )
    svf = regzoo.create_model("voxelmorph", ndim=len(shape), transformer="svf").transformer
    fields = svf(field, shape)
    torch.testing.assert_close(fields["velocity"], official(0.5)(field), atol=0, rtol=0)
    assert fields["ddf"].shape == field.shape
    if all(s % 2 == 0 for s in shape):
        integral = integrate_velocity(fields["velocity"], 7)
        torch.testing.assert_close(fields["ddf"], official(2.0)(integral), atol=0, rtol=0)


def _visible_head(model: torch.nn.Module, std: float = 1.0) -> torch.nn.Module:
    """A flow head with weights large enough for a field of a few voxels."""
    with torch.no_grad():
        model.flow.weight.normal_(0.0, std)
    return model


@pytest.mark.parametrize(
    ("transformer", "size"),
    [("dense", (40, 48)), ("svf", (40, 48)), ("svf", (37, 45)), ("svf", (16, 20, 12))],
)
def test_bidir_returns_the_inverse_field_and_the_warped_fixed_image(transformer, size):
    """The official ``bidir``: the negated network output through the same transformer, i.e.
    ``exp(-v)`` for an SVF (an inverse to interpolation error) and ``-u`` for a dense field."""
    ndim = len(size)
    torch.manual_seed(0)
    model = _visible_head(regzoo.create_model("voxelmorph", ndim=ndim, transformer=transformer))
    batch = _batch(ndim, size)
    assert model(batch).inverse_ddf is None  # bidir is off by default
    model.bidir = True
    out = model(batch)
    assert contract_problem(out, batch) is None
    assert out.inverse_ddf.shape == out.ddf.shape == (2, ndim, *size)
    assert out.extras["fixed_warped"].shape == batch["fixed"].shape
    torch.testing.assert_close(out.extras["fixed_warped"], warp(batch["fixed"], out.inverse_ddf))
    assert out.ddf.abs().max() > 0.5  # a field of voxels, so the checks below can fail
    if transformer == "dense":
        torch.testing.assert_close(out.inverse_ddf, -out.ddf)
        return
    integral = integrate_velocity(-out.velocity, 7)
    torch.testing.assert_close(out.inverse_ddf, resize_field(integral, size, factor=2))
    inner = (slice(None), slice(None), *[slice(4, -4)] * ndim)
    assert compose(out.ddf, out.inverse_ddf)[inner].abs().max() < 0.1


@pytest.mark.parametrize("transformer", ["dense", "svf"])
def test_bidir_loss_weighs_both_image_terms_one_half(transformer):
    torch.manual_seed(0)
    model = _visible_head(
        regzoo.create_model("voxelmorph", ndim=2, transformer=transformer, bidir=True)
    )
    batch = _batch(2, (32, 32))
    out = model(batch)
    terms = model.loss(batch, out)
    lncc = regzoo.build("loss", "lncc")
    forward = lncc(warp(batch["moving"], out.ddf), batch["fixed"])
    backward = lncc(warp(batch["fixed"], out.inverse_ddf), batch["moving"])
    field = out.velocity if transformer == "svf" else out.ddf
    expected = 0.5 * forward + 0.5 * backward + 1.0 * _official_grad(field)
    assert not torch.isclose(forward, backward)
    torch.testing.assert_close(terms["similarity"], forward)
    torch.testing.assert_close(terms["similarity_inverse"], backward)
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()  # both directions train the one network
    assert model.flow.weight.grad.abs().sum() > 0


def _official_grad(field: torch.Tensor, loss_mult: float = 2.0) -> torch.Tensor:
    """The official ``Grad('l2', loss_mult)``: per axis the mean squared forward difference, the
    mean over axes, times ``loss_mult``."""
    axes = range(2, field.dim())
    return loss_mult * sum(torch.diff(field, dim=a).square().mean() for a in axes) / len(axes)


@pytest.mark.parametrize("transformer", ["dense", "svf"])
def test_grad_has_the_official_loss_mult_for_dense_and_svf(transformer):
    """The official scripts' ``Grad('l2', loss_mult=int_downsize)`` (2), applied whatever
    ``int_steps``: on the velocity for an SVF, on the displacement for a dense model."""
    torch.manual_seed(0)
    model = _visible_head(regzoo.create_model("voxelmorph", ndim=2, transformer=transformer))
    assert model.objective_terms.regularizer.loss_mult == 2
    batch = _batch(2, (32, 40))
    out = model(batch)
    field = out.velocity if transformer == "svf" else out.ddf
    assert field.abs().max() > 0.1
    terms = model.loss(batch, out)
    torch.testing.assert_close(terms["regularizer"], _official_grad(field))
    torch.testing.assert_close(terms["loss"], terms["similarity"] + _official_grad(field))


def _semi_supervised_pair(size, **options):
    torch.manual_seed(0)
    model = regzoo.create_model("voxelmorph", ndim=2, seg_weight=0.01, **options)
    batch = _batch(2, size)
    return _visible_head(model), batch


@pytest.mark.parametrize("size", [(40, 48), (41, 39)])
def test_semi_supervised_dice_at_the_official_seg_resolution(size):
    """Dice at ``seg_resolution=2`` (``VxmDenseSemiSupervisedSeg``): the one-hot maps taken every
    second voxel (the official generator's ``[::2]``), the moving one warped by the field resized
    by exactly 1/2 (``RescaleTransform``); at an odd size onto the ``[::2]`` grid."""
    model, batch = _semi_supervised_pair(size)
    assert model.objective_terms.seg_resolution == 2
    out = model(batch)
    moving = one_hot(batch["moving_label"], 4)[:, :, ::2, ::2]
    fixed = one_hot(batch["fixed_label"], 4)[:, :, ::2, ::2]
    if size[0] % 2 == 0:
        flow = F.interpolate(0.5 * out.ddf, scale_factor=0.5, mode="bilinear", align_corners=True)
    else:
        flow = 0.5 * F.interpolate(out.ddf, moving.shape[2:], mode="bilinear", align_corners=True)
    dice = regzoo.build("loss", "dice")(warp(moving, flow), fixed)
    terms = model.loss(batch, out)
    torch.testing.assert_close(terms["segmentation"], dice)
    expected = terms["similarity"] + terms["regularizer"] + 0.01 * dice
    torch.testing.assert_close(terms["loss"], expected)
    # full size: warped_label against the fixed labels
    full, _ = _semi_supervised_pair(size, seg_resolution=1)
    full.load_state_dict(model.state_dict())
    reference = regzoo.build("loss", "dice")(out.warped_label, one_hot(batch["fixed_label"], 4))
    torch.testing.assert_close(full.loss(batch, full(batch))["segmentation"], reference)
    with pytest.raises(ConfigError, match="seg_resolution must be a positive integer, got 0"):
        regzoo.create_model("voxelmorph", ndim=2, seg_resolution=0)


def test_warped_labels_and_the_label_free_objective():
    model, batch = _semi_supervised_pair((40, 40))
    out = model(batch)
    ref = warp(one_hot(batch["moving_label"], 4), out.ddf)
    assert torch.allclose(out.warped_label, ref)
    plain = regzoo.create_model("voxelmorph", ndim=2)
    assert "segmentation" not in plain.loss(batch, plain(batch))
    terms = model.loss(batch, out)
    # no labels: the label-free objective of instance optimisation
    unlabelled = {k: v for k, v in batch.items() if "label" not in k}
    assert model(unlabelled).warped_label is None
    assert torch.allclose(model.objective(batch, out), terms["similarity"] + terms["regularizer"])


def test_num_labels_fixes_the_one_hot_width():
    model = regzoo.create_model("voxelmorph", ndim=2, num_labels=7)
    assert model(_batch(2, (32, 32))).warped_label.shape[1] == 7


def test_diff_samples_in_training_and_uses_the_mean_in_evaluation():
    torch.manual_seed(0)
    model = regzoo.create_model("voxelmorph-diff", ndim=2)
    with torch.no_grad():
        model.flow_logsigma.bias.fill_(-2.0)  # a visible variance
    batch = _batch(2, (32, 32))
    model.train()
    a, b = model(batch), model(batch)
    assert not torch.allclose(a.velocity, b.velocity)
    model.eval()
    c, d = model(batch), model(batch)
    assert torch.equal(c.ddf, d.ddf)
    mean = c.extras["flow_mean"]
    assert torch.allclose(c.velocity, mean, atol=1e-6)  # even sizes: no resampling at half res


def test_diff_loss_is_scaled_mse_plus_kl():
    torch.manual_seed(0)
    model = regzoo.create_model("voxelmorph-diff", ndim=2)
    batch = _batch(2, (32, 32))
    out = model(batch)
    terms = model.loss(batch, out)
    mse = ((out.warped - batch["fixed"]) ** 2).mean() / 0.02**2  # official: 1 / sigma^2
    kl = regzoo.build("loss", {"name": "kl-prior", "prior_lambda": 10.0})(
        out.extras["flow_mean"], out.extras["flow_log_sigma"]
    )
    assert set(terms) == {"similarity", "kl", "loss"}
    assert torch.allclose(terms["similarity"], mse, rtol=1e-5)
    assert torch.allclose(terms["loss"], mse + kl, rtol=1e-5)


def test_presets():
    for name in ("voxelmorph", "voxelmorph-1", "voxelmorph-diff"):
        entry = regzoo.get_entry("model", name)
        assert {"quick", "paper"} <= set(entry.presets)
        paper = resolve_config(name, overrides=["preset=paper"])
        assert (
            paper.train.steps == 150_000 and paper.train.lr == 1e-4 and paper.train.batch_size == 1
        )
    paper = resolve_config("voxelmorph", overrides=["preset=paper"])
    assert paper.model.similarity == {"name": "lncc"} and paper.model.reg_weight == 1.0
    assert regzoo.get_entry("model", "voxelmorph-diff").paper.year == 2018
    assert "10.1109/TMI.2019.2897538" in regzoo.get_entry("model", "voxelmorph").paper.url


@parametrize_models("voxelmorph*")
def test_conformance(name, ndim):
    check_model(name, ndim)


def _train_quick(name: str, tmp_path, overrides=()) -> dict:
    cfg = resolve_config(
        name, overrides=["eval.metrics=[dice,folding]", "eval.overview=false", *overrides]
    )
    return train(cfg, tmp_path, device="cpu", threads=2, progress=False).metrics


# The README's claim for the quick preset: held-out Dice "rises by about 0.2 over the identity".
# Checked on a seed the preset was not chosen on (it was chosen with train.seed=0), less TOLERANCE.
QUICK_CLAIM, TOLERANCE, HELD_OUT_SEED = 0.2, 0.05, 1


@pytest.mark.slow
def test_quick_preset_raises_held_out_dice(tmp_path):
    """The default run (``regzoo train voxelmorph``) registers held-out synthetic pairs."""
    metrics = _train_quick("voxelmorph", tmp_path, [f"train.seed={HELD_OUT_SEED}"])
    gain = metrics["summary"]["dice"] - metrics["identity"]["dice"]
    assert gain >= QUICK_CLAIM - TOLERANCE, metrics["summary"]


# VoxelMorph-diff, 300 quick-preset steps on train.seed 1: held-out Dice 0.477 -> 0.563, no fold
# (measured); the gain is asserted less 0.03.
DIFF_GAIN = 0.086 - 0.03


@pytest.mark.slow
def test_diff_leaves_almost_no_folds(tmp_path):
    """VoxelMorph-diff after short training: under 0.1% of pixels with det J <= 0, on a field that
    registers (Dice above the identity's by a margin, so an identity field fails)."""
    metrics = _train_quick(
        "voxelmorph-diff", tmp_path, ["train.steps=300", f"train.seed={HELD_OUT_SEED}"]
    )
    assert metrics["summary"]["folding"] < 1e-3, metrics["summary"]
    assert metrics["summary"]["dice"] >= metrics["identity"]["dice"] + DIFF_GAIN, metrics


def _inverse_ncc(run) -> float:
    """Mean Pearson r of (fixed warped by the inverse field, moving) over the test split's pairs
    for the model a run trained, evaluated with ``bidir`` on (the same network: a one-way model's
    inverse is then ``-u``, what the official code gives it)."""
    ckpt = load_checkpoint(run / "last.pt")
    model = model_from_checkpoint(ckpt, run / "last.pt").eval()
    model.bidir = True
    data = regzoo.build("dataset", {**ckpt["config"]["data"], "split": "test"})
    ncc = regzoo.build("loss", "ncc")  # 1 - r
    values = []
    with torch.no_grad():
        for item in data:
            batch = {key: item[key][None] for key in ("moving", "fixed")}
            values.append(1 - ncc(model(batch).extras["fixed_warped"], batch["moving"]).item())
    return sum(values) / len(values)


# Measured with the quick preset for 600 steps (2D 64x64 synthetic pairs, the 16 test pairs):
# r(fixed warped by the inverse, moving) one-way -> bidir: 0.686 -> 0.790 (train.seed 0),
# 0.697 -> 0.788 (1), 0.693 -> 0.785 (2), 0.712 -> 0.775 (3); gains 0.063-0.105. The test runs
# seed 1 (the preset was chosen on seed 0) and asserts its gain, 0.091, less 0.04.
BIDIR_STEPS, BIDIR_SEED, BIDIR_MARGIN = 600, 1, 0.091 - 0.04


@pytest.mark.slow
def test_bidir_training_gives_a_better_inverse(tmp_path):
    """``model.bidir=true`` trained for the same steps as a one-way model registers the fixed
    image onto the moving one better through the inverse field (two ``regzoo train`` runs in
    parallel processes, one thread each)."""
    common = [f"train.steps={BIDIR_STEPS}", f"train.seed={BIDIR_SEED}", "eval.max_pairs=1"]
    common += ["eval.metrics=[dice]", "eval.overview=false"]
    runs = {bidir: tmp_path / f"bidir-{bidir}" for bidir in ("false", "true")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "regzoo", "train", "voxelmorph", "--out", str(run)]
            + ["--device", "cpu", "--threads", "1", f"model.bidir={bidir}", *common],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for bidir, run in runs.items()
    ]
    for proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == 0, err
    one_way, bidir = _inverse_ncc(runs["false"]), _inverse_ncc(runs["true"])
    assert bidir - one_way >= BIDIR_MARGIN, (one_way, bidir)


def test_training_steps_lower_the_loss_on_one_pair():
    torch.manual_seed(0)
    model = regzoo.create_model("voxelmorph", ndim=2, similarity={"name": "mse"}, reg_weight=0.01)
    batch = regzoo.build("dataset", {"name": "synth", "ndim": 2, "size": 32, "split": "val"})[0]
    batch = {k: v[None] for k, v in batch.items()}
    optim = Optimizers({"model": make_optimizer(model.parameters(), lr=1e-3)})
    first = model.training_step(batch, optim, 0)["similarity"].item()
    for step in range(1, 40):
        last = model.training_step(batch, optim, step)["similarity"].item()
    assert last < 0.7 * first
