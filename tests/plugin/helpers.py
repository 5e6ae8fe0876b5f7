"""Helpers of the plugin tests: a pytester project whose runtimes are all fakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FAKE_SOURCE = Path(__file__).with_name("fake_runtime.py")


class FakeEnv:
    """A pytester project whose conftest.py replaces every runtime with a fake."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester = pytester
        self.monkeypatch = monkeypatch
        self.events_path = pytester.path / "fake-events.jsonl"
        monkeypatch.setenv("CONTAINERSEC_FAKE_EVENTS", str(self.events_path))
        monkeypatch.delenv("CONTAINERSEC_FAKE_UNAVAILABLE", raising=False)
        monkeypatch.delenv("CONTAINERSEC_FAKE_UNSUPPORTED", raising=False)
        monkeypatch.delenv("CONTAINERSEC_FAKE_MORE", raising=False)
        monkeypatch.delenv("CONTAINERSEC_FAKE_IGNORE_MEMORY", raising=False)
        monkeypatch.delenv("CONTAINERSEC_FAKE_STOP_FAILS", raising=False)
        monkeypatch.delenv("CONTAINERSEC_FAKE_REAP_DELAY", raising=False)
        monkeypatch.delenv("CONTAINERSEC_FAKE_REAP_FAIL", raising=False)
        pytester.makeconftest(self.conftest())

    @staticmethod
    def conftest() -> str:
        """The conftest.py that installs the fakes (a test may append hooks to it)."""
        return FAKE_SOURCE.read_text()

    def unavailable(self, *names: str) -> None:
        self.monkeypatch.setenv("CONTAINERSEC_FAKE_UNAVAILABLE", ",".join(names))

    def events(self, op: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        rows = [json.loads(line) for line in self.events_path.read_text().splitlines()]
        return [r for r in rows if op is None or r["op"] == op]

    def run(self, *args: str) -> pytest.RunResult:
        # no_reraise_ctrlc: an inner KeyboardInterrupt (tested on purpose) must not stop
        # the outer session.
        return self.pytester.runpytest(
            "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *args, no_reraise_ctrlc=True
        )  # fmt: skip
