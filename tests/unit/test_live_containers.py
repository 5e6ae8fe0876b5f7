"""The bookkeeping every runtime adapter shares: start with rollback, forget, stop all."""

from __future__ import annotations

import subprocess

import pytest

from pytest_containersec.errors import ContainerStartError, RuntimeUnavailable
from pytest_containersec.model import Declared
from pytest_containersec.runtimes.base import Container, ExecResult, LiveContainers
from pytest_containersec.spec import ContainerSpec


class Tracked(Container):
    def __init__(self, live: LiveContainers[Tracked], fail_stop: BaseException | None = None):
        self.runtime = "fake"
        self.id = self.name = f"c{id(self)}"
        self.host_pid = 1
        self.spec = ContainerSpec()
        self.engine_rootless = False
        self.live = live
        self.fail_stop = fail_stop
        self.stops = 0
        self.argv = ["fake-run", self.name]

    def exec(self, argv: list[str], timeout: float = 30.0) -> ExecResult:
        return ExecResult(0, "", "")

    def stop(self) -> None:
        self.stops += 1
        if self.fail_stop is not None:
            raise self.fail_stop
        self.live.forget(self)

    def declared(self) -> Declared:
        return {}

    def logs(self) -> str:
        return ""


def test_launch_tracks_a_started_container() -> None:
    live: LiveContainers[Tracked] = LiveContainers("fake")
    c = Tracked(live)
    assert live.launch(c, lambda: None, lambda: c.argv) is c
    assert len(live) == 1
    assert c.stops == 0
    c.stop()
    assert len(live) == 0


def test_a_failed_start_is_stopped_and_its_os_error_names_the_command() -> None:
    live: LiveContainers[Tracked] = LiveContainers("fake")
    c = Tracked(live)

    def start() -> None:
        c.argv = ["fake-run", "--known-only-now", c.name]
        raise subprocess.TimeoutExpired("fake-run", 5)

    with pytest.raises(ContainerStartError) as info:
        live.launch(c, start, lambda: c.argv)
    assert c.stops == 1
    assert len(live) == 0
    assert "--known-only-now" in str(info.value)


def test_other_start_errors_pass_through_after_the_rollback() -> None:
    live: LiveContainers[Tracked] = LiveContainers("fake")
    c = Tracked(live)
    refused = RuntimeUnavailable("fake", "gone", "restart it")

    def start() -> None:
        raise refused

    with pytest.raises(RuntimeUnavailable) as info:
        live.launch(c, start, lambda: c.argv)
    assert info.value is refused
    assert c.stops == 1
    assert len(live) == 0


def test_stop_all_tolerates_only_the_named_errors() -> None:
    live: LiveContainers[Tracked] = LiveContainers("fake")
    ok, gone = Tracked(live), Tracked(live, RuntimeUnavailable("fake", "daemon gone"))
    live.add(ok)
    live.add(gone)
    live.stop_all(RuntimeUnavailable)
    assert ok.stops == 1
    assert gone.stops == 1
    assert len(live) == 1  # the one whose engine is gone: the next session's reap

    strict: LiveContainers[Tracked] = LiveContainers("fake")
    strict.add(Tracked(strict, OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        strict.stop_all(RuntimeUnavailable)


def test_forget_leaves_the_container_running() -> None:
    live: LiveContainers[Tracked] = LiveContainers("fake")
    c = live.add(Tracked(live))
    live.forget(c)
    live.stop_all()
    assert c.stops == 0
