"""The conformance suite (``regzoo.testing``) over every installed model, 2D and 3D as claimed.

The 3D cases belong to the slow tier: they cost most of the time, and each plugin's own tests
check its models in 3D as well.
"""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models(slow_dims=(3,))
def test_conformance(name: str, ndim: int) -> None:
    check_model(name, ndim)
