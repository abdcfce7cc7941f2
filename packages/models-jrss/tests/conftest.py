"""Shared fixtures of the JRSS plugin's tests."""

from __future__ import annotations

import pytest

from regzoo.testing import one_thread as _one_thread

one_thread = pytest.fixture(autouse=True)(_one_thread)
