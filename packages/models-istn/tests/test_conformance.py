"""regzoo's conformance suite on every ISTN entry, 2D and 3D."""

from __future__ import annotations

from regzoo.testing import check_model, parametrize_models


@parametrize_models("istn-*")
def test_istn_conformance(name, ndim):
    check_model(name, ndim)


@parametrize_models("stn-*")
def test_stn_baseline_conformance(name, ndim):
    check_model(name, ndim)
