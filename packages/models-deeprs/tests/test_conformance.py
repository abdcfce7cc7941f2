"""regzoo's conformance suite on ``deeprs``, 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(plugin="regzoo-models-deeprs")
def test_deeprs_conformance(name, ndim):
    check_model(name, ndim)
