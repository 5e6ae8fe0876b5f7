"""Shared fixtures of the plugin tests."""

from __future__ import annotations

import pytest

from tests.plugin.helpers import FakeEnv


@pytest.fixture
def fake(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> FakeEnv:
    return FakeEnv(pytester, monkeypatch)
