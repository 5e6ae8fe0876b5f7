"""Fake engines for the plugin's pytester tests: copied as the conftest.py of each test.

It implements ``pytest_containersec_runtime_factories`` and replaces the four built-in
runtimes with fakes, so no engine is contacted. Environment knobs (set by the outer test):

- ``CONTAINERSEC_FAKE_EVENTS``: a file; every start/stop/reap appends a JSON line.
- ``CONTAINERSEC_FAKE_UNAVAILABLE``: comma-separated runtime names reported unavailable.
- ``CONTAINERSEC_FAKE_UNSUPPORTED``: a spec field every fake refuses (UnsupportedSpec).
- ``CONTAINERSEC_FAKE_START_DELAY``: seconds each start takes (events carry the times).
- ``CONTAINERSEC_FAKE_FAIL_USER``: a spec ``user`` whose start fails (ContainerStartError).
- ``CONTAINERSEC_FAKE_STOP_FAILS``: a runtime whose containers' stop raises (its engine
  stopped answering).
- ``CONTAINERSEC_FAKE_STOP_DELAY``: seconds each stop takes (events carry the times).
- ``CONTAINERSEC_FAKE_MORE``: comma-separated names of more fake runtimes (wide matrices).
- ``CONTAINERSEC_FAKE_IGNORE_MEMORY``: a runtime that ignores ``memory`` (no limit, and a
  ``spec`` mismatch in its Facts, as rootless engines on cgroup v1).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec.errors import ContainerStartError, RuntimeUnavailable, UnsupportedSpec
from pytest_containersec.model import Capabilities, Cgroup, Declared, Facts, Lsm, Mismatch, User
from pytest_containersec.runtimes import KNOWN_NAMES
from pytest_containersec.runtimes.base import Availability, Container, ExecResult, Runtime
from pytest_containersec.spec import ContainerSpec

DEFAULT_CAPS = ("CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID")
FAKE_NAMES = ("docker", "podman", "podman-rootless", "nspawn")
_ids = itertools.count(1)


def _event(**data: Any) -> None:
    path = os.environ.get("CONTAINERSEC_FAKE_EVENTS")
    if path:
        with Path(path).open("a") as fh:
            fh.write(json.dumps(data) + "\n")


class FakeContainer(Container):
    def __init__(self, runtime: FakeRuntime, spec: ContainerSpec) -> None:
        n = next(_ids)
        self.runtime = runtime.name
        self.id = f"{n:012x}fake"
        self.name = f"containersec-fake-{runtime.name}-{n}"
        self.host_pid = 40000 + n
        self.spec = spec
        self.engine_rootless = runtime.name == "podman-rootless"
        self._rt = runtime
        self.stopped = False
        self.execs: list[list[str]] = []

    def exec(self, argv: list[str], timeout: float = 30.0) -> ExecResult:
        self.execs.append(list(argv))
        _event(op="exec", runtime=self.runtime, name=self.name, argv=argv)
        script = argv[-1]
        if script == "echo hello":
            return ExecResult(0, "hello\n", "")
        return ExecResult(1, "", f"fake: {script}: not found\n")

    def stop(self) -> None:
        began = time.monotonic()
        time.sleep(float(os.environ.get("CONTAINERSEC_FAKE_STOP_DELAY") or 0))
        if self.runtime == os.environ.get("CONTAINERSEC_FAKE_STOP_FAILS"):
            raise RuntimeUnavailable(self.runtime, "the fake engine stopped answering")
        if not self.stopped:
            self.stopped = True
            self._rt.live.pop(self.id, None)
            _event(op="stop", runtime=self.runtime, name=self.name, began=began,
                   ended=time.monotonic())  # fmt: skip

    def declared(self) -> Declared:
        return {"engine": "fake"}

    def logs(self) -> str:
        return f"fake log of {self.name}\n"

    def facts(
        self,
        access: tuple[str, ...] | list[str] = (),
        refresh: bool = False,
        process: object = None,
    ) -> Facts:
        spec = self.spec
        effective = set(DEFAULT_CAPS) | set(spec.cap_add)
        effective = set() if "ALL" in spec.cap_drop else effective - set(spec.cap_drop)
        rootless = self.engine_rootless
        uid_map = ((0, 100000, 65536),) if rootless else ((0, 0, 4294967295),)
        caps = tuple(sorted(effective))
        memory = _int(spec.memory)
        mismatches: tuple[Mismatch, ...] = ()
        if memory is not None and self.runtime == os.environ.get("CONTAINERSEC_FAKE_IGNORE_MEMORY"):
            memory, mismatches = None, (Mismatch("cgroup.memory_max", memory, None, "spec"),)
        self._facts_cache = Facts(
            runtime=self.runtime,
            engine_rootless=rootless,
            host_pid=self.host_pid,
            user=User(0, 0, 100000 if rootless else 0, 100000 if rootless else 0),
            uid_map=uid_map,
            gid_map=uid_map,
            capabilities=Capabilities(caps, caps, caps, (), ()),
            seccomp="filter",
            no_new_privs=spec.no_new_privileges,
            lsm=Lsm(None, None),
            cgroup=Cgroup(2, "/fake", memory, spec.pids_limit, spec.cpus),
            rootfs_read_only=spec.read_only,
            mounts=(),
            mismatches=mismatches,
        )
        return self._facts_cache


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


class FakeRuntime:
    def __init__(self, name: str) -> None:
        self.name = name
        self.live: dict[str, FakeContainer] = {}

    def availability(self) -> Availability:
        _event(op="availability", runtime=self.name)
        down = os.environ.get("CONTAINERSEC_FAKE_UNAVAILABLE", "").split(",")
        if self.name in down:
            return Availability(self.name, False, reason="fake engine is down", hint="start it")
        return Availability(self.name, True, f"Fake {self.name} 1.0")

    def start(self, spec: ContainerSpec) -> Container:
        field = os.environ.get("CONTAINERSEC_FAKE_UNSUPPORTED")
        if field and spec.non_default_fields().get(field) is not None:
            raise UnsupportedSpec(field, self.name, "the fake cannot express it")
        began = time.monotonic()
        time.sleep(float(os.environ.get("CONTAINERSEC_FAKE_START_DELAY") or 0))
        if spec.user is not None and spec.user == os.environ.get("CONTAINERSEC_FAKE_FAIL_USER"):
            raise ContainerStartError(self.name, ["fake"], 1, "the fake refused to start")
        c = FakeContainer(self, spec)
        self.live[c.id] = c
        _event(op="start", runtime=self.name, name=c.name, spec=spec.to_dict(), began=began,
               ended=time.monotonic())  # fmt: skip
        return c

    def reap(self) -> int:
        began = time.monotonic()
        time.sleep(float(os.environ.get("CONTAINERSEC_FAKE_REAP_DELAY") or 0))
        _event(op="reap", runtime=self.name, began=began, ended=time.monotonic())
        if self.name in os.environ.get("CONTAINERSEC_FAKE_REAP_FAIL", "").split(","):
            raise RuntimeUnavailable(self.name, "the fake engine lost its containers", "retry")
        return 0

    def forget(self, c: Container) -> None:
        self.live.pop(c.id, None)
        _event(op="forget", runtime=self.name, name=c.name)

    def close(self) -> None:
        for c in list(self.live.values()):
            c.stop()
        _event(op="close", runtime=self.name)


def _factory(name: str) -> Any:
    return lambda: FakeRuntime(name)


@pytest.hookimpl
def pytest_containersec_runtime_factories(config: pytest.Config) -> Mapping[str, Any]:
    """The four fakes (and CONTAINERSEC_FAKE_MORE); every other built-in runtime is
    removed (None)."""
    removed: dict[str, Any] = dict.fromkeys(KNOWN_NAMES)
    more = [n for n in os.environ.get("CONTAINERSEC_FAKE_MORE", "").split(",") if n]
    return {**removed, **{name: _factory(name) for name in (*FAKE_NAMES, *more)}}


def _check_protocol() -> Runtime:
    return FakeRuntime("docker")  # mypy: FakeRuntime satisfies the Runtime Protocol
