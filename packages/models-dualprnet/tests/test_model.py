"""What makes Dual-PRNet that network, without training: the identity at zero residuals, the
correlation layer against a direct loop, the official parameter counts, the pyramid's shapes."""

from __future__ import annotations

import pytest
import torch

import regzoo
from regzoo.errors import ConfigError
from regzoo_dualprnet.networks import Correlation

MODELS = ("dual-prnet", "dual-prnet-plus")
SIZES = {2: (32, 32), 3: (16, 16, 16)}


def _pair(ndim: int, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = SIZES[ndim]
    return {k: torch.rand(batch, 1, *size, generator=g) for k in ("moving", "fixed")}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_zero_residuals_warp_is_identity(name, ndim):
    """Every level's field layer zeroed (the rest random): every residual, the composed field and
    the displacement are exactly zero and ``warped`` is ``moving``."""
    torch.manual_seed(0)
    model = regzoo.create_model(name, ndim=ndim).eval()
    for layer in model.offset:
        last = layer if isinstance(layer, torch.nn.Conv2d | torch.nn.Conv3d) else layer.offset_layer
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    batch = _pair(ndim)
    with torch.no_grad():
        out = model(batch)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in out.extras.values())
    assert torch.equal(out.ddf, torch.zeros_like(out.ddf))
    # core's warp maps a zero field to the input up to float rounding of the sampling grid (the conformance tolerance)
    torch.testing.assert_close(out.warped, batch["moving"], rtol=0, atol=1e-5)


def _loop_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The official kernel's cost volume written out voxel by voxel: channel k of displacement
    ``d = 2 (t - 1)``, ``t`` over ``{0, 1, 2}^ndim`` (first axis slowest), ``mean_c
    first[c, x] second[c, x + d]``, zero outside ``second``."""
    b, c, *size = first.shape
    ndim = len(size)
    out = torch.zeros(b, 3**ndim, *size, dtype=first.dtype)
    for k in range(3**ndim):
        d = [2 * ((k // 3 ** (ndim - 1 - a)) % 3 - 1) for a in range(ndim)]
        for x in torch.cartesian_prod(*[torch.arange(n) for n in size]).reshape(-1, ndim).tolist():
            y = [xi + di for xi, di in zip(x, d)]
            if all(0 <= yi < n for yi, n in zip(y, size)):
                for n in range(b):
                    out[(n, k, *x)] = (
                        sum(first[(n, ch, *x)] * second[(n, ch, *y)] for ch in range(c)) / c
                    )
    return out


@pytest.mark.parametrize("ndim,channels", [(2, 9), (3, 27)])
def test_correlation_equals_loop(ndim, channels):
    """The vectorised cost volume equals the direct loop: 9 channels in 2D, 27 in 3D."""
    g = torch.Generator().manual_seed(1)
    size = (7, 6) if ndim == 2 else (5, 4, 6)
    first = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    second = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    out = Correlation()(first, second)
    assert out.shape == (2, channels, *size)
    torch.testing.assert_close(out, _loop_correlation(first, second), rtol=0, atol=1e-12)


# Counted by instantiating the authors' code (kangmiao15/Dual-Stream-PRNet-Plus, commit 0a25264):
# net_factory.build_network3d("voxnet_fusion") (its default, MedIA configuration) has 613,855
# parameters; CascadeMorphNet3d(VoxResNet(1, [8, 16, 32, 32]), [8, 16, 32, 32], fpn_dim=32) (the
# factory's commented MICCAI configuration) 430,964; Baseline3d with the same backbone 415,403.
OFFICIAL_COUNTS = {
    ("dual-prnet-plus", None): 613_855,
    ("dual-prnet", None): 430_964,
    ("dual-prnet", 1): 415_403,
}


@pytest.mark.parametrize("name,levels", list(OFFICIAL_COUNTS))
def test_parameter_counts_equal_official(name, levels):
    model = regzoo.create_model(name, ndim=3, pyramid_levels=levels)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_COUNTS[(name, levels)]


@pytest.mark.parametrize("name", MODELS)
def test_pyramid_resolutions(name):
    """MICCAI: fields at 1/16 to 1/2 (the last upsampled x2); MedIA: 1/8 to full resolution, the
    two finest levels both at full resolution; ``ddf`` at the image size."""
    model = regzoo.create_model(name, ndim=2).eval()
    with torch.no_grad():
        out = model(_pair(2, batch=1))
    sizes = [r.shape[-1] for r in out.extras.values()]
    assert sizes == ([2, 4, 8, 16] if name == "dual-prnet" else [4, 8, 16, 32, 32])
    assert out.ddf.shape == (1, 2, 32, 32)


def test_single_level_uses_finest():
    model = regzoo.create_model("dual-prnet-plus", ndim=2, pyramid_levels=1).eval()
    with torch.no_grad():
        out = model(_pair(2, batch=1))
    assert [r.shape[-1] for r in out.extras.values()] == [32]


def test_loss_sums_residual_terms():
    """Similarity plus the Grad-l2 of every level's residual, weight 1 (the official loss_fn)."""
    torch.manual_seed(0)
    model = regzoo.create_model("dual-prnet", ndim=2)
    for layer in model.offset:
        torch.nn.init.normal_(layer.weight, std=0.1)
    batch = _pair(2)
    out = model(batch)
    terms = model.loss(batch, out)
    grad = regzoo.build("loss", {"name": "grad", "penalty": "l2"})
    expected = sum(grad(r) for r in out.extras.values())
    torch.testing.assert_close(terms["regularizer"], expected)
    torch.testing.assert_close(terms["loss"], terms["similarity"] + expected)


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"pyramid_levels": 5}, "model.pyramid_levels"),
        ({"backbone": "unet"}, "model.backbone"),
        ({"channels": [8, 16, 32]}, "model.channels"),
        ({"head": "mlp"}, "model.head"),
        ({"padding": "reflect"}, "model.padding"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        regzoo.create_model("dual-prnet", ndim=2, **overrides)


def test_other_sizes_run():
    """Sizes that are not multiples of 16 run (upsampling goes to each finer level's size)."""
    model = regzoo.create_model("dual-prnet-plus", ndim=2).eval()
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(1, 1, 40, 36, generator=g) for k in ("moving", "fixed")}
    with torch.no_grad():
        out = model(batch)
    assert out.ddf.shape == (1, 2, 40, 36) and out.warped.shape == (1, 1, 40, 36)
