"""regzoo's conformance suite on both Dual-PRNet entries, 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(plugin="regzoo-models-dualprnet")
def test_dualprnet_conformance(name, ndim):
    check_model(name, ndim)
