"""Metrics against outside references (the Learn2Reg scorer).

References: MONAI's ``DiceMetric``; the ``surface-distance`` package the Learn2Reg scorer calls
for HD95; the scorer's Jacobian (``scipy.ndimage.correlate`` with ``[-0.5, 0, 0.5]``, zero
padding, crop 2) written out in numpy; ``scipy.ndimage.map_coordinates`` for landmarks; numpy for
the summaries. Folding and TRE are also checked on fields whose answer is known by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric as MonaiDice
from scipy import ndimage
from surface_distance import lookup_tables
from surface_distance import metrics as sd

import regzoo
from regzoo.errors import ConfigError
from regzoo.metrics import (
    dice_per_label,
    folding,
    hd95_per_label,
    landmark_errors,
    sdlogj,
    sdlogj_plain,
    success_auc,
    summarize,
    surfel_area_table,
    tre,
)

# The package calls scipy.ndimage through its deprecated sub-namespaces.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")


def label_map(shape, seed, labels=4, sigma=2.5):
    """Blobby integer labels 0..labels-1 ``(1, 1, *shape)``: arg-max of smoothed noise."""
    rng = np.random.default_rng(seed)
    noise = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(labels)]
    )
    return torch.from_numpy(noise.argmax(0))[None, None]


def smooth_field(shape, amplitude, seed, sigma=3.0):
    rng = np.random.default_rng(seed)
    f = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") for _ in shape]
    )
    return torch.from_numpy(f * amplitude / np.abs(f).max())[None]


# --- registry and call convention -------------------------------------------------------------


def test_metrics_are_registered_and_take_keyword_inputs():
    shape = (12, 13, 14)
    inputs = {
        "ddf": torch.cat([smooth_field(shape, 1.0, s) for s in (0, 1)]).float(),
        "warped_label": torch.cat([label_map(shape, s) for s in (2, 3)]),
        "fixed_label": torch.cat([label_map(shape, s) for s in (4, 5)]),
        "spacing": torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]),
        "fixed_landmarks": torch.rand(2, 6, 3) * 10,
        "moving_landmarks": torch.rand(2, 6, 3) * 10,
        "something_else": "ignored",
    }
    names = regzoo.list_entries(kind="metric")["metric"]
    for name in ("dice", "hd95", "sdlogj", "sdlogj-plain", "folding", "tre"):
        assert name in names
        value = regzoo.build("metric", name)(**inputs)
        assert value.shape == (2,) and value.dtype == torch.float64 and value.device.type == "cpu"
        assert torch.isfinite(value).all()
    with pytest.raises(ValueError, match="fixed_landmarks"):
        regzoo.build("metric", "tre")(
            ddf=inputs["ddf"], moving_landmarks=inputs["moving_landmarks"]
        )
    restricted = regzoo.build("metric", {"name": "dice", "labels": [2]})(**inputs)
    torch.testing.assert_close(
        restricted, dice_per_label(inputs["warped_label"], inputs["fixed_label"], [2])[:, 0]
    )


# --- Dice ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 34), (14, 15, 16)])
def test_dice_equals_monai_dice_metric(shape):
    k = 5
    pred = torch.cat([label_map(shape, 1, labels=5), label_map(shape, 2, labels=4)])
    target = torch.cat([label_map(shape, 3, labels=5), label_map(shape, 4, labels=3)])
    target[1][target[1] == 1] = 0  # case 2: label 1 only in the prediction; label 4 in neither
    ours = dice_per_label(pred, target, labels=range(1, k))
    onehot = lambda x: F.one_hot(x[:, 0], k).movedim(-1, 1)  # noqa: E731
    monai = MonaiDice(include_background=False, reduction="none", ignore_empty=False)
    ref = monai(onehot(pred), onehot(target)).double()
    absent = torch.zeros_like(ours, dtype=torch.bool)
    absent[1, 3] = True  # label 4 of case 2: MONAI says 1 for "both empty", we leave it out
    assert torch.isnan(ours[absent]).all() and not torch.isnan(ours[~absent]).any()
    torch.testing.assert_close(ours[~absent], ref[~absent])
    assert ours[1, 0] == 0
    mean = regzoo.build("metric", "dice")(warped_label=pred, fixed_label=target)
    torch.testing.assert_close(mean, torch.stack([ours[0].mean(), ours[1, :3].mean()]))
    # One-hot maps are accepted in place of label maps.
    torch.testing.assert_close(
        dice_per_label(onehot(pred).float(), target, labels=range(1, k)), ours, equal_nan=True
    )


# --- HD95 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 2.0, 3.0), (0.7, 1.3, 2.9)])
def test_surfel_areas_equal_surface_distance_tables(spacing):
    np.testing.assert_allclose(
        surfel_area_table(spacing),
        lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        surfel_area_table(spacing[1:]),
        lookup_tables.create_table_neighbour_code_to_contour_length(spacing[1:]),
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "shape,spacing",
    [((40, 44), [(1.0, 1.0), (0.8, 2.5)]), ((18, 20, 22), [(1.0, 1.0, 1.0), (2.0, 0.7, 1.3)])],
)
def test_hd95_equals_surface_distance(shape, spacing):
    fixed = torch.cat([label_map(shape, 10), label_map(shape, 11)])
    warped = torch.cat([label_map(shape, 12), fixed[1:]])
    warped[1] = torch.roll(warped[1], shifts=2, dims=1)  # case 2: the fixed labels, shifted
    spacing_t = torch.tensor(spacing, dtype=torch.float64)
    ours = hd95_per_label(warped, fixed, spacing_t, labels=[1, 2, 3])
    for b in range(2):
        for j, label in enumerate([1, 2, 3]):
            dists = sd.compute_surface_distances(
                (fixed[b, 0] == label).numpy(), (warped[b, 0] == label).numpy(), spacing[b]
            )
            assert ours[b, j].item() == sd.compute_robust_hausdorff(dists, 95)
    assert ours[1].min() > 0
    metric = regzoo.build("metric", "hd95")(
        warped_label=warped, fixed_label=fixed, spacing=spacing_t
    )
    torch.testing.assert_close(metric, ours.mean(1))


def test_hd95_skips_labels_missing_from_either_map():
    fixed, warped = label_map((20, 24), 20), label_map((20, 24), 21)
    fixed[fixed == 2] = 0
    values = hd95_per_label(warped, fixed, labels=[1, 2, 3, 7])
    assert torch.isnan(values[0, [1, 3]]).all() and torch.isfinite(values[0, [0, 2]]).all()
    empty = torch.zeros_like(fixed)
    assert math.isnan(regzoo.build("metric", "hd95")(warped_label=warped, fixed_label=empty).item())


@pytest.mark.parametrize(
    "shape,spacing",
    [((40, 44), [(1.0, 1.0), (0.8, 2.5)]), ((18, 20, 22), [(1.0, 1.0, 1.0), (2.0, 0.7, 1.3)])],
)
def test_hd_and_asd_equal_surface_distance(shape, spacing):
    fixed = torch.cat([label_map(shape, 30), label_map(shape, 31)])
    warped = torch.cat([label_map(shape, 32), torch.roll(fixed[1:], shifts=2, dims=2)])
    spacing_t = torch.tensor(spacing, dtype=torch.float64)
    hd_values = regzoo.build("metric", "hd")(
        warped_label=warped, fixed_label=fixed, spacing=spacing_t
    )
    asd_values = regzoo.build("metric", "asd")(
        warped_label=warped, fixed_label=fixed, spacing=spacing_t
    )
    for b in range(2):
        hd_ref, asd_ref = [], []
        for label in (1, 2, 3):
            dists = sd.compute_surface_distances(
                (fixed[b, 0] == label).numpy(), (warped[b, 0] == label).numpy(), spacing[b]
            )
            hd_ref.append(sd.compute_robust_hausdorff(dists, 100))
            asd_ref.append(np.mean(sd.compute_average_surface_distance(dists)))
        assert hd_values[b].item() == pytest.approx(np.mean(hd_ref), rel=1e-12)
        assert asd_values[b].item() == pytest.approx(np.mean(asd_ref), rel=1e-9)
    assert (asd_values > 0).all() and (hd_values >= asd_values).all()


def test_precision_and_recall_equal_a_direct_count():
    g = torch.Generator().manual_seed(40)
    warped = torch.randint(0, 4, (2, 1, 30, 34), generator=g)
    fixed = torch.randint(0, 4, (2, 1, 30, 34), generator=g)
    fixed[1][fixed[1] == 3] = 0  # label 3 absent from case 2's fixed map: recall has nothing
    precision = regzoo.build("metric", "precision")(warped_label=warped, fixed_label=fixed)
    recall = regzoo.build("metric", "recall")(warped_label=warped, fixed_label=fixed)
    for b in range(2):
        w, f = warped[b, 0].numpy(), fixed[b, 0].numpy()
        p_ref, r_ref = [], []
        for label in (1, 2, 3):
            both = np.count_nonzero((w == label) & (f == label))
            if np.count_nonzero(w == label):
                p_ref.append(both / np.count_nonzero(w == label))
            if np.count_nonzero(f == label):
                r_ref.append(both / np.count_nonzero(f == label))
        assert precision[b].item() == pytest.approx(np.mean(p_ref), rel=1e-12)
        assert recall[b].item() == pytest.approx(np.mean(r_ref), rel=1e-12)
    assert len(r_ref) == 2  # the absent label was left out of case 2's recall
    perfect = regzoo.build("metric", "precision")(warped_label=fixed, fixed_label=fixed)
    torch.testing.assert_close(perfect, torch.ones(2, dtype=torch.float64))


# --- Jacobian metrics ------------------------------------------------------------------------------


def scorer_jacobian(disp: np.ndarray) -> np.ndarray:
    """The Learn2Reg scorer's Jacobian determinant of ``(ndim, *spatial)`` displacements.

    Gradients by correlation with ``[-0.5, 0, 0.5]`` along each axis, zero outside the image,
    plus the identity, cropped by 2 voxels on each side, then the determinant.
    """
    ndim = disp.shape[0]
    grad = np.empty((ndim, ndim, *disp.shape[1:]))
    for axis in range(ndim):
        kernel = np.array([-0.5, 0.0, 0.5]).reshape([3 if a == axis else 1 for a in range(ndim)])
        for comp in range(ndim):
            grad[comp, axis] = ndimage.correlate(disp[comp], kernel, mode="constant", cval=0.0)
    jac = grad + np.eye(ndim).reshape(ndim, ndim, *[1] * ndim)
    jac = jac[(slice(None), slice(None)) + (slice(2, -2),) * ndim]
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


@pytest.mark.parametrize("shape", [(30, 33), (14, 15, 16)])
def test_sdlogj_equals_the_scorer(shape):
    ddf = torch.cat([smooth_field(shape, 2.5, 30, sigma=1.5), smooth_field(shape, 0.5, 31)])
    jac = np.stack([scorer_jacobian(d) for d in ddf.numpy()])
    assert (jac <= 0).any()  # folds included: the +3 of the scorer matters
    ref = np.log(np.clip(jac + 3, 1e-9, 1e9)).reshape(2, -1).std(1)
    np.testing.assert_allclose(sdlogj(ddf).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(sdlogj(ddf.float()).numpy(), ref, rtol=1e-6)
    plain = np.log(np.clip(jac, 1e-9, 1e9)).reshape(2, -1).std(1)
    np.testing.assert_allclose(sdlogj_plain(ddf).numpy(), plain, rtol=1e-12)
    np.testing.assert_allclose(folding(ddf).numpy(), (jac <= 0).reshape(2, -1).mean(1))


@pytest.mark.parametrize("shape", [(16, 9), (16, 7, 8)])
def test_folding_counts_a_known_fold(shape):
    # u_0 depends on the first index only: 0 up to row 5, then -1.5 per row to -6 at row 9.
    # Central differences give J = 1 + (u(i+1) - u(i-1)) / 2 = 0.25 on rows 5 and 9 and
    # -0.5 on rows 6, 7, 8; the interior keeps rows 2..13, so 3 of its 12 rows are folded.
    profile = torch.tensor(
        [0, 0, 0, 0, 0, 0, -1.5, -3, -4.5, -6, -6, -6, -6, -6, -6, -6], dtype=torch.float64
    )
    ddf = torch.zeros(1, len(shape), *shape, dtype=torch.float64)
    ddf[0, 0] = profile.view(-1, *[1] * (len(shape) - 1))
    assert folding(ddf).item() == 3 / 12
    value = regzoo.build("metric", "folding")(ddf=ddf)
    assert value.item() == 3 / 12
    assert regzoo.build("metric", {"name": "folding", "crop": 3})(ddf=ddf).item() == 3 / 10
    assert folding(torch.zeros_like(ddf)).item() == 0
    assert math.isfinite(sdlogj(ddf).item()) and sdlogj(torch.zeros_like(ddf)).item() == 0


# --- TRE ---------------------------------------------------------------------------------------


def test_tre_of_a_known_translation():
    shape, shift = (12, 14, 16), torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)
    ddf = shift.view(1, 3, 1, 1, 1).expand(1, 3, *shape).contiguous()
    fixed = torch.tensor(
        [[[3.0, 4.0, 5.0], [6.5, 7.25, 8.0], [2.0, 10.0, 12.0]]], dtype=torch.float64
    )
    residual = torch.tensor(
        [[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 2.0]]], dtype=torch.float64
    )
    moving = fixed + shift + residual
    spacing = torch.tensor([[2.0, 1.0, 0.5]])
    expected = torch.tensor([0.0, 2.0, math.hypot(2.0, 1.0)], dtype=torch.float64)
    torch.testing.assert_close(landmark_errors(ddf, fixed, moving, spacing)[0], expected)
    torch.testing.assert_close(tre(ddf, fixed, moving, spacing), expected.mean().view(1))
    # Padding landmarks (NaN) are left out of the mean.
    padded_f = torch.cat([fixed, torch.full((1, 1, 3), math.nan, dtype=torch.float64)], 1)
    padded_m = torch.cat([moving, torch.full((1, 1, 3), math.nan, dtype=torch.float64)], 1)
    torch.testing.assert_close(tre(ddf, padded_f, padded_m, spacing), expected.mean().view(1))


@pytest.mark.parametrize("shape", [(20, 23), (12, 13, 14)])
def test_tre_samples_the_field_linearly(shape):
    ndim = len(shape)
    ddf = smooth_field(shape, 3.0, 40)
    rng = np.random.default_rng(41)
    fixed = rng.uniform(0, np.array(shape) - 1, size=(7, ndim))
    moving = rng.uniform(0, np.array(shape) - 1, size=(7, ndim))
    spacing = np.array([0.8, 1.7, 1.1][:ndim])
    u = np.stack(
        [ndimage.map_coordinates(ddf[0, c].numpy(), fixed.T, order=1) for c in range(ndim)], 1
    )
    ref = np.linalg.norm((fixed + u - moving) * spacing, axis=1)
    ours = landmark_errors(
        ddf,
        torch.from_numpy(fixed)[None],
        torch.from_numpy(moving)[None],
        torch.from_numpy(spacing)[None],
    )
    np.testing.assert_allclose(ours[0].numpy(), ref, rtol=1e-10)
    value = regzoo.build("metric", "tre")(
        ddf=ddf.float(),
        fixed_landmarks=torch.from_numpy(fixed)[None].float(),
        moving_landmarks=torch.from_numpy(moving)[None].float(),
        spacing=torch.from_numpy(spacing)[None].float(),
    )
    assert value.item() == pytest.approx(ref.mean(), rel=1e-5)


def test_success_auc_equals_a_direct_computation():
    """Per pair the mean landmark error in mm; over the pairs the area
    under the success rate (error below t) for t = 0, 1, ..., 25, normalised by 25."""
    rng = np.random.default_rng(7)
    errors = np.concatenate([rng.uniform(0, 40, 23), [math.nan, 0.0, 25.0, 3.0]])
    rates = []
    for t in range(26):
        valid = [e for e in errors if not math.isnan(e)]
        rates.append(sum(1 for e in valid if e < t) / len(valid))
    area = sum((rates[i] + rates[i + 1]) / 2 for i in range(25)) / 25
    metric = regzoo.build("metric", "success-auc")
    assert metric.aggregate(errors.tolist()) == pytest.approx(area, rel=1e-12)
    assert success_auc([0.0, 0.0]) == pytest.approx(24.5 / 25) and success_auc([30.0]) == 0.0
    assert math.isnan(success_auc([math.nan]))
    # per pair: the mean landmark error in mm
    shape = (20, 23)
    ddf = smooth_field(shape, 3.0, 42).float()
    fixed = torch.from_numpy(rng.uniform(0, 19, size=(1, 5, 2))).float()
    moving = torch.from_numpy(rng.uniform(0, 19, size=(1, 5, 2))).float()
    spacing = torch.tensor([[2.0, 3.0]])
    value = metric(ddf=ddf, fixed_landmarks=fixed, moving_landmarks=moving, spacing=spacing)
    torch.testing.assert_close(value, tre(ddf, fixed, moving, spacing))
    with pytest.raises(ConfigError, match="success-auc"):
        regzoo.build("metric", {"name": "success-auc", "step": 0})


# --- summaries -----------------------------------------------------------------------------------


def test_summarize_follows_the_learn2reg_aggregates():
    values = np.array([0.61, 0.72, math.nan, 0.55, 0.80, 0.69, 0.77, 0.58])
    finite = values[~np.isnan(values)]
    out = summarize(torch.from_numpy(values))
    assert out["n"] == 7
    assert out["mean"] == pytest.approx(finite.mean())
    assert out["std"] == pytest.approx(finite.std())
    assert out["median"] == pytest.approx(np.median(finite))
    assert out["p30"] == pytest.approx(np.quantile(finite, 0.3))
    assert summarize(list(values)) == out
    empty = summarize([math.nan])
    assert empty["n"] == 0 and math.isnan(empty["p30"])


# --- per-region metrics --------------------------------------------------------------------------


def _two_regions(shape=(16, 20)) -> torch.Tensor:
    """Label 0 left of column 10, label 1 right of it: ``(1, 1, *shape)``."""
    labels = torch.zeros(1, 1, *shape, dtype=torch.long)
    labels[..., 10:] = 1
    return labels


def test_region_metrics_see_a_sliding_field_as_smooth_inside_and_torn_at_the_boundary():
    """Two regions sliding against each other (a constant shift each, opposite directions): no
    folding and no Grad energy inside the regions, where the whole-image measures see the tear;
    boundary-error is the mean distance to the true field near the boundary."""
    from regzoo.metrics import boundary_error, eroded_regions, region_folding, region_grad

    labels = _two_regions()
    sliding = torch.zeros(1, 2, 16, 20, dtype=torch.float64)
    sliding[:, 0, :, :10], sliding[:, 0, :, 10:] = 3.0, -3.0  # along the boundary
    assert float(region_folding(sliding, labels)) == 0.0
    assert float(region_grad(sliding, labels)) == 0.0
    grad = regzoo.build("loss", {"name": "grad"})
    assert float(grad(sliding)) > 0
    regions = eroded_regions(labels)
    assert regions.shape == (1, 2, 16, 20)
    assert not regions[0, 0, :, 9].any() and regions[0, 0, 1:-1, 1:9].all()
    assert not regions[0, :, 0].any()  # the image border is outside every region
    # a field with a known error: 1 voxel off on every voxel within 3 of the boundary, 2 elsewhere
    error = torch.full((1, 2, 16, 20), 2.0, dtype=torch.float64)
    error[:, 0, :, 6:14] = 1.0
    error[:, 1] = 0.0
    assert float(boundary_error(sliding + error, sliding, labels)) == pytest.approx(1.0)
    value = regzoo.build("metric", "boundary-error")(
        ddf=sliding + error, fixed_label=labels, true_ddf=sliding
    )
    assert float(value) == pytest.approx(1.0)


def test_region_grad_and_folding_equal_a_direct_computation():
    from regzoo.metrics import region_folding, region_grad
    from regzoo.spatial import jacobian_determinant

    labels = torch.from_numpy(
        np.digitize(ndimage.gaussian_filter(np.random.default_rng(3).random((18, 22)), 3), [0.5])
    )[None, None]
    ddf = smooth_field((18, 22), 4.0, 5)
    u = ddf[0].numpy()
    jac = jacobian_determinant(ddf)[0].numpy()
    folding_means, grad_means = [], []
    for k in (0, 1):
        region = labels[0, 0].numpy() == k
        eroded = ndimage.binary_erosion(region, np.ones((3, 3)), border_value=0)
        if not eroded.any():
            continue
        folding_means.append((jac[eroded] <= 0).mean())
        energy = np.zeros((18, 22))
        energy[:-1] += ((u[:, 1:] - u[:, :-1]) ** 2).mean(0)
        energy[:, :-1] += ((u[:, :, 1:] - u[:, :, :-1]) ** 2).mean(0)
        grad_means.append((energy / 2)[eroded].mean())
    assert float(region_folding(ddf, labels)) == pytest.approx(np.mean(folding_means))
    assert float(region_grad(ddf, labels)) == pytest.approx(np.mean(grad_means))


def _seg_maps(seed: int, shape=(2, 1, 24, 24), k: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, k, (*shape[:2], shape[2] // 4, shape[3] // 4), generator=g)
    return coarse.repeat_interleave(4, 2).repeat_interleave(4, 3)


def _seg_logits(labels: torch.Tensor, k: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0], k).permute(0, 3, 1, 2).float()


def test_segmentation_dice_is_scipys_mean_over_labels():
    from scipy.spatial.distance import dice as dice_dissimilarity

    from regzoo.metrics import segmentation_dice

    pred, true = _seg_maps(0), _seg_maps(1)
    ours = segmentation_dice(_seg_logits(pred), true)
    for b in range(2):
        p, t = pred[b].numpy().ravel(), true[b].numpy().ravel()
        ids = sorted((set(np.unique(p)) | set(np.unique(t))) - {0})
        expected = np.mean([1 - dice_dissimilarity(p == k, t == k) for k in ids])
        assert float(ours[b]) == pytest.approx(expected, abs=1e-12)


def test_seg_dice_scores_the_segmentation_of_the_image_it_names():
    """``seg-dice`` with ``image``, and its aliases ``seg-dice-moving`` / ``seg-dice-fixed``,
    read that image's segmentation and labels only."""
    from regzoo.metrics import segmentation_dice

    pred, true, other = _seg_maps(2), _seg_maps(3), _seg_maps(4)
    for image, twin in (("moving", "fixed"), ("fixed", "moving")):
        inputs = {f"{image}_seg": _seg_logits(pred), f"{image}_label": true}
        inputs.update({f"{twin}_seg": _seg_logits(other), f"{twin}_label": other, "ddf": None})
        expected = segmentation_dice(_seg_logits(pred), true)
        for config in ({"name": "seg-dice", "image": image}, f"seg-dice-{image}"):
            metric = regzoo.build("metric", config)
            assert metric.requires == (f"{image}_seg", f"{image}_label")
            assert torch.allclose(metric(**inputs), expected)
    assert regzoo.build("metric", "seg-dice").image == "fixed"
    with pytest.raises(ValueError, match="needs fixed_seg"):
        regzoo.build("metric", "seg-dice")(fixed_label=true)
