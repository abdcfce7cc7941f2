"""regzoo's conformance suite on both RCN entries, 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(plugin="regzoo-models-rcn")
def test_rcn_conformance(name, ndim):
    check_model(name, ndim)
