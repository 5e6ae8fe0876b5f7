"""The host side of the Podman adapters: can this host run Podman (rootless: as whom, with
which sub-ids), and the ``podman system service`` they talk to: find one, or start one.

A service that already answers at the default socket is used and left alone. Otherwise
this process starts its own on a socket unique to its session (xdist workers never
collide), as the unprivileged user for rootless Podman, records its pid and our owner
token in a state file next to the socket (so a later session reaps it if we are killed),
and stops it in :meth:`PodmanService.stop`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import hostinfo, session
from ..errors import RuntimeUnavailable
from . import procs

ROOTFUL_SOCKET = Path("/run/podman/podman.sock")
ROOTFUL_RUN_DIR = Path("/run/containersec")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STATE_GLOB = "podman-*.json"
_SERVICE_NUMBERS = itertools.count(1)


@dataclass(frozen=True)
class ServiceUser:
    """Who runs the service. ``drop``: we are root and must switch to this user."""

    name: str
    uid: int
    gid: int
    home: str
    runtime_dir: Path
    drop: bool

    @classmethod
    def for_mode(cls, rootless: bool) -> ServiceUser | None:
        """None for rootful Podman (the service runs as root, i.e. as us)."""
        if not rootless:
            return None
        pw = hostinfo.rootless_user()
        drop = os.geteuid() == 0
        env_dir = os.environ.get("XDG_RUNTIME_DIR")
        if not drop and env_dir:
            runtime_dir = Path(env_dir)
        elif drop or Path(f"/run/user/{pw.pw_uid}").is_dir():
            runtime_dir = Path(f"/run/user/{pw.pw_uid}")
        else:  # an unprivileged user without a login session
            runtime_dir = Path(tempfile.gettempdir()) / f"containersec-run-{pw.pw_uid}"
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, runtime_dir, drop)

    def env(self) -> dict[str, str]:
        if not self.drop:
            return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir)}
        return {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": SAFE_PATH,
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
        }

    def make_dir(self, path: Path) -> None:
        """Create ``path`` (mode 0700) owned by this user."""
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.drop:
            os.chown(path, self.uid, self.gid)


def default_socket(user: ServiceUser | None) -> Path:
    """Where a system-wide (or the user's own) service listens by default."""
    if user is None:
        return ROOTFUL_SOCKET
    return user.runtime_dir / "podman" / "podman.sock"


def run_dir(user: ServiceUser | None) -> Path:
    """Where the services this package starts keep socket, log and state file."""
    if user is None:
        return ROOTFUL_RUN_DIR
    return user.runtime_dir / "containersec"


def answers(sock: Path, timeout: float = 2.0) -> bool:
    """Whether a Podman (or Docker-compatible) API answers ``/_ping`` on ``sock``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


class PodmanService:
    """A service socket; ``owned`` when this process started it (and must stop it)."""

    def __init__(
        self,
        runtime: str,
        sock: Path,
        proc: subprocess.Popen[bytes] | None = None,
        state: Path | None = None,
        log: Path | None = None,
    ) -> None:
        self.runtime = runtime
        self.socket = sock
        self._proc = proc
        self.state = state
        self.log = log

    @property
    def owned(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http+unix://{self.socket}"

    @classmethod
    def ensure(cls, runtime: str, rootless: bool, oci_runtime: str | None = None) -> PodmanService:
        """The default service if one answers, else one this process starts and owns.
        ``oci_runtime``: always a service of our own with that default OCI runtime (the
        API's per-container ``oci_runtime`` is ignored by Podman 4.3, measured)."""
        user = ServiceUser.for_mode(rootless)
        sock = default_socket(user)
        if oci_runtime is None and answers(sock):
            return cls(runtime, sock)
        return cls._start(runtime, user, oci_runtime)

    @classmethod
    def _start(
        cls, runtime: str, user: ServiceUser | None, oci_runtime: str | None = None
    ) -> PodmanService:
        directory = run_dir(user)
        try:
            if user is not None:
                if user.drop and not user.runtime_dir.is_dir():
                    user.make_dir(user.runtime_dir)
                user.make_dir(directory)
            else:
                directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeUnavailable(
                runtime, f"cannot create {directory}: {exc}", "run the project setup (make setup)"
            ) from None
        # one name per service: two adapters of one process must not share (and unlink)
        # each other's socket
        base = directory / f"podman-{session.current().id}-{next(_SERVICE_NUMBERS)}"
        sock, log, state = (base.with_suffix(s) for s in (".sock", ".log", ".json"))
        sock.unlink(missing_ok=True)
        argv = ["podman", "system", "service", "--time=0", f"unix://{sock}"]
        if oci_runtime is not None:
            argv[1:1] = [f"--runtime={oci_runtime}"]
        with open(log, "wb") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    env=user.env() if user is not None else None,
                    start_new_session=True,  # Ctrl-C must not kill it before close() cleans up
                    user=user.uid if user is not None and user.drop else None,
                    group=user.gid if user is not None and user.drop else None,
                    extra_groups=_extra_groups(user),
                )
            except OSError as exc:
                raise RuntimeUnavailable(
                    runtime, f"cannot run {argv[0]}: {exc}", "apt-get install podman"
                ) from None
        svc = cls(runtime, sock, proc, state, log)
        svc._write_state()
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(sock, timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                what = (
                    "exited" if proc.poll() is not None else f"did not answer in {START_TIMEOUT:g}s"
                )
                tail = procs.tail(log)
                svc.stop(keep_log=True)
                raise RuntimeUnavailable(
                    runtime,
                    f"{' '.join(argv)} {what}; log {log}:\n{tail}",
                    "check `podman info` as that user; run the project setup (make setup)",
                )
            time.sleep(0.02)
        return svc

    def _write_state(self) -> None:
        assert self._proc is not None
        assert self.state is not None
        record = {
            "pid": self._proc.pid,
            "token": session.owner_token(self._proc.pid),
            "owner": session.current().owner,
            "socket": str(self.socket),
            "log": str(self.log),
        }
        self.state.write_text(json.dumps(record))

    def stop(self, keep_log: bool = False) -> None:
        """Stop the service if this process started it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        for path in (self.socket, self.state, None if keep_log else self.log):
            if path is not None:
                path.unlink(missing_ok=True)


def _extra_groups(user: ServiceUser | None) -> list[int] | None:
    """The user's supplementary groups when we switch to it (None: keep ours)."""
    if user is None or not user.drop:
        return None
    return os.getgrouplist(user.name, user.gid)


def reap_services(rootless: bool) -> int:
    """Stop services whose owning session is dead; remove their files. Returns the count."""
    try:
        user = ServiceUser.for_mode(rootless)
    except RuntimeUnavailable:
        return 0
    n = 0
    for state in sorted(run_dir(user).glob(STATE_GLOB)):
        try:
            record = json.loads(state.read_text())
            pid, token, owner = int(record["pid"]), str(record["token"]), str(record["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if session.owner_alive(owner):
            continue
        if procs.running(pid, token) and procs.terminate(pid, token):
            n += 1
        for key in ("socket", "log"):
            if isinstance(record.get(key), str) and record[key].startswith(str(state.parent)):
                Path(record[key]).unlink(missing_ok=True)
        state.unlink(missing_ok=True)
    return n


@dataclass(frozen=True)
class RootlessIds:
    """The rootless user's own ids and sub-id ranges (``(start, count)``)."""

    uid: int
    gid: int
    subuid: tuple[int, int]
    subgid: tuple[int, int]


def check_host(runtime: str, rootless: bool) -> RootlessIds | None:
    """Raise RuntimeUnavailable with the fix when this host cannot run the engine.

    Returns the rootless user's ids and sub-id ranges (None for rootful Podman).
    """
    if shutil.which("podman") is None:
        raise RuntimeUnavailable(runtime, "podman is not installed", "apt-get install podman")
    hostinfo.static_busybox()
    if not rootless:
        if os.geteuid() != 0 and not answers(ROOTFUL_SOCKET):
            raise RuntimeUnavailable(
                runtime, "rootful Podman needs root", "run as root, or use podman-rootless"
            )
        return None
    pw = hostinfo.rootless_user()
    ranges = []
    for kind in ("subuid", "subgid"):
        found = hostinfo.subid_range(pw.pw_name, f"/etc/{kind}")
        if found is None:
            raise RuntimeUnavailable(
                runtime, f"user {pw.pw_name} has no {kind} range in /etc/{kind}", "run make setup"
            )
        ranges.append(found)
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None and shutil.which(tool, path=SAFE_PATH) is None:
            raise RuntimeUnavailable(runtime, f"{tool} is missing", "apt-get install uidmap")
    return RootlessIds(pw.pw_uid, pw.pw_gid, ranges[0], ranges[1])


def version_line() -> str:
    """``Podman 4.3.1`` from the CLI (no service needed)."""
    try:
        out = subprocess.run(
            ["podman", "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "Podman (unknown version)"
    return f"Podman {out.split()[-1]}" if out.split() else "Podman (unknown version)"
