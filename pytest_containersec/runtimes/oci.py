"""Pieces shared by the engine adapters (docker, podman): main process, exec, waiting."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from ..errors import ContainerStartError, ExecTimeout
from ..spec import ContainerSpec
from .base import MAX_OUTPUT, PROBE_BUSYBOX, ExecResult

# The idle main process used when the spec names no command: the probe's own busybox,
# so the container stays up on any image (scratch and distroless included).
IDLE_ENTRYPOINT = [PROBE_BUSYBOX]
IDLE_COMMAND = ["sleep", "2147483647"]
TIMEOUT_RC = 137  # busybox `timeout -s KILL` exit status when it killed the command
START_WAIT = 0.05  # seconds a fresh container must survive to count as started


def entrypoint_and_command(spec: ContainerSpec) -> tuple[list[str] | None, list[str]]:
    """(entrypoint override or None to keep the image's, command)."""
    if spec.command:
        return None, list(spec.command)
    return list(IDLE_ENTRYPOINT), list(IDLE_COMMAND)


def wrap_with_timeout(argv: list[str], timeout: float) -> list[str]:
    """Run ``argv`` under the probe busybox's ``timeout``: the kill happens inside."""
    secs = max(1, math.ceil(timeout))
    return [PROBE_BUSYBOX, "timeout", "-s", "KILL", str(secs), *argv]


class BoundedBuffer:
    """Collects output up to MAX_OUTPUT bytes, drains (and counts) the rest."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, chunk: bytes | None) -> None:
        if not chunk:
            return
        room = self.limit - self.size
        if room > 0:
            self.parts.append(chunk[:room])
            self.size += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = b"".join(self.parts).decode("utf-8", "replace")
        if self.dropped:
            out += f"\n[containersec: {self.dropped} more bytes dropped]"
        return out


def run_exec(
    runtime: str,
    argv: list[str],
    timeout: float,
    stream: Callable[[], Iterable[tuple[bytes | None, bytes | None]]],
    exit_code: Callable[[], int | None],
    kill: Callable[[], None],
) -> ExecResult:
    """Drive one exec: ``stream`` yields (stdout, stderr) chunks; bounded and timed.

    The command already runs under busybox ``timeout`` inside; the thread join below is
    the backstop for an engine that hangs (then ``kill`` ends the exec from the host).
    """
    out, err = BoundedBuffer(), BoundedBuffer()
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            for o, e in stream():
                out.add(o)
                err.add(e)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    t = threading.Thread(target=pump, daemon=True, name=f"containersec-exec-{runtime}")
    t.start()
    t.join(timeout + 5)
    if t.is_alive():
        kill()
        t.join(5)
        raise ExecTimeout(runtime, argv, timeout)
    if failure:
        raise failure[0]
    rc = exit_code()
    for _ in range(50):  # the engine may report the exit code a moment after EOF
        if rc is not None:
            break
        time.sleep(0.02)
        rc = exit_code()
    if rc == TIMEOUT_RC and argv[:2] == [PROBE_BUSYBOX, "timeout"]:
        raise ExecTimeout(runtime, argv[5:], timeout)
    return ExecResult(rc if rc is not None else -1, out.text(), err.text())


def check_running(
    runtime: str,
    argv: list[str],
    status: Callable[[], tuple[bool, int | None]],
    logs: Callable[[], str],
) -> None:
    """Raise ContainerStartError if the container's main process exited right away."""
    deadline = time.monotonic() + START_WAIT
    while True:
        running, code = status()
        if not running:
            raise ContainerStartError(
                runtime,
                argv,
                code,
                "the container's main process exited at once; output:\n" + logs(),
            )
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)
