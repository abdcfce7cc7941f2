"""regzoo's conformance suite on ``tumour-joint``, 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(plugin="regzoo-models-tumourreg")
def test_tumour_joint_conformance(name, ndim):
    check_model(name, ndim)
