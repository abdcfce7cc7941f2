"""regzoo's conformance suite on every entry of the plugin (jssr, jssr-mi-baseline), 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(plugin="regzoo-models-jssr")
def test_conformance(name, ndim):
    check_model(name, ndim)
