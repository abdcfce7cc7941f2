"""Tests of the example plugin: what every plugin should test.

1. The conformance suite (``regzoo.testing``) over the plugin's models.
2. The plugin is found through its entry point: ``regzoo list`` shows the model.
3. ``regzoo train`` runs it end to end.
4. What makes the method that method (here: an affine model recovers a known affine transform).

Run after ``pip install -e tools/plugin-template``: ``python -m pytest tools/plugin-template``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import regzoo
from regzoo.engine.optim import make_optimizer
from regzoo.models import Optimizers
from regzoo.testing import check_model, parametrize_models

DISTRIBUTION = "regzoo-models-example"


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_plugin_is_installed_and_loads():
    status = {p.distribution: p for p in regzoo.plugins()}
    assert DISTRIBUTION in status, "install the plugin first: pip install -e tools/plugin-template"
    assert status[DISTRIBUTION].error is None
    assert status[DISTRIBUTION].entries == ["model:example-affine"]


@parametrize_models(plugin=DISTRIBUTION)
def test_conformance(name, ndim):
    check_model(name, ndim)


def test_import_is_cheap():
    """The entry point's module registers without importing torch: listing stays fast."""
    code = "import sys, regzoo_example; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_regzoo_list_shows_the_model():
    result = _cli("list", "example-*")
    assert result.returncode == 0, result.stderr
    assert "example-affine" in result.stdout


def test_regzoo_train_runs(tmp_path):
    out = tmp_path / "run"
    result = _cli("train", "example-affine", "train.steps=5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "last.pt").is_file() and (out / "config.yaml").is_file()


def test_recovers_a_translation():
    """Optimised on one pair related by a translation, the predicted affine finds it."""
    torch.manual_seed(0)
    model = regzoo.create_model("example-affine", ndim=2, similarity={"name": "mse"})
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def image(dy: float, dx: float) -> torch.Tensor:
        # two anisotropic blobs, so that no rotation maps the image onto itself
        a = torch.exp(-((yy - 12 - dy) ** 2 / 30 + (xx - 11 - dx) ** 2 / 12))
        b = torch.exp(-((yy - 20 - dy) ** 2 / 10 + (xx - 20 - dx) ** 2 / 25))
        return (a + 0.6 * b)[None, None]

    # warped[x] = moving[x + (3, -2)] equals fixed: the translation is b = (3, -2)
    batch = {"moving": image(3.0, -2.0), "fixed": image(0.0, 0.0)}
    optim = Optimizers({"model": make_optimizer(model.parameters(), lr=1e-3)})
    for step in range(150):
        model.training_step(batch, optim, step)
    with torch.no_grad():
        theta = model.eval()(batch).affine[0]
    assert torch.allclose(theta[:, 2], torch.tensor([3.0, -2.0]), atol=0.1), theta
    assert torch.allclose(theta[:, :2], torch.eye(2), atol=0.02), theta


@pytest.mark.parametrize("ndim", [2, 3])
def test_untrained_model_is_the_identity(ndim):
    model = regzoo.create_model("example-affine", ndim=ndim)
    x = torch.rand(2, 1, *[16] * ndim)
    out = model({"moving": x, "fixed": x.flip(-1)})
    assert torch.equal(out.affine, torch.eye(ndim, ndim + 1).expand(2, -1, -1))
    assert out.ddf.abs().max() < 1e-5
