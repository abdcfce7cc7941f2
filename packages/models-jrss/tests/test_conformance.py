"""regzoo's conformance suite on ``jrss``, 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(plugin="regzoo-models-jrss")
def test_jrss_conformance(name, ndim):
    check_model(name, ndim)
