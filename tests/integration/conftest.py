"""Integration tests run real runtimes. In CI (CI=true) a skip is a failure: the point of
these tests is that they run, so an unavailable runtime must break the build."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from pytest_containersec.runtimes import RUNTIME_NAMES, Runtime, get_runtime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if os.environ.get("CI") and report.skipped and "integration" in item.nodeid:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI (CI=true): {reason}"
    return report


def runtime_or_skip(name: str) -> Runtime:
    rt = get_runtime(name)
    avail = rt.availability()
    if not avail.available:
        pytest.skip(f"{name} unavailable: {avail.reason} (fix: {avail.hint})")
    return rt


@pytest.fixture(scope="module", params=RUNTIME_NAMES)
def any_runtime(request: pytest.FixtureRequest) -> Runtime:
    """Each of the four runtimes in turn (skipped, outside CI, when unavailable)."""
    return runtime_or_skip(str(request.param))
