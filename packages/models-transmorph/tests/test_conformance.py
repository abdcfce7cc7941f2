"""regzoo's conformance suite for every TransMorph model, in 2D and 3D.

Building the default configs (up to 108M parameters) dominates the cost, so the fast tier runs one
case of each distinct network and the rest are ``slow``.
"""

from __future__ import annotations

import pytest

from regzoo.testing import check_model, model_cases

FAST = {
    ("transmorph-tiny", 2),
    ("transmorph-tiny", 3),
    ("transmorph-diff", 2),
    ("transmorph-diff-fullres", 2),
    ("transmorph-bspl", 2),
    ("transmorph-bayes", 2),
    ("transmorph-affine", 3),
}
CASES = [
    pytest.param(
        name, ndim, id=f"{name}-{ndim}d", marks=() if (name, ndim) in FAST else pytest.mark.slow
    )
    for name, ndim in model_cases("transmorph*", plugin="regzoo-models-transmorph")
]


def test_every_model_is_covered():
    assert len(CASES) == 17 and FAST <= {tuple(c.values) for c in CASES}


@pytest.mark.parametrize("name,ndim", CASES)
def test_conformance(name, ndim):
    check_model(name, ndim)
