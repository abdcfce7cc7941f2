"""What makes oar-joint that pipeline, without training: the centre-of-mass loss, the ROI
selection (centre and volume-based size), cropping and pasting back, the feedback of the masks
into the second registration pass, the shape correction and the loss terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import regzoo
from regzoo.errors import ConfigError
from regzoo.labels import one_hot
from regzoo.spatial import compose, warp
from regzoo.testing import tiny_batch
from regzoo_oar.model import (
    centre_of_mass,
    centre_of_mass_loss,
    crop,
    paste,
    roi_grid,
    shape_correction,
)

SMALL = {"name": "vxm-unet", "enc_features": [4, 8], "dec_features": [8, 8, 4]}


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {
        "ndim": 2,
        "num_labels": 4,
        "roi_size": 8,
        "min_roi": 4.0,
        "registration": SMALL,
        "segmentation": SMALL,
    }
    return regzoo.create_model("oar-joint", **{**config, **overrides})


def test_centre_of_mass_loss_equals_a_hand_computation():
    """Two 2D maps, two labels. Label 1: pred a unit mass at (1, 1) and one at (1, 3), centre
    (1, 2); target a single voxel at (4, 6): distance sqrt(9 + 16) = 5. Label 2: pred 0.5 at
    (0, 0) and 1.5 at (2, 4), centre (1.5, 3); target mass 1 at (1.5 +- ..) i.e. voxels (1, 3)
    and (2, 3) with 1 each, centre (1.5, 3): distance 0. A third label empty in pred is left
    out. Mean over the present pairs: (5 + 0) / 2 = 2.5."""
    pred = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    target = torch.zeros_like(pred)
    pred[0, 0, 1, 1] = pred[0, 0, 1, 3] = 1.0
    target[0, 0, 4, 6] = 1.0
    pred[0, 1, 0, 0], pred[0, 1, 2, 4] = 0.5, 1.5
    target[0, 1, 1, 3] = target[0, 1, 2, 3] = 1.0
    target[0, 2, 5, 5] = 1.0
    centres, mass = centre_of_mass(pred)
    torch.testing.assert_close(
        centres[0, :2], torch.tensor([[1.0, 2.0], [1.5, 3.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(mass[0], torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64))
    assert float(centre_of_mass_loss(pred, target)) == pytest.approx(2.5, abs=1e-6)
    # 3D and a batch: one distance of sqrt(1 + 4 + 4) = 3 per sample
    a = torch.zeros(2, 1, 5, 5, 5)
    b = torch.zeros_like(a)
    a[:, 0, 0, 0, 0] = 1.0
    b[:, 0, 1, 2, 2] = 1.0
    assert float(centre_of_mass_loss(a, b)) == pytest.approx(3.0, abs=1e-5)


def test_centre_of_mass_loss_pulls_the_centres_together():
    pred = torch.zeros(1, 1, 9, 9)
    pred[0, 0, 2, 2] = 1.0
    pred.requires_grad_(True)
    target = torch.zeros(1, 1, 9, 9)
    target[0, 0, 6, 6] = 1.0
    centre_of_mass_loss(pred, target).backward()
    # mass towards the target lowers the loss
    assert pred.grad[0, 0, 6, 6] < pred.grad[0, 0, 2, 2]


@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_then_paste_gives_the_image_back_inside_the_roi(ndim):
    """A ROI resampled at the image's own spacing and pasted back equals the image inside the
    box; outside, ``inside`` is False."""
    shape = (20,) * ndim
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 2, *shape, generator=g)
    centre = torch.full((1, ndim), 9.0)
    side = torch.tensor([8.0])
    points = roi_grid(centre, side, 9)  # 9 points over 8 voxels: the image's own voxels
    assert points.shape == (1, *[9] * ndim, ndim)
    assert float(points.min()) == 5.0 and float(points.max()) == 13.0
    roi = crop(image, points)
    box = (slice(None), slice(None)) + (slice(5, 14),) * ndim
    torch.testing.assert_close(roi, image[box])
    pasted, inside = paste(roi, centre, side, shape)
    torch.testing.assert_close(pasted[box], image[box])
    assert int(inside.sum()) == 9**ndim and bool(inside[box].all())


def test_roi_selection_centres_on_the_warped_organ_and_sizes_by_volume():
    model = _model(roi_scale=3.0, min_roi=4.0)
    labels = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    labels[0, 0, 4:8, 4:8] = 1  # 16 voxels: side 3 * 4 = 12
    labels[0, 0, 20:21, 10:11] = 2  # 1 voxel: side 3, raised to min_roi 4
    template = one_hot(labels, 4)
    centres, sides = model.select_rois(template, template)
    torch.testing.assert_close(centres[0, :2], torch.tensor([[5.5, 5.5], [20.0, 10.0]]))
    torch.testing.assert_close(sides[0, :2], torch.tensor([12.0, 4.0]))
    # label 3 is absent: centred on the image
    torch.testing.assert_close(centres[0, 2], torch.tensor([15.5, 15.5]))


def test_second_pass_refines_the_first_with_the_masks_as_landmarks():
    """Pass 1: the template and zero hints. Pass 2: the template warped by pass 1's field, with
    the warped template's OAR maps and pass 1's predicted masks (softmax of its segmentation,
    background dropped) as hints; its own flow is composed with pass 1's field."""
    model = _model().eval()
    batch = tiny_batch(2, (32, 32), batch_size=2)
    with torch.no_grad():  # a real first field
        model.flow.weight.normal_(0.0, 1.0)
    seen = []
    original = model.register

    def spy(moving, fixed, hints):
        seen.append((moving.clone(), hints.clone()))
        return original(moving, fixed, hints)

    model.register = spy
    with torch.no_grad():
        passes = model.iterate(batch)
        out = model(batch)
    assert len(passes) == 2 and len(seen) == 4  # iterate, then forward
    first, second = passes
    assert torch.equal(seen[0][0], batch["moving"]) and seen[0][1].abs().max() == 0
    assert first.ddf.abs().max() > 0.1
    torch.testing.assert_close(seen[1][0], warp(batch["moving"], first.ddf))
    torch.testing.assert_close(seen[1][1][:, :3], first.warped_template[:, 1:])
    torch.testing.assert_close(seen[1][1][:, 3:], first.seg.softmax(1)[:, 1:])
    torch.testing.assert_close(second.ddf, compose(first.ddf, second.flow))
    torch.testing.assert_close(out.ddf, second.ddf)
    torch.testing.assert_close(out.warped, warp(batch["moving"], second.ddf))
    # the ablation: zeros for the predicted masks, the rest as before
    seen.clear()
    with torch.no_grad():
        model.iterate(batch, feedback=False)
    torch.testing.assert_close(seen[1][1][:, :3], first.warped_template[:, 1:])
    assert seen[1][1][:, 3:].abs().max() == 0
    # one registration only without the template's labels
    unlabelled = {k: batch[k] for k in ("moving", "fixed")}
    with torch.no_grad():
        out = model(unlabelled)
    assert out.fixed_seg is None and set(out.extras) == {"ddf_0", "flow_0"}


def test_segmentation_is_assembled_from_the_rois():
    """log q: OAR k's probability sigmoid(z_k) inside its ROI (none outside, none when the ROI
    classification names another class), the smaller OAR on top where ROIs overlap, the
    background what is left; q sums to 1."""
    model = _model().eval()
    batch = tiny_batch(2, (32, 32), batch_size=1)
    with torch.no_grad():
        it = model.iterate(batch)[0]
        it.centres = torch.tensor([[[12.0, 12.0], [14.0, 14.0], [20.0, 20.0]]])
        it.sides = torch.tensor([[12.0, 6.0, 6.0]])
        it.roi_class = torch.zeros_like(it.roi_class)
        it.roi_class[0, 0, 1] = it.roi_class[0, 1, 2] = 1.0  # ROIs 1, 2 hold their OARs
        it.roi_class[0, 2, 0] = 1.0  # ROI 3 holds none
        q = model.assemble(it, (32, 32)).exp()
    torch.testing.assert_close(q.sum(1), torch.ones(1, 32, 32))
    assert float(q[:, 3].max()) <= math.exp(-20) * 1.001
    z = it.roi_logits[0, :2, 1] - it.roi_logits[0, :2, 0]
    p = [
        paste(z[k][None, None], it.centres[0, k][None], it.sides[0, k][None], (32, 32))
        for k in (0, 1)
    ]
    p1 = torch.where(p[0][1], p[0][0].sigmoid(), torch.zeros(()))[0, 0]
    p2 = torch.where(p[1][1], p[1][0].sigmoid(), torch.zeros(()))[0, 0]
    # OAR 2 (the smaller ROI) on top of OAR 1
    torch.testing.assert_close(q[0, 2], p2.clamp(min=math.exp(-20)))
    torch.testing.assert_close(q[0, 1], (p1 * (1 - p2)).clamp(min=math.exp(-20)))
    torch.testing.assert_close(q[0, 0], (1 - p1) * (1 - p2))


def test_shape_correction_keeps_the_largest_component_and_fills_holes():
    mask = np.zeros((12, 12), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole
    mask[9:11, 9:11] = True  # a smaller component
    corrected = shape_correction(mask)
    expected = np.zeros_like(mask)
    expected[1:6, 1:6] = True
    assert np.array_equal(corrected, expected)
    assert not shape_correction(np.zeros((4, 4), bool)).any()


def test_evaluation_output_is_shape_corrected_training_output_is_not():
    model = _model(correct_labels=[1, 2, 3])
    batch = tiny_batch(2, (32, 32), batch_size=2)
    with torch.no_grad():
        model.train()
        raw = model(batch).fixed_seg
        model.eval()
        out = model(batch)
    torch.testing.assert_close(out.extras["seg_1"], raw)
    torch.testing.assert_close(out.fixed_seg, model.correct(raw))
    labels = out.fixed_seg.argmax(1).numpy()
    for b in range(2):
        for k in (1, 2, 3):
            mask = labels[b] == k
            assert np.array_equal(mask, shape_correction(mask))


def test_loss_terms_and_weights():
    """Per pass: Dice of the warped template labels, centre-of-mass distance, Grad of the pass's
    own flow, ROI Dice + CE and ROI classification, summed over the passes, weighted
    (1, 1, 10, 1, 0.1)."""
    model = _model()
    batch = tiny_batch(2, (32, 32), batch_size=2)
    with torch.no_grad():
        out = model(batch)
        terms = model.loss(batch, out)
    fixed = one_hot(batch["fixed_label"], 4)
    com = sum(
        centre_of_mass_loss(out.extras[f"warped_label_{i}"][:, 1:], fixed[:, 1:]) for i in (0, 1)
    )
    torch.testing.assert_close(terms["com"], com)
    grad = regzoo.build("loss", {"name": "grad", "penalty": "l2"})
    torch.testing.assert_close(
        terms["regularizer"], sum(grad(out.extras[f"flow_{i}"]) for i in (0, 1))
    )
    dice = regzoo.build("loss", {"name": "dice", "complement": True})
    torch.testing.assert_close(
        terms["dice"], sum(dice(out.extras[f"warped_label_{i}"], fixed) for i in (0, 1))
    )
    total = terms["dice"] + terms["com"] + 10 * terms["regularizer"] + terms["seg"]
    total = total + 0.1 * terms["cls"]
    torch.testing.assert_close(terms["loss"], total)
    assert math.isfinite(float(terms["seg"])) and float(terms["cls"]) > 0
    unlabelled = {k: v for k, v in batch.items() if k != "fixed_label"}
    assert set(model.loss(unlabelled, out)) == {"regularizer", "loss"}


def test_trajectory_is_one_field_per_pass():
    model = _model(iterations=3).eval()
    batch = tiny_batch(2, (32, 32), batch_size=1)
    with torch.no_grad():
        fields = model.trajectory(batch)
        out = model(batch)
    assert len(fields) == 3
    torch.testing.assert_close(fields[-1], out.ddf)


def test_bad_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="iterations"):
        _model(iterations=0)
    with pytest.raises(ConfigError, match="correct_labels"):
        _model(correct_labels=[0])
    with pytest.raises(ConfigError, match="model.segmentation"):
        _model(segmentation={"name": "other"})
