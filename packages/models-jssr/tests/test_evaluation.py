"""JSSR's evaluation helpers against independent computations (scipy, numpy least squares,
random permutations, core's evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import dice as dice_dissimilarity

import regzoo
from regzoo.engine.evaluate import evaluate
from regzoo.metrics import segmentation_dice
from regzoo.testing import suite_config
from regzoo_jssr.evaluation import chance_dice, correlation_ratio, evaluate_jssr, label_agreement


def _maps(seed: int, shape=(2, 1, 24, 24), k: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, k, (*shape[:2], shape[2] // 4, shape[3] // 4), generator=g)
    return coarse.repeat_interleave(4, 2).repeat_interleave(4, 3)


def _logits(labels: torch.Tensor, k: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0], k).permute(0, 3, 1, 2).float()


def test_chance_dice_is_the_mean_dice_of_shuffled_predictions():
    """Randomly placed predictions with the same label counts score 2 p q / (p + q) on average."""
    pred, true = _maps(4), _maps(5)
    g = torch.Generator().manual_seed(0)
    trials = []
    for _ in range(400):
        flat = pred.flatten(2)
        perm = torch.randperm(flat.shape[-1], generator=g)
        shuffled = flat[..., perm].view_as(pred)
        trials.append(segmentation_dice(_logits(shuffled), true))
    monte_carlo = torch.stack(trials).mean(0)
    assert torch.allclose(chance_dice(_logits(pred), true), monte_carlo, atol=0.005)


def test_correlation_ratio_is_the_r2_of_regressing_on_the_labels():
    """eta^2 equals R^2 of least squares on label indicators, on all voxels and on a mask."""
    labels = _maps(6)
    g = torch.Generator().manual_seed(1)
    image = labels.float() * 0.3 + torch.randn(labels.shape, generator=g)
    mask = _maps(7) > 1
    for m in (None, mask):
        ours = correlation_ratio(image, labels, m)
        for b in range(2):
            keep = np.ones(labels[b].numel(), bool) if m is None else m[b].numpy().ravel()
            y = image[b].numpy().ravel()[keep].astype(np.float64)
            lab = labels[b].numpy().ravel()[keep]
            x = (lab[:, None] == np.unique(lab)[None]).astype(np.float64)
            fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
            r2 = 1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum()
            assert float(ours[b]) == pytest.approx(r2, abs=1e-9)
    assert float(correlation_ratio(labels.float(), labels)[0]) == pytest.approx(1.0)


def test_label_agreement_counts_equal_voxels_in_the_mask():
    pred, true, mask = _maps(8), _maps(9), _maps(10) > 0
    for b in range(2):
        p, t, m = pred[b].numpy(), true[b].numpy(), mask[b].numpy()
        expected = np.count_nonzero((p == t) & m) / np.count_nonzero(m)
        assert float(label_agreement(pred, true, mask)[b]) == pytest.approx(expected)
    assert torch.equal(label_agreement(pred, pred), torch.ones(2, dtype=torch.float64))


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = regzoo.create_model("jssr", **{**suite_config("jssr", 2), "num_classes": 6})
    data = regzoo.build(
        "dataset",
        {
            "name": "synth-two-contrast",
            "ndim": 2,
            "size": 32,
            "split": "test",
            "multimodal": True,
            "pairing": "random",
            "num_subjects": 4,
        },
    )
    return model, data


def test_evaluate_jssr_registration_dice_is_cores(model_and_data):
    model, data = model_and_data
    ours = evaluate_jssr(model, data)
    core = evaluate(model, data, metrics=["dice", "folding"])
    assert ours["dice"] == pytest.approx(core["summary"]["dice"], abs=1e-6)  # core: float32
    assert ours["dice_identity"] == pytest.approx(core["identity"]["dice"], abs=1e-6)
    assert ours["folding"] == pytest.approx(core["summary"]["folding"], abs=1e-6)
    assert set(ours) == {
        "dice",
        "dice_identity",
        "folding",
        "synth_agrees_moving",
        "synth_agrees_fixed",
        "seg_dice_moving",
        "seg_chance_moving",
        "seg_dice_fixed",
        "geometry_moving",
        "geometry_fixed",
    }
    assert model.training  # restored


def test_evaluate_jssr_segmentation_terms(model_and_data):
    """seg_dice_* are the means over pairs of the Dice of S's outputs, by scipy."""
    model, data = model_and_data
    ours = evaluate_jssr(model, data, max_pairs=2)
    model.eval()
    scores = {"moving": [], "fixed": []}
    with torch.no_grad():
        for i in range(2):
            item = {k: v[None] for k, v in data[i].items()}
            out = model(item)
            for image, seg in (("moving", out.moving_seg), ("fixed", out.fixed_seg)):
                p = seg.argmax(1).numpy().ravel()
                t = item[f"{image}_label"].numpy().ravel()
                ids = sorted((set(np.unique(p)) | set(np.unique(t))) - {0})
                scores[image].append(np.mean([1 - dice_dissimilarity(p == k, t == k) for k in ids]))
    model.train()
    assert ours["seg_dice_moving"] == pytest.approx(np.mean(scores["moving"]), abs=1e-9)
    assert ours["seg_dice_fixed"] == pytest.approx(np.mean(scores["fixed"]), abs=1e-9)


def test_mi_baseline_reports_registration_measures_only(model_and_data):
    _, data = model_and_data
    baseline = regzoo.create_model("jssr-mi-baseline", **suite_config("jssr-mi-baseline", 2))
    measures = set(evaluate_jssr(baseline, data, max_pairs=2))
    assert measures == {"dice", "dice_identity", "folding"}
