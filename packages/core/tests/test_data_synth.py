"""The embedded synthetic data: determinism, splits, shapes, contrasts, pairings."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import regzoo
from regzoo.data import StepSampler, SynthDataset, make_loader
from regzoo.data.synth import (
    SynthMorphGenerator,
    gaussian_blur,
    perlin_noise,
    random_affine,
    random_diffeomorphism,
    seeded_generator,
)
from regzoo.errors import ConfigError
from regzoo.metrics import tre
from regzoo.spatial import affine_inverse, affine_to_ddf, invert, jacobian_determinant, warp


def _synth(**kw) -> SynthDataset:
    return regzoo.build("dataset", {"name": "synth", **kw})


def _dice(a: torch.Tensor, b: torch.Tensor, num_labels: int) -> float:
    """Mean Dice over the labels present in either map."""
    scores = []
    for j in range(num_labels):
        x, y = a == j, b == j
        total = int(x.sum() + y.sum())
        if total:
            scores.append(2 * int((x & y).sum()) / total)
    return float(np.mean(scores))


def test_items_are_deterministic_and_seeded() -> None:
    a, b = _synth(seed=3)[5], _synth(seed=3)[5]
    for key in a:
        assert torch.equal(a[key], b[key])
    c = _synth(seed=4)[5]
    assert not torch.equal(a["moving_label"], c["moving_label"])
    assert not torch.equal(a["moving"], _synth(seed=3)[6]["moving"])


def test_splits_have_different_subjects() -> None:
    common = {"pairing": "atlas", "fresh": False}
    train, val, test = (_synth(split=s, **common) for s in ("train", "val", "test"))
    atlases = [ds[0]["fixed_label"] for ds in (train, val, test)]
    assert not torch.equal(atlases[0], atlases[1]) and not torch.equal(atlases[1], atlases[2])
    assert len(val) == 15 and len(train) == 199


@pytest.mark.parametrize("ndim, size", [(2, 64), (3, 24)])
def test_shapes_and_dtypes(ndim: int, size: int) -> None:
    ds = _synth(ndim=ndim, size=size, num_labels=6)
    item = ds[0]
    shape = (1, 64, 64) if ndim == 2 else (1, 24, 24, 24)
    for key in ("moving", "fixed"):
        assert item[key].shape == shape and item[key].dtype == torch.float32
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    for key in ("moving_label", "fixed_label"):
        assert item[key].shape == shape and item[key].dtype == torch.int64
        assert 0 <= int(item[key].min()) and int(item[key].max()) < 6
    assert item["spacing"].dtype == torch.float32 and torch.equal(item["spacing"], torch.ones(ndim))
    assert item["true_ddf"].shape == (ndim, *shape[1:]) and item["true_ddf"].dtype == torch.float32
    assert "true_affine" not in item  # smooth pairs have no affine
    assert set(_synth(ground_truth=False)[0]) == {
        "moving",
        "fixed",
        "moving_label",
        "fixed_label",
        "spacing",
    }
    batch = next(iter(make_loader(ds, StepSampler(len(ds), 2, seed=0, stop=1))))
    assert batch["moving"].shape == (2, *shape) and batch["moving_label"].shape == (2, *shape)


def test_default_lengths_and_fresh_draws() -> None:
    train = _synth()
    assert train.fresh and len(train) == 10_000
    val = _synth(split="val")
    assert not val.fresh and len(val) == 16
    assert len(_synth(split="val", pairing="all", num_subjects=4)) == 12
    assert len(_synth(split="test", pairing="atlas", num_subjects={"test": 5})) == 4
    # fixed scans: subject 1's scan is the same as moving (pair 1->0) and as fixed (pair 0->1)
    all_pairs = _synth(split="val", pairing="all", num_subjects=3)
    (m, f), _, _ = all_pairs.scan_keys(2)  # pairs: (0,1) (0,2) (1,0) ...
    assert (m, f) == (1, 0)
    assert torch.equal(all_pairs[2]["moving"], all_pairs[0]["fixed"])
    # fresh scans: the same subject looks different in two items
    fresh = _synth(num_subjects=1)
    assert not torch.equal(fresh[0]["fixed_label"], fresh[1]["fixed_label"])


def test_pairings() -> None:
    n = 5
    atlas = _synth(split="val", pairing="atlas", num_subjects=n)
    assert [atlas.scan_keys(i)[0] for i in range(4)] == [(1, 0), (2, 0), (3, 0), (4, 0)]
    assert torch.equal(atlas[0]["fixed"], atlas[3]["fixed"])
    everything = _synth(split="val", pairing="all", num_subjects=n)
    pairs = {everything.scan_keys(i)[0] for i in range(len(everything))}
    assert pairs == {(a, b) for a in range(n) for b in range(n) if a != b}
    rand = _synth(pairing="random", num_subjects=n)
    draws = [rand.scan_keys(i)[0] for i in range(50)]
    assert all(a != b for a, b in draws) and len(set(draws)) > 10
    intra = _synth(split="val", num_subjects=n)
    assert all(intra.scan_keys(i)[0] == (i, i) for i in range(n))
    with pytest.raises(ConfigError):
        _synth(pairing="paired")
    with pytest.raises(ConfigError):
        _synth(deformation="elastic")
    with pytest.raises(ConfigError):
        _synth(split="validation")


def test_identity_dice_of_default_pairs_is_moderate() -> None:
    val = _synth(split="val")
    dice = [
        _dice(val[i]["moving_label"], val[i]["fixed_label"], val.num_labels)
        for i in range(len(val))
    ]
    assert 0.3 < float(np.mean(dice)) < 0.8


@pytest.mark.parametrize(
    "options",
    [{}, {"pairing": "random"}, {"pairing": "random", "deformation": "affine+smooth"}],
    ids=["intra", "inter-subject", "inter-subject-affine"],
)
def test_true_field_carries_the_moving_labels_onto_the_fixed_ones(options) -> None:
    """``warp(moving_label, true_ddf)`` ~ ``fixed_label`` (the label maps were made by
    nearest-neighbour warps, which caps Dice near 0.9 at 64x64; measured 0.87 intra, 0.84
    inter-subject, 0.77 with 30-degree affines); the inverse field, the direction a mix-up would
    give, does far worse."""
    ds = _synth(split="test", **options)
    scores = {"identity": [], "true": [], "inverse": []}
    for i in range(6):
        item = ds[i]
        moving, ddf = item["moving_label"][None].float(), item["true_ddf"][None]
        for name, field in (("true", ddf), ("inverse", invert(ddf))):
            warped = warp(moving, field, mode="nearest")[0].long()
            scores[name].append(_dice(warped, item["fixed_label"], ds.num_labels))
        scores["identity"].append(_dice(item["moving_label"], item["fixed_label"], ds.num_labels))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["true"] > 0.7 and mean["true"] > mean["identity"] + 0.25, mean
    assert mean["inverse"] < mean["identity"] + 0.05, mean


def test_true_field_maps_onto_the_same_template_points() -> None:
    """The moving scan's transform to the template after the true field equals the fixed scan's:
    on average within 0.2 voxel where the field stays inside the image (measured 0.07 over these
    pairs, with affines of up to 30 degrees and 20% scaling; inverse warps are exp(-v) of the
    drawn velocities)."""
    ds = _synth(split="test", pairing="random", deformation="affine+smooth")
    gen = ds.generator
    errors = []
    for i in range(4):
        (m, f), m_key, f_key = ds.scan_keys(i)
        ddf = ds[i]["true_ddf"][None]
        to_template = gen.scan_transform(ds._split, m, m_key, affine=True)[None]
        chain = ddf + warp(to_template, ddf, padding="border")
        expected = gen.scan_transform(ds._split, f, f_key)[None]
        points = torch.stack(torch.meshgrid(*[torch.arange(s) for s in ds.shape], indexing="ij"))
        points = points + ddf[0]
        inside = ((points >= 2) & (points <= ds.shape[0] - 3)).all(dim=0)
        assert inside.float().mean() > 0.6
        errors.append((chain - expected)[0].norm(dim=0)[inside])
    assert float(torch.cat(errors).mean()) < 0.2


def test_true_affine_of_affine_pairs_is_the_inverse_of_the_drawn_one() -> None:
    ds = _synth(split="test", deformation="affine")
    (m, _), m_key, _ = ds.scan_keys(0)
    item = ds[0]
    drawn = ds.generator.affine(m_key)[None]
    torch.testing.assert_close(item["true_affine"], affine_inverse(drawn)[0])
    # with no per-scan warps and one subject the whole true field is that affine
    torch.testing.assert_close(
        item["true_ddf"], affine_to_ddf(item["true_affine"][None], ds.shape)[0], atol=1e-5, rtol=0
    )


def _mean_correlation(ds: SynthDataset, n: int = 8) -> float:
    rs = []
    for i in range(n):
        item = ds[i]
        # label-mean intensities of both images, on the labels present in both
        present = [
            j
            for j in range(ds.num_labels)
            if (item["moving_label"] == j).any() and (item["fixed_label"] == j).any()
        ]
        m = [float(item["moving"][item["moving_label"] == j].mean()) for j in present]
        f = [float(item["fixed"][item["fixed_label"] == j].mean()) for j in present]
        rs.append(np.corrcoef(m, f)[0, 1])
    return float(np.mean(rs))


def test_multimodal_pairs_have_different_contrasts() -> None:
    uni = _mean_correlation(_synth(split="val"))
    multi = _mean_correlation(_synth(split="val", multimodal=True))
    assert uni > 0.9
    assert multi < 0.5 and multi < uni - 0.4


def test_random_affine_ranges() -> None:
    for ndim in (2, 3):
        for k in range(50):
            theta = random_affine(
                ndim, (32,) * ndim, seeded_generator(ndim, k), 30.0, (0.8, 1.2), 0.1
            )
            u, s, vt = torch.linalg.svd(theta[:, :ndim])
            rot = u @ vt
            angle = math.degrees(
                math.acos(max(-1.0, min(1.0, (float(torch.trace(rot)) - (ndim - 2)) / 2)))
            )
            assert angle <= 30.0 + 1e-3
            assert 0.8 - 1e-5 <= float(s.min()) and float(s.max()) <= 1.2 + 1e-5
            assert float(theta[:, ndim].abs().max()) <= 3.2 + 1e-5


def test_affine_pairs_are_rotated_within_range() -> None:
    """Recover each pair's rotation by search: the best angle lies in [-max, max], not all ~0."""
    ds = _synth(
        split="val",
        deformation="affine",
        scale_range=(1.0, 1.0),
        max_translation=0.0,
        max_rotation=20.0,
    )
    angles = torch.arange(-40.0, 40.5, 2.0)
    t = torch.deg2rad(angles)
    zero = torch.zeros_like(t)
    theta = torch.stack(
        [torch.stack([t.cos(), -t.sin(), zero], -1), torch.stack([t.sin(), t.cos(), zero], -1)], 1
    )
    rotations = affine_to_ddf(theta, ds.shape)
    inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))
    found = []
    for i in range(6):
        item = ds[i]
        back = warp(item["fixed_label"][None].float(), rotations, mode="nearest").long()
        scores = (back[inner] == item["moving_label"][None][inner]).float().mean(dim=(1, 2, 3))
        assert float(scores.max()) > 0.9  # the pair is a pure rotation
        found.append(float(angles[int(scores.argmax())]))
    assert all(abs(a) <= 22.0 for a in found)
    assert max(abs(a) for a in found) >= 6.0


def test_random_diffeomorphisms_do_not_fold() -> None:
    for k in range(8):
        ddf = random_diffeomorphism((64, 64), 6.0, 16.0, seeded_generator(9, k))
        # the determinant zero-pads the field: the Learn2Reg scorer's 2-voxel crop
        assert float(jacobian_determinant(ddf[None])[0, 2:-2, 2:-2].min()) > 0


def test_gaussian_blur_matches_scipy() -> None:
    x = torch.rand(1, 20, 17, generator=torch.Generator().manual_seed(0))
    ref = gaussian_filter(x[0].numpy(), 1.0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(gaussian_blur(x, 1.0)[0].numpy(), ref, atol=1e-6)
    x3 = torch.rand(1, 9, 10, 11, generator=torch.Generator().manual_seed(1))
    ref3 = gaussian_filter(x3[0].numpy(), 1.5, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(gaussian_blur(x3, 1.5)[0].numpy(), ref3, atol=1e-6)


def test_perlin_noise_is_smooth_and_scaled() -> None:
    g = seeded_generator(1)
    noise = perlin_noise((64, 64), 16.0, 1.0, g, channels=200, modulate=False)
    # linear interpolation of unit-variance noise: exactly 1 at the coarse grid points (every 21 px)
    assert abs(float(noise[:, ::21, ::21].std()) - 1.0) < 0.05
    assert float(noise.diff(dim=1).abs().mean()) < 0.15


def test_workers_regenerate_the_same_items() -> None:
    ds = _synth(num_labels=6, length=8)
    main = list(make_loader(ds, StepSampler(len(ds), 4, seed=5, stop=2)))
    workers = list(make_loader(ds, StepSampler(len(ds), 4, seed=5, stop=2), workers=2))
    assert len(main) == len(workers) == 2
    for a, b in zip(main, workers):
        assert torch.equal(a["moving"], b["moving"]) and torch.equal(
            a["fixed_label"], b["fixed_label"]
        )
    other = list(make_loader(ds, StepSampler(len(ds), 4, seed=6, stop=2)))
    assert not all(torch.equal(a["moving"], b["moving"]) for a, b in zip(main, other))


def _largest_displacement(ds: SynthDataset) -> torch.Tensor:
    """Per pair, the largest true displacement (voxels)."""
    return torch.tensor([float(ds[i]["true_ddf"].norm(dim=0).max()) for i in range(len(ds))])


def test_large_preset_moves_every_pair_by_ten_voxels_or_more() -> None:
    large = regzoo.build("dataset", {"name": "synth-large", "split": "test"})
    assert (_largest_displacement(large) >= 10).all()
    # the default set-up has pairs below that
    assert (_largest_displacement(_synth(split="test")) < 10).any()


def test_unaligned_preset_draws_rotations_shifts_and_scalings_in_its_ranges() -> None:
    ds = regzoo.build("dataset", {"name": "synth-unaligned", "split": "test"})
    drawn = affine_inverse(torch.stack([ds[i]["true_affine"] for i in range(len(ds))]))
    matrix, shift = drawn[:, :, :2], drawn[:, :, 2]
    scales = torch.linalg.svdvals(matrix)
    assert scales.min() >= 0.9 - 1e-5 and scales.max() <= 1.1 + 1e-5
    angles = torch.atan2(matrix[:, 1, 0], matrix[:, 0, 0]).rad2deg().abs()
    assert angles.max() <= 15 + 1e-3 and angles.max() > 10
    assert shift.abs().max() <= 0.1 * 64 + 1e-4 and shift.abs().max() > 3


def test_masks_and_landmarks_follow_the_labels_and_the_true_transform() -> None:
    """Masks are the voxels of ``mask_labels``; fixed landmarks lie in the fixed mask and the
    moving ones are where the true transform takes them: the true field has no landmark error,
    the identity has."""
    ds = _synth(split="test", mask_labels=[1, 2], landmarks=20)
    item = ds[0]
    for side in ("moving", "fixed"):
        expected = (item[f"{side}_label"] == 1) | (item[f"{side}_label"] == 2)
        assert item[f"{side}_mask"].dtype == torch.bool
        assert torch.equal(item[f"{side}_mask"], expected)
    points = item["fixed_landmarks"]
    assert points.shape == (20, 2) and len({tuple(p) for p in points.tolist()}) == 20
    assert item["fixed_mask"][0][tuple(points.long().T)].all()
    assert torch.equal(ds[0]["fixed_landmarks"], points)  # seeded by the scan
    ddf = item["true_ddf"][None]
    fixed, moving = points[None], item["moving_landmarks"][None]
    assert float(tre(ddf, fixed, moving)) < 1e-5
    assert float(tre(torch.zeros_like(ddf), fixed, moving)) > 1.0
    with pytest.raises(ConfigError, match="mask_labels"):
        _synth(mask_labels=[9])
    lung = regzoo.build("dataset", {"name": "synth-lung", "split": "test"})[0]
    assert lung["fixed_landmarks"].shape == (100, 2) and lung["moving_mask"].any()


def _sliding(**config: Any) -> dict[str, torch.Tensor]:
    """Eight test pairs of ``synth-sliding``, stacked."""
    ds = regzoo.build("dataset", {"name": "synth-sliding", "split": "test", **config})
    items = [ds[i] for i in range(8)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _steps(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Field differences between vertical neighbours and the label on either side."""
    ddf, labels = batch["true_ddf"], batch["fixed_label"][:, 0]
    step = (ddf[..., 1:, :] - ddf[..., :-1, :]).norm(dim=1)
    return step, labels[:, 1:, :], labels[:, :-1, :]


def test_sliding_pairs_tear_at_region_boundaries_and_are_smooth_inside() -> None:
    """The true field of ``synth-sliding`` jumps across region boundaries and is smooth inside
    the regions (almost no folding); the moving labels warped by it match the fixed labels up to
    nearest-neighbour rounding, far better than unwarped."""
    from regzoo.labels import warp_labels
    from regzoo.metrics.regions import region_folding

    batch = _sliding()
    assert float(region_folding(batch["true_ddf"], batch["fixed_label"]).mean()) < 0.01
    step, below, above = _steps(batch)
    assert step[below != above].mean() > 3 * step[below == above].mean()
    moving, fixed = batch["moving_label"], batch["fixed_label"]
    mismatch = (warp_labels(moving, batch["true_ddf"]) != fixed).float().mean()
    assert mismatch < 0.5 * (moving != fixed).float().mean()


def test_sliding_regions_group_labels_and_are_checked() -> None:
    """Labels of one region move together: the field jumps across region boundaries at least
    twice as much as across the boundary between two labels of one region (a field continuous
    everywhere would give a ratio near 1)."""
    step, below, above = _steps(_sliding(regions=[[0, 1], [2, 3]]))
    same_region = (below // 2 == above // 2) & (below != above)
    other_region = below // 2 != above // 2
    assert step[other_region].mean() > 2 * step[same_region].mean()
    with pytest.raises(ConfigError, match="regions"):
        regzoo.build("dataset", {"name": "synth-sliding", "regions": [[0, 1], [1, 2, 3]]})
    with pytest.raises(ConfigError, match="leave out"):
        regzoo.build("dataset", {"name": "synth-sliding", "regions": [[0, 1], [2]]})
    with pytest.raises(ConfigError, match="intra"):
        regzoo.build("dataset", {"name": "synth-sliding", "pairing": "random"})


def test_labelled_keeps_label_maps_of_the_first_training_subjects_only() -> None:
    """The few-label setting: 20 training subjects, 5 labelled, a contrast per image; the flags
    say which maps are real, the others are zeros; held-out splits stay labelled."""
    config = {"num_subjects": {"train": 20}, "labelled": 5, "multimodal": True}
    train = _synth(split="train", pairing="random", **config)
    seen = set()
    for i in range(40):
        item = train[i]
        for side in ("moving", "fixed"):
            real = bool(item[f"{side}_labelled"])
            seen.add(real)
            assert real == bool(item[f"{side}_label"].any())
    assert seen == {True, False}
    test = _synth(split="test", **config)
    assert "moving_labelled" not in test[0] and test[0]["fixed_label"].any()
    with pytest.raises(ConfigError, match="labelled"):
        _synth(split="train", num_subjects=4, labelled=5)


def test_generator_settings_rebuild_the_same_generator() -> None:
    """``settings`` names every constructor argument, and a generator built from them draws the
    same scans (synth-organs builds its generator this way)."""
    g = SynthMorphGenerator(ndim=2, size=(32, 40), num_labels=5, deform_std=3.0, seed=4)
    params = set(inspect.signature(SynthMorphGenerator).parameters)
    assert set(g.settings) == params
    again = SynthMorphGenerator(**g.settings)
    assert torch.equal(again.scan_field((1, 2, 3)), g.scan_field((1, 2, 3)))
    assert torch.equal(again.template, g.template)
