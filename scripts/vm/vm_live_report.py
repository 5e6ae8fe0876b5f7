"""A pytest plugin for the VM tier (loaded by scripts/vm/inside with -p): prints each
failure's reason as soon as it happens, so a run that is cut short by its time limit
still says what failed and why (the usual summary only comes at the end)."""

from __future__ import annotations

import pytest


def _reason(report: pytest.TestReport) -> str:
    lines = [ln.rstrip() for ln in report.longreprtext.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E ")]
    picked = errors[:4] if errors else lines[-3:]
    return " | ".join(ln.removeprefix("E").strip() for ln in picked)[:900]


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed or (report.skipped and report.when != "teardown"):
        kind = "FAILED" if report.failed else "SKIPPED"
        if report.failed and report.when != "call":
            kind = "ERROR"
        print(f"\nVM-{kind} {report.nodeid} ({report.when}): {_reason(report)}", flush=True)
