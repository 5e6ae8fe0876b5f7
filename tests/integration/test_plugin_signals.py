"""No leftovers with real runtimes: Ctrl-C, SIGTERM, xdist, and a killed pytest (reaped by
the next session). pytest runs in a subprocess; its test records the container it got."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec.runtimes import RUNTIME_NAMES

from .hostile_helpers import Exact, leftovers

BLOCKING_TEST = """
import json, os, pathlib, time

def test_block(containersec_container, containersec_start):
    c = containersec_container
    other = containersec_start(user="1000")
    record = [{"name": x.name, "id": x.id, "pid": x.host_pid, "runtime": x.runtime}
              for x in (c, other)]
    out = pathlib.Path(os.environ["CS_STARTED"])
    out.with_suffix(f".{os.getpid()}").write_text(json.dumps(record))
    time.sleep(120)
"""
QUICK_TEST = "def test_quick(containersec_container):\n    pass\n"


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            break
        time.sleep(0.2)
    return alive


def docker_leftovers(names: list[str]) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=io.containersec.owner", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [n for n in names if n in out]


class Inner:
    """A pytest project in a temporary folder, run as a subprocess."""

    def __init__(self, path: Path, runtime: str) -> None:
        self.path = path
        self.runtime = runtime
        self.started = path / "started"
        path.mkdir(parents=True, exist_ok=True)
        (path / "test_block.py").write_text(BLOCKING_TEST)
        (path / "test_quick.py").write_text(QUICK_TEST)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "CS_STARTED": str(self.started)}
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                f"--containersec-runtime={self.runtime}", *args]  # fmt: skip
        return subprocess.Popen(
            argv, cwd=self.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        return [r for f in self.path.glob("started.*") for r in json.loads(f.read_text())]

    def wait_started(self, proc: subprocess.Popen[str], count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 240  # a booting systemd (systemd-run) under load is slow
        while time.monotonic() < deadline:
            if len(list(self.path.glob("started.*"))) >= count:
                time.sleep(0.3)  # let the files be written completely
                return self.records()
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                if f"--containersec-runtime {self.runtime}: unavailable" in out:
                    pytest.skip(f"{self.runtime} unavailable: {out.strip()[-300:]}")
                pytest.fail(f"inner pytest ended early ({proc.returncode}):\n{out}")
            time.sleep(0.2)
        proc.kill()
        pytest.fail("the inner test did not start its containers within 240 s")

    def finish(self, proc: subprocess.Popen[str], timeout: float = 120) -> str:
        out, _ = proc.communicate(timeout=timeout)
        return out

    def check_gone(self, records: list[dict[str, Any]]) -> None:
        alive = wait_gone([r["pid"] for r in records])
        assert alive == [], f"container processes still running: {records}"
        if self.runtime == "docker":
            assert docker_leftovers([r["name"] for r in records]) == []


@pytest.fixture(params=RUNTIME_NAMES)
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> Inner:
    return Inner(tmp_path / "proj", str(request.param))


def test_ctrl_c_stops_everything(inner: Inner) -> None:
    proc = inner.popen("test_block.py")
    records = inner.wait_started(proc)
    assert len(records) == 2
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out = inner.finish(proc)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    inner.check_gone(records)


def test_killed_pytest_is_reaped_by_the_next_session(inner: Inner) -> None:
    proc = inner.popen("test_block.py")
    records = inner.wait_started(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()  # what it left may hold the pipe open: never read it to the end
    assert all(pid_alive(r["pid"]) for r in records)  # left behind by the killed run
    nxt = inner.popen("test_quick.py")
    out = inner.finish(nxt)
    assert nxt.returncode == 0, out
    inner.check_gone(records)


@pytest.mark.parametrize("inner", ["docker"], indirect=True)
def test_sigterm_stops_everything(inner: Inner) -> None:
    proc = inner.popen("test_block.py")
    records = inner.wait_started(proc)
    proc.send_signal(signal.SIGTERM)  # to pytest only (a CI runner's timeout)
    out = inner.finish(proc)
    assert "SIGTERM" in out
    inner.check_gone(records)


@pytest.mark.parametrize("inner", ["docker"], indirect=True)
def test_ctrl_c_under_xdist(inner: Inner) -> None:
    pytest.importorskip("xdist")
    (inner.path / "test_block2.py").write_text(BLOCKING_TEST)
    proc = inner.popen("-n", "2", "test_block.py", "test_block2.py")
    records = inner.wait_started(proc, count=2)
    assert len({r["name"] for r in records}) == 4
    os.killpg(proc.pid, signal.SIGINT)
    inner.finish(proc)
    inner.check_gone(records)


def test_killed_xdist_worker_is_reaped_by_the_next_session(inner: Inner) -> None:
    pytest.importorskip("xdist")
    (inner.path / "test_block2.py").write_text(BLOCKING_TEST)
    proc = inner.popen("-n", "2", "test_block.py", "test_block2.py")
    records = inner.wait_started(proc, count=2)
    worker = int(sorted(inner.path.glob("started.*"))[0].suffix[1:])
    victims = json.loads((inner.path / f"started.{worker}").read_text())
    os.kill(worker, signal.SIGKILL)  # the worker only: no teardown, no atexit
    time.sleep(1)
    assert all(pid_alive(r["pid"]) for r in victims)  # left behind by the killed worker
    os.killpg(proc.pid, signal.SIGINT)  # the rest of the run ends as usual
    out = inner.finish(proc)
    assert "crashed" in out or "node down" in out.lower(), out
    nxt = inner.popen("test_quick.py")
    out = inner.finish(nxt)
    assert nxt.returncode == 0, out
    inner.check_gone(records)
    names = Exact(inner.runtime, [r["name"] for r in records])
    assert leftovers(names, tuple(r["pid"] for r in records)) == []
