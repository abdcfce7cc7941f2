"""tumour-joint: the official network's layout, the monotone grid, the loss trick, the losses."""

from __future__ import annotations

import pytest
import torch

import regzoo
from regzoo.testing import tiny_batch
from regzoo_tumourreg.model import gradients_to_ddf, masked_mse


def _perturbed(ndim: int = 2, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return regzoo.create_model("tumour-joint", ndim=ndim, features=2, **config)


def _official_parameters(ndim: int, f: int, kernel: int, classes: int, channels: int = 1) -> int:
    """The official V-Net's parameter count (weights and biases), layer by layer: the encoder,
    the segmentation decoder (``classes`` outputs) and the registration decoder (``ndim``)."""
    k, two = kernel**ndim, 2**ndim
    conv = lambda c_in, c_out, size: c_in * c_out * size + c_out  # noqa: E731
    widths = [f * 2**i for i in range(5)]
    encoder = conv(channels, f, 1)
    encoder += sum(n * conv(w, w, k) for w, n in zip(widths, (1, 2, 3, 3, 3)))
    encoder += sum(conv(w, 2 * w, two) for w in widths[:-1])

    def decoder(out: int) -> int:
        total = conv(f, out, 1)
        for w, n in zip(widths[::-1][:-1], (3, 3, 2, 1)):
            total += conv(w, w // 2, two)  # transposed, same count
            total += conv(w, w // 2, k) + (n - 1) * conv(w // 2, w // 2, k)
        return total

    return encoder + decoder(classes) + decoder(ndim)


@pytest.mark.parametrize("ndim", [2, 3])
def test_parameter_count_is_the_official_networks(ndim: int) -> None:
    model = regzoo.create_model("tumour-joint", ndim=ndim, lesion_labels=[1, 2, 3])
    count = sum(p.numel() for p in model.parameters())
    assert count == _official_parameters(ndim, 8, 3, 4)


def test_the_grid_is_strictly_monotone_and_identity_at_one_half() -> None:
    g = torch.full((1, 2, 12, 10), 0.5)
    assert torch.equal(gradients_to_ddf(g), torch.zeros(1, 2, 12, 10))
    gen = torch.Generator().manual_seed(0)
    g = torch.rand((2, 3, 6, 7, 5), generator=gen).clamp_min(1e-4)
    positions = gradients_to_ddf(g) + torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (6, 7, 5)], indexing="ij")
    )
    for axis in range(3):
        assert bool((positions[:, axis].diff(dim=axis + 1) > 0).all())
    model = _perturbed()
    batch = tiny_batch(2, (40, 36))
    with torch.no_grad():
        ddf = model(batch).ddf
    positions = ddf + torch.stack(
        torch.meshgrid(torch.arange(40.0), torch.arange(36.0), indexing="ij")
    )
    assert bool((positions[:, 0].diff(dim=1) > 0).all())
    assert bool((positions[:, 1].diff(dim=2) > 0).all())


def test_the_loss_trick_gives_no_gradient_inside_the_tumour() -> None:
    """With the field and the masks fixed, the registration loss's gradient with respect to the
    warped and the fixed image is exactly zero wherever either image's tumour is predicted, and
    not zero elsewhere."""
    model = _perturbed(lesion_labels=[3])
    batch = tiny_batch(2, (32, 32))
    out = model(batch)
    keep = model.non_tumour(out)
    # force a tumour in each image's prediction: the top-left (moving) and a stripe (fixed)
    out.moving_seg = out.moving_seg.detach().clone()
    out.moving_seg[:, 1, :8, :8] = 100.0
    out.fixed_seg = out.fixed_seg.detach().clone()
    out.fixed_seg[:, 1, 20:24] = 100.0
    keep = model.non_tumour(out)
    assert keep[:, 0, :8, :8].sum() == 0 and keep[:, 0, 20:24].sum() == 0
    warped = out.warped.detach().requires_grad_(True)
    fixed = batch["fixed"].clone().requires_grad_(True)
    out.warped = warped
    model.loss({"moving": batch["moving"], "fixed": fixed}, out)["registration"].backward()
    for grad in (warped.grad, fixed.grad):
        assert torch.equal(grad[keep.expand_as(grad) == 0], torch.zeros(int((keep == 0).sum()) * 1))
        assert (grad[keep.expand_as(grad) == 1] != 0).float().mean() > 0.9
    plain = regzoo.create_model("tumour-joint", ndim=2, features=2, loss_trick=False)
    assert torch.allclose(
        plain.loss({"moving": batch["moving"], "fixed": fixed}, out)["registration"],
        masked_mse(out.warped, fixed, torch.ones_like(keep)),
    )


def test_segmentation_terms_weigh_one_over_twice_the_ratio() -> None:
    model = _perturbed(lesion_labels=[3], ratio=2.0)
    batch = tiny_batch(2, (32, 32))
    out = model(batch)
    terms = model.loss(batch, out)
    expected = terms["registration"] + 1e-10 * terms["gradients"]
    expected = expected + 0.25 * (terms["seg_moving"] + terms["seg_fixed"])
    torch.testing.assert_close(terms["loss"], expected)
    target = model.tumour_classes(batch["fixed_label"])
    assert torch.equal(target, (batch["fixed_label"][:, 0] == 3).long())
    unlabelled = model.loss({"moving": batch["moving"], "fixed": batch["fixed"]}, out)
    assert "seg_fixed" not in unlabelled
    with pytest.raises(regzoo.errors.ConfigError, match="lesion_labels"):
        regzoo.create_model("tumour-joint", ndim=2, lesion_labels=[])


def test_odd_sizes_are_padded_for_the_vnet_and_cropped_back() -> None:
    model = _perturbed()
    batch = tiny_batch(2, (37, 29))
    with torch.no_grad():
        out = model(batch)
    assert out.ddf.shape == (2, 2, 37, 29) and out.moving_seg.shape == (2, 2, 37, 29)
