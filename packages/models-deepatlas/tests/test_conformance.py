"""regzoo's conformance suite on ``deepatlas``, 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(plugin="regzoo-models-deepatlas")
def test_deepatlas_conformance(name, ndim):
    check_model(name, ndim)
