"""Losses against outside references.

References: MONAI's ``DiceLoss``, ``BendingEnergyLoss`` and ``GlobalMutualInformationLoss``;
neurite's ``spatial_gradient`` (the maintained home of VoxelMorph's ``Grad`` since voxelmorph 0.3,
whose own ``Grad`` now raises and points there); ``scipy.stats.pearsonr``; numpy's
``histogram2d``; ``torch.nn.functional.cross_entropy``. The KL prior has no importable outside
implementation (voxelmorph 0.3 dropped its TensorFlow ``KL`` loss): it is checked against a numpy
transcription of VoxelMorph-diff's formula, with the degree map from ``scipy.ndimage.convolve``,
and against its analytic minimum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import BendingEnergyLoss, DiceLoss, GlobalMutualInformationLoss
from scipy import ndimage, stats

import regzoo
from regzoo.losses import (
    MSE,
    NCC,
    BendingEnergy,
    CrossEntropy,
    Dice,
    Grad,
    KLPrior,
    MutualInformation,
)

SHAPES = [(24, 28), (10, 12, 14)]


def smooth_image(shape, seed, sigma=3.0):
    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (m - m.min()) / (m.max() - m.min())


def test_every_loss_is_registered_and_builds_from_its_defaults():
    names = regzoo.list_entries(kind="loss")["loss"]
    for name in ("lncc", "ncc", "mse", "mi", "dice", "ce", "grad", "bending", "kl-prior"):
        assert name in names
        assert isinstance(regzoo.build("loss", name), torch.nn.Module)
    grad = regzoo.build("loss", {"name": "grad", "penalty": "l1", "loss_mult": 2.0})
    assert grad.penalty == "l1" and grad.loss_mult == 2.0


# --- segmentation -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_equals_monai_dice_loss(shape, include_background):
    # VoxelMorph's -mean(2 sum(yp) / max(sum(y + p), 1e-5)) is MONAI's
    # 1 - mean((2 sum(yp) + smooth_nr) / (sum(y) + sum(p) + smooth_dr)) with smooth_nr = 0 and
    # smooth_dr = 1e-5, minus one: the denominators differ only when sum(y + p) < 1e-5 (both
    # maps empty: both give 0) or by 1e-5 / sum(y + p) relative otherwise.
    g = torch.Generator().manual_seed(0)
    pred = torch.softmax(3 * torch.randn(2, 4, *shape, generator=g, dtype=torch.float64), dim=1)
    target = F.one_hot(torch.randint(0, 3, (2, *shape), generator=g), 4).movedim(-1, 1).double()
    assert target[:, 3].sum() == 0  # one label absent from the target
    pred[:, 3] = 0  # ... and from the prediction: Dice 0 in both conventions
    monai = DiceLoss(include_background=include_background, smooth_nr=0.0, smooth_dr=1e-5)
    ref = monai(pred, target)
    ours = Dice(include_background=include_background)(pred, target)
    torch.testing.assert_close(ours, ref - 1, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        Dice(include_background, complement=True)(pred, target), ref, atol=1e-6, rtol=0
    )
    assert Dice()(target, target) == -1 + 0.25  # three perfect labels, one empty in both
    # The squared denominator is MONAI's squared_pred (sum(y^2) + sum(p^2)).
    monai = DiceLoss(
        include_background=include_background, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-5
    )
    ours = Dice(include_background, squared=True)(pred, target)
    torch.testing.assert_close(ours, monai(pred, target) - 1, atol=1e-6, rtol=0)
    assert (ours - Dice(include_background)(pred, target)).abs() > 1e-3  # soft maps: they differ


def test_cross_entropy_equals_torch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 9, 11), generator=g)
    onehot = F.one_hot(labels, 5).movedim(-1, 1).double()
    ref = F.cross_entropy(logits, labels)
    torch.testing.assert_close(CrossEntropy(logits=True)(logits, onehot), ref)
    torch.testing.assert_close(CrossEntropy()(torch.softmax(logits, 1), onehot), ref)
    torch.testing.assert_close(CrossEntropy(logits=True)(logits, labels[:, None]), ref)
    soft = torch.softmax(torch.randn(2, 5, 9, 11, generator=g, dtype=torch.float64), 1)
    torch.testing.assert_close(
        CrossEntropy(logits=True)(logits, soft), F.cross_entropy(logits, soft)
    )


# --- regularisers ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_grad_equals_voxelmorph_neurite(shape, penalty):
    import neurite.nn.functional as nef

    field = torch.randn(2, len(shape), *shape, generator=torch.Generator().manual_seed(2))
    ref = nef.spatial_gradient(field, penalty=penalty)
    torch.testing.assert_close(Grad(penalty)(field), ref)
    torch.testing.assert_close(Grad(penalty, loss_mult=2.0)(field), 2 * ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_bending_energy_equals_monai(shape):
    field = torch.randn(2, len(shape), *shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(BendingEnergy()(field), BendingEnergyLoss()(field))


@pytest.mark.parametrize("shape", SHAPES)
def test_bending_energy_of_a_quadratic_field(shape):
    # u_c(x) = 1/2 x^T H_c x + a_c . x: every second derivative is exact with central
    # differences, so the energy is sum_i H_ii^2 + 2 sum_{i<j} H_ij^2 averaged over channels.
    ndim = len(shape)
    g = torch.Generator().manual_seed(4)
    hessians = torch.randn(ndim, ndim, ndim, generator=g, dtype=torch.float64)
    hessians = (hessians + hessians.transpose(1, 2)) / 2
    linear = torch.randn(ndim, ndim, generator=g, dtype=torch.float64)
    x = torch.stack(
        torch.meshgrid(*[torch.arange(float(n), dtype=torch.float64) for n in shape], indexing="ij")
    )
    field = 0.5 * torch.einsum("i...,cij,j...->c...", x, hessians, x) + torch.einsum(
        "ci,i...->c...", linear, x
    )
    diag = torch.diagonal(hessians, dim1=1, dim2=2).square().sum()
    off = torch.triu(hessians, diagonal=1).square().sum()
    expected = (diag + 2 * off) / ndim
    torch.testing.assert_close(BendingEnergy()(field[None]), expected)
    assert Grad()(field[None]) > 0  # the same field is far from constant


def _kl_reference(mean: np.ndarray, log_sigma: np.ndarray, prior_lambda: float) -> float:
    """VoxelMorph-diff's KL loss written out in numpy (arrays ``(B, ndim, *spatial)``)."""
    ndim = mean.shape[1]
    adjacency = np.zeros([3] * ndim)
    for axis in range(ndim):
        for side in (0, 2):
            index = [1] * ndim
            index[axis] = side
            adjacency[tuple(index)] = 1
    degree = ndimage.convolve(np.ones(mean.shape[2:]), adjacency, mode="constant", cval=0.0)
    sigma_term = np.mean(prior_lambda * degree * np.exp(log_sigma) - log_sigma)
    prec = sum(np.mean(np.diff(mean, axis=a + 2) ** 2) for a in range(ndim)) * 0.5 / ndim
    return 0.5 * ndim * (sigma_term + prior_lambda * prec)


@pytest.mark.parametrize("shape", SHAPES)
def test_kl_prior_equals_voxelmorph_formula(shape):
    ndim = len(shape)
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(2, ndim, *shape, generator=g, dtype=torch.float64)
    log_sigma = torch.randn(2, ndim, *shape, generator=g, dtype=torch.float64) - 3
    loss = KLPrior(prior_lambda=10.0)
    ref = _kl_reference(mean.numpy(), log_sigma.numpy(), 10.0)
    assert loss(mean, log_sigma).item() == pytest.approx(ref, rel=1e-12)
    assert loss(torch.cat([mean, log_sigma], 1)).item() == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="kl-prior"):
        loss(mean)  # a plain velocity field is not a (mean, log_sigma) pair


def test_kl_prior_minimum_over_sigma_is_one_over_lambda_degree():
    # d/ds (lambda D e^s - s) = 0 at e^s = 1 / (lambda D): the posterior variance the prior wants.
    shape, lam = (6, 7, 5), 25.0
    degree = torch.from_numpy(
        ndimage.convolve(
            np.ones(shape), ndimage.generate_binary_structure(3, 1).astype(float), mode="constant"
        )
        - 1.0
    )
    log_sigma = (-torch.log(lam * degree)).expand(1, 3, *shape).clone().requires_grad_(True)
    mean = torch.zeros(1, 3, *shape, dtype=torch.float64)
    KLPrior(prior_lambda=lam)(mean, log_sigma).backward()
    assert log_sigma.grad.abs().max() < 1e-12
    shifted = log_sigma.detach() + 0.1
    assert KLPrior(prior_lambda=lam)(mean, shifted) > KLPrior(prior_lambda=lam)(
        mean, log_sigma.detach()
    )


# --- similarity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_ncc_is_one_minus_pearson_r(shape):
    a = np.stack([smooth_image(shape, s) for s in (0, 1)])[:, None]
    b = np.stack([smooth_image(shape, s) for s in (2, 3)])[:, None]
    b = 0.5 * b + 0.5 * a + 0.05 * np.random.default_rng(0).standard_normal(a.shape)
    r = [stats.pearsonr(a[i].ravel(), b[i].ravel()).statistic for i in range(2)]
    ours = NCC(eps=0.0)(torch.from_numpy(a), torch.from_numpy(b))
    assert ours.item() == pytest.approx(1 - np.mean(r), abs=1e-12)
    with_eps = NCC()(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert with_eps.item() == pytest.approx(1 - np.mean(r), abs=1e-4)
    assert NCC(eps=0.0)(torch.from_numpy(a), torch.from_numpy(3 * a + 2)).item() == pytest.approx(
        0, abs=1e-12
    )


def test_mse_and_image_sigma():
    g = torch.Generator().manual_seed(6)
    a, b = torch.rand(2, 1, 8, 9, generator=g), torch.rand(2, 1, 8, 9, generator=g)
    torch.testing.assert_close(MSE()(a, b), F.mse_loss(a, b))
    torch.testing.assert_close(MSE(image_sigma=0.02)(a, b), F.mse_loss(a, b) / 0.02**2)


def _multimodal_pair(shape=(48, 52)):
    a = smooth_image(shape, seed=7)
    return a, 4.0 * (a - 0.5) ** 2  # a second contrast that is not even monotone in the first


def test_mi_equals_monai_parzen_estimate():
    a, b = _multimodal_pair()
    batch_a = torch.from_numpy(np.stack([a, a[::-1].copy()])[:, None]).float()
    batch_b = torch.from_numpy(np.stack([b, np.roll(b, 4, axis=1)])[:, None]).float()
    ref = GlobalMutualInformationLoss(num_bins=32, sigma_ratio=0.5)(batch_a, batch_b)
    ours = MutualInformation(num_bins=32, sigma_ratio=0.5, normalise=False)(batch_a, batch_b)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_mi_with_narrow_kernel_equals_histogram_mi():
    a, b = _multimodal_pair()
    # Bins centred on linspace(0, 1, 32): a narrow Gaussian assigns each voxel to its nearest
    # centre, i.e. a plain joint histogram with edges half a bin either side of the centres.
    width = 1 / 31
    edges = np.linspace(-width / 2, 1 + width / 2, 33)
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=[edges, edges])
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nz = p > 0
    ref = float((p[nz] * np.log(p[nz] / outer[nz])).sum())
    ours = -MutualInformation(num_bins=32, sigma_ratio=0.01)(
        torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    )
    assert ours.item() == pytest.approx(ref, rel=1e-3)


def test_mi_prefers_aligned_multimodal_images_and_ignores_intensity_scale():
    a, b = _multimodal_pair()
    ta, tb = torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float()
    shifted = torch.roll(tb, shifts=3, dims=2)
    mi = MutualInformation()
    assert mi(ta, tb) < mi(ta, shifted) - 0.5  # -MI: lower is better aligned
    torch.testing.assert_close(mi(3 * ta + 1, tb), mi(ta, tb), atol=1e-5, rtol=0)
    # Global NCC cannot see the non-monotone contrast; MI can.
    assert NCC()(ta, tb) > 0.5
    moving = shifted.clone().requires_grad_(True)
    mi(ta, moving).backward()
    assert torch.isfinite(moving.grad).all() and moving.grad.abs().sum() > 0


def test_registration_loss_takes_the_label_term_over_labelled_pairs_only():
    """With partially labelled data the label term is the one of the pairs whose two maps are
    real; with no such pair it is left out."""
    from regzoo.labels import one_hot
    from regzoo.models import RegistrationLoss, RegistrationOutput

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3, 1, 16, 16), generator=g)
    warped = one_hot(torch.randint(0, 3, (3, 1, 16, 16), generator=g), 3)
    image = torch.rand(3, 1, 16, 16, generator=g)
    out = RegistrationOutput(warped=image, ddf=torch.zeros(3, 2, 16, 16), warped_label=warped)
    loss = RegistrationLoss(
        similarity={"name": "mse"}, segmentation={"name": "dice"}, seg_weight=1.0
    )
    batch = {"moving": image, "fixed": image, "moving_label": labels, "fixed_label": labels}
    flags = {"moving_labelled": torch.tensor([True, True, False])}
    flags["fixed_labelled"] = torch.tensor([True, False, True])
    term = loss({**batch, **flags}, out)["segmentation"]
    dice = regzoo.build("loss", {"name": "dice"})
    assert torch.allclose(term, dice(warped[:1], one_hot(labels[:1], 3)))
    none = {k: torch.zeros(3, dtype=torch.bool) for k in flags}
    assert "segmentation" not in loss({**batch, **none}, out)


def test_ema_update_is_a_direct_moving_average():
    import copy

    from regzoo.models import ema_update

    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student(torch.randn(8, 3))  # BatchNorm statistics move
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for name, param in teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(student.named_parameters())[name]
        assert torch.allclose(param, expected)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    with pytest.raises(ValueError, match="decay"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ValueError, match="differ"):
        ema_update(torch.nn.Linear(3, 5), torch.nn.Linear(3, 4), 0.5)
