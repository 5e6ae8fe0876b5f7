"""runtimes.procs: host-process helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pytest_containersec.linux import session
from pytest_containersec.runtimes.procs import kill_and_wait, tool_output, wait, wait_past


def test_tool_output_never_raises_for_a_missing_or_slow_tool() -> None:
    assert tool_output(["/bin/echo", "systemd 257"]) == "systemd 257\n"
    assert tool_output(["/no/such/tool", "--version"]) == ""
    assert tool_output(["/bin/sleep", "5"], timeout=0.2) == ""  # a loaded host's slow tool


def _spawn(script: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    return proc, session.owner_token(proc.pid)


def test_wait_past_returns_only_once_the_wrapper_has_execd() -> None:
    proc, token = _spawn("sleep 0.3; exec sleep 30")
    try:
        wait_past(proc.pid, token, [["/bin/sh", "-c"]], timeout=10)
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes() == b"sleep\0" + b"30\0"
    finally:
        proc.kill()
        proc.wait()


def test_wait_past_returns_when_the_wrapper_ends_and_times_out_when_it_stays() -> None:
    proc, token = _spawn("exit 3")
    proc.wait()
    wait_past(proc.pid, token, [["/bin/sh", "-c"]], timeout=10)  # ended: returns
    proc, token = _spawn("sleep 30; exit 0")
    try:
        with pytest.raises(TimeoutError, match="still runs '/bin/sh'"):
            wait_past(proc.pid, token, [["/bin/sh", "-c"]], timeout=0.2)
    finally:
        proc.kill()
        proc.wait()


def test_wait_past_waits_while_the_oci_runtime_has_not_execd(tmp_path: Path) -> None:
    runc = tmp_path / "runc"  # comm "runc": an OCI runtime's child before its execve
    runc.write_bytes(Path("/bin/sleep").read_bytes())
    runc.chmod(0o755)
    proc = subprocess.Popen([str(runc), "30"], start_new_session=True)
    try:
        with pytest.raises(TimeoutError, match=r"pid \d+, runc\)"):
            wait_past(proc.pid, session.owner_token(proc.pid), [], timeout=0.2)
    finally:
        proc.kill()
        proc.wait()


def test_wait_returns_the_status_once_the_process_exits_and_times_out_while_it_runs() -> None:
    quick = subprocess.Popen(["sh", "-c", "exit 3"])
    assert wait(quick, 10) == 3
    assert wait(quick, 10) == 3  # reaped already: answered without its (reusable) pid
    slow = subprocess.Popen(["sleep", "30"])
    t = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        wait(slow, 0.2)
    assert 0.2 <= time.monotonic() - t < 5
    slow.kill()
    assert wait(slow, 10) == -9


def test_kill_and_wait_kills_only_the_named_parents_child_and_waits_for_its_exit() -> None:
    proc, _ = _spawn("exec sleep 30")
    try:
        assert kill_and_wait(proc.pid, proc.pid + 1, timeout=5) is True  # not that parent's
        assert proc.poll() is None  # so left alone
        assert kill_and_wait(proc.pid, os.getpid(), timeout=5) is True
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert stat[stat.rfind(")") + 2] == "Z"  # exited before it returned, not yet reaped
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert kill_and_wait(proc.pid, os.getpid(), timeout=5) is True  # reaped: nothing to do
