"""The host side of the agents' protocol (nspawn's and systemd-run's; see :mod:`.nspawn_agent`).

RUN is container-writable: the host holds descriptors of what it made there and never
resolves a path through it (:mod:`.shared_dir`).
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time
from pathlib import Path

from ..errors import ContainerStartError, ExecTimeout, ProbeError
from . import procs, shared_dir
from .base import ExecResult
from .oci.oci import BoundedBuffer

EOF_GRACE = 1.0  # seconds to wait for stdout/stderr EOF after the exit code came back
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK
REQ_FLAGS = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC


class AgentNotReady(ContainerStartError):
    """The container's agent never said it listens, and its main process did not exit."""


def nul_bytes(argv: list[str]) -> bytes:
    """``argv`` as the agent reads it, each argument NUL-terminated; raises ValueError when an
    argument contains a NUL byte (it would split in two)."""
    if any("\0" in a for a in argv):
        raise ValueError("an argument contains a NUL byte")
    return b"".join(a.encode() + b"\0" for a in argv)


class Request:
    """One exec's folder: made and opened in the host-only stage, then renamed into RUN."""

    def __init__(self, name: str, dir_fd: int) -> None:
        self.name = name
        self.dir_fd = dir_fd
        self.fds: dict[int, str] = {}

    def close(self) -> None:
        """Close the request's FIFO descriptors; ``dir_fd`` stays open for the caller, which removes
        the folder through it."""
        for fd in self.fds:
            os.close(fd)
        self.fds = {}


class AgentClient:
    """Talks to one container's agent through its run directory.

    Each request folder is built in
    ``stage`` (host-only, same file system) and renamed into RUN complete, with its FIFOs
    already open; a pid the container reports is killed only when it is a process of the
    container's own tree below its main process.
    """

    def __init__(self, runtime: str, run: Path, stage: Path | None = None) -> None:
        self.runtime = runtime
        self.run = run
        self.stage = stage if stage is not None else run.with_name(f"{run.name}.stage")
        self.owner: tuple[int, int] | None = None  # chown what the agent must open
        self._counter = 0
        self._req: int | None = None
        self._ready: int | None = None
        self._run_fd: int | None = None
        self._stage_fd: int | None = None
        self._req_path: int | None = None  # O_PATH descriptor of the req FIFO we made

    def prepare(self, prefix: list[str]) -> None:
        """Before the container starts: the run directory, its FIFOs and the prefix."""
        self.run.mkdir(mode=0o700)
        self.stage.mkdir(mode=0o700)
        self._run_fd = shared_dir.open_dir(str(self.run))
        self._stage_fd = shared_dir.open_dir(str(self.stage))
        shared_dir.write_new(self._run_fd, "prefix", nul_bytes(prefix))
        os.mkfifo("req", 0o600, dir_fd=self._run_fd)
        os.mkfifo("ready", 0o600, dir_fd=self._run_fd)
        self._req_path = os.open("req", PATH_FLAGS, dir_fd=self._run_fd)
        self._ready = shared_dir.open_in(self._run_fd, "ready", READ_FLAGS, stat.S_ISFIFO)

    def wait_ready(self, pidfd: int, timeout: float, argv: list[str]) -> bool:
        """True when the agent listens; False when the container exited first."""
        assert self._ready is not None
        assert self._req_path is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            r, _, _ = select.select([self._ready, pidfd], [], [], left)
            if self._ready in r and os.read(self._ready, 64):
                try:  # the FIFO made in prepare(), whatever the name "req" is now
                    self._req = os.open(f"/proc/self/fd/{self._req_path}", REQ_FLAGS)
                except OSError as exc:  # ENXIO: no reader, the payload exited at once
                    if exc.errno != errno.ENXIO:
                        raise
                    return False
                os.set_blocking(self._req, True)
                return True
            if pidfd in r:
                return False
        raise AgentNotReady(
            self.runtime, argv, None, f"agent not ready after {timeout}s ({self._run_state()})"
        )

    def _run_state(self) -> str:
        """The run folder as the agent must find it (owner and mode of each entry): what a
        stalled agent was waiting for."""
        if self._run_fd is None:
            return "run folder closed"
        parts = []
        for name in (".", "req", "ready", "prefix"):
            try:
                st = os.stat(name, dir_fd=self._run_fd, follow_symlinks=False)
            except OSError as exc:
                parts.append(f"{name}: {exc.strerror}")
                continue
            parts.append(f"{name} {st.st_uid}:{st.st_gid} {stat.filemode(st.st_mode)}")
        return "run folder: " + ", ".join(parts)

    def close(self) -> None:
        """Close every descriptor held on the run and stage folders and their FIFOs; idempotent. A
        later :meth:`exec` raises ProbeError (the container is stopped)."""
        for fd in (self._req, self._ready, self._req_path, self._run_fd, self._stage_fd):
            if fd is not None:
                os.close(fd)
        self._req = self._ready = self._req_path = self._run_fd = self._stage_fd = None

    def exec(
        self, argv: list[str], timeout: float, main_pid: int, as_root: bool = False
    ) -> ExecResult:
        """Run ``argv``; on a timeout kill it (``main_pid``: the container's main process).
        ``as_root``: without the user switch, as the agent itself (nspawn: the container's
        root; how the probe takes on another process's identity with setpriv)."""
        if self._req is None:
            raise ProbeError(self.runtime, "the container is stopped")
        req = self._request(argv, as_root)
        try:
            try:
                os.write(self._req, f"{req.name}\n".encode())
            except OSError as exc:
                raise ProbeError(self.runtime, f"the agent is gone ({exc})") from None
            bufs = {"out": BoundedBuffer(), "err": BoundedBuffer(), "rc": BoundedBuffer(64)}
            if not self._pump(req.fds, bufs, time.monotonic() + timeout):
                self._kill(req, bufs, main_pid)
                raise ExecTimeout(self.runtime, argv, timeout)
            return self._result(bufs)
        finally:
            req.close()
            assert self._run_fd is not None
            shared_dir.remove_if_same(self._run_fd, req.name, req.dir_fd)
            os.close(req.dir_fd)

    def _request(self, argv: list[str], as_root: bool = False) -> Request:
        """The request folder, complete and open, renamed from the stage into RUN."""
        assert self._stage_fd is not None
        assert self._run_fd is not None
        data = nul_bytes(argv)
        self._counter += 1
        name = str(self._counter)
        os.mkdir(name, 0o700, dir_fd=self._stage_fd)
        req = Request(name, shared_dir.open_dir(name, self._stage_fd))
        try:
            shared_dir.write_new(req.dir_fd, "argv", data, self.owner)
            if as_root:
                shared_dir.write_new(req.dir_fd, "root", b"", self.owner)
            for fifo in ("out", "err", "rc"):
                os.mkfifo(fifo, 0o600, dir_fd=req.dir_fd)
                fd = shared_dir.open_in(req.dir_fd, fifo, READ_FLAGS, stat.S_ISFIFO)
                req.fds[fd] = fifo
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
            if self.owner is not None:
                os.fchown(req.dir_fd, *self.owner)
            try:
                os.rename(name, name, src_dir_fd=self._stage_fd, dst_dir_fd=self._run_fd)
            except OSError as exc:
                raise ProbeError(
                    self.runtime, f"request folder {name} was planted in the agent folder ({exc})"
                ) from None
        except BaseException:
            req.close()
            shared_dir.remove_if_same(self._stage_fd, name, req.dir_fd)
            os.close(req.dir_fd)
            raise
        return req

    def _result(self, bufs: dict[str, BoundedBuffer]) -> ExecResult:
        rc_text = bufs["rc"].text().strip()
        rc = int(rc_text) if rc_text.isdigit() else -1
        return ExecResult(rc, bufs["out"].text(), bufs["err"].text())

    def _reported_pid(self, req: Request, bufs: dict[str, BoundedBuffer]) -> int | None:
        """The command's pid as the agent wrote it (in the container's pid namespace)."""
        for _ in range(50):
            text = shared_dir.read_small(req.dir_fd, "pid", 32)
            if text is not None and text.strip().isdigit():
                return int(text.strip())
            time.sleep(0.01)
        return None

    def _kill(self, req: Request, bufs: dict[str, BoundedBuffer], main_pid: int) -> None:
        """Kill the timed-out command and its handler subshell: the pid comes from the
        container, so only a process below ``main_pid`` (on the host) is ever killed."""
        inner = self._reported_pid(req, bufs)
        if inner is None or main_pid <= 0:
            return
        cmd = procs.find_inner(main_pid, inner)
        if cmd is None:
            return
        parent = procs.parent(cmd)
        procs.kill_tree(cmd)
        if parent is not None and parent in procs.descendants(main_pid):
            procs.kill_tree(parent)  # the agent's handler subshell

    @staticmethod
    def _pump(fds: dict[int, str], bufs: dict[str, BoundedBuffer], deadline: float) -> bool:
        """Read until every FIFO hit EOF; False on timeout."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        open_fds = set(fds)
        rc_at: float | None = None
        while open_fds:
            now = time.monotonic()
            if now >= deadline:
                return False
            if rc_at is not None and now - rc_at > EOF_GRACE:
                return True  # a background child keeps stdout open: docker would wait
            wait = min(deadline, rc_at + EOF_GRACE if rc_at else deadline) - now
            for fd, ev in poller.poll(max(1, int(wait * 1000))):
                chunk = os.read(fd, 65536) if ev & (select.POLLIN | select.POLLHUP) else b""
                if chunk:
                    bufs[fds[fd]].add(chunk)
                elif ev & (select.POLLHUP | select.POLLERR | select.POLLIN):
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    if fds[fd] == "rc":
                        rc_at = time.monotonic()
        return True
