"""systemd-run and portable: a unit whose agent never answered is started once more."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_containersec.runtimes.agent_client import AgentNotReady
from pytest_containersec.runtimes.base import LiveContainers
from pytest_containersec.runtimes.systemd.systemd_run import SystemdRunRuntime


class Unit:
    def __init__(self, n: int, outcome: str) -> None:
        self.n, self.outcome, self.stopped = n, outcome, False
        self.argv = [f"unit-{n}"]

    def stop(self) -> None:
        self.stopped = True

    def start(self) -> None:
        if self.outcome == "stall":
            raise AgentNotReady("systemd-run", self.argv, None, f"agent not ready ({self.n})")
        if self.outcome == "fail":
            raise RuntimeError("refused")


def launcher(outcomes: list[str]) -> tuple[SystemdRunRuntime, list[Unit], Callable[[], Any]]:
    rt = SystemdRunRuntime.__new__(SystemdRunRuntime)
    rt.live = LiveContainers("systemd-run")
    made: list[Unit] = []

    def make() -> tuple[Any, Callable[[], None]]:
        u = Unit(len(made), outcomes[len(made)])
        made.append(u)
        return u, u.start

    return rt, made, make


def test_a_stalled_agent_gets_one_new_unit_and_the_stalled_one_is_stopped() -> None:
    rt, made, make = launcher(["stall", "ok"])
    started: object = rt._launch(make)
    assert started is made[1]
    assert [u.stopped for u in made] == [True, False]


def test_two_stalls_name_both_and_other_errors_are_not_retried() -> None:
    rt, made, make = launcher(["stall", "stall"])
    with pytest.raises(AgentNotReady, match=r"agent not ready \(1\).*attempt before.*\(0\)"):
        rt._launch(make)
    assert [u.stopped for u in made] == [True, True]
    rt, made, make = launcher(["fail", "ok"])
    with pytest.raises(RuntimeError, match="refused"):
        rt._launch(make)
    assert len(made) == 1
    assert made[0].stopped
