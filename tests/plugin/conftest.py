"""Shared fixtures of the plugin tests."""

from __future__ import annotations

import pytest

# Imported before any in-process pytester run, so that every run sees this one module
# (pytester drops the modules a run imported): the plugin then recognizes CheckFailed.
import pytest_containersec.expect  # noqa: F401
from tests.plugin.helpers import FakeEnv


@pytest.fixture
def fake(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> FakeEnv:
    return FakeEnv(pytester, monkeypatch)
