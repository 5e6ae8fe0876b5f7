"""The host side of the Podman adapters: can this host run Podman (rootless: as whom, with
which sub-ids), and the ``podman system service`` they talk to: find one, or start one.

A service that already answers at the default socket is used and left alone. Otherwise
this process starts its own on a socket unique to its session (xdist workers never
collide), as the unprivileged user for rootless Podman, records its pid and our owner
token in a state file (so a later session reaps it if we are killed), and stops it in
:meth:`PodmanService.stop`.

Run as root for rootless Podman, the state file and the log live in a folder only root
can write (:func:`run_dir`); only the socket, which the service itself creates, is in the
user's folder (:func:`socket_dir`), and root touches that folder only through
:mod:`.host_files` (never following what the user planted there).
"""

from __future__ import annotations

import functools
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

from ...errors import RuntimeUnavailable
from ...linux import hostinfo, session
from .. import host_files, procs
from ..oci.oci_variants import GVISOR, GVISOR_FLAGS

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
        """The service's environment: ours with XDG_RUNTIME_DIR set to the user's, or, when we
        switch to the user, a minimal login environment (safe PATH, none of our variables)."""
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
        """Create ``path`` (mode 0700) owned by this user: its runtime folder, or a folder
        in it (handed over by descriptor; a symlink the user planted is never followed)."""
        base = path.parent if path == self.runtime_dir else self.runtime_dir
        base.mkdir(mode=0o755, parents=True, exist_ok=True)
        host_files.user_dir(base, path, self.uid, self.gid)

    def prepare(self) -> None:
        """Its runtime folder (if we create it for the user) and its containersec folder."""
        if not self.runtime_dir.is_dir() or self.drop:
            self.make_dir(self.runtime_dir)
        self.make_dir(socket_dir(self))


def default_socket(user: ServiceUser | None) -> Path:
    """Where a system-wide (or the user's own) service listens by default."""
    if user is None:
        return ROOTFUL_SOCKET
    return user.runtime_dir / "podman" / "podman.sock"


def run_dir(user: ServiceUser | None) -> Path:
    """Where the services this package starts keep their log and state file: a folder only
    root writes when we are root (for a rootless service too), else the user's own."""
    if user is None:
        return ROOTFUL_RUN_DIR
    if user.drop:
        return ROOTFUL_RUN_DIR / f"rootless-{user.uid}"
    return user.runtime_dir / "containersec"


def socket_dir(user: ServiceUser | None) -> Path:
    """Where the services this package starts create their sockets (the user's folder)."""
    return ROOTFUL_RUN_DIR if user is None else user.runtime_dir / "containersec"


def trusted_base(user: ServiceUser | None) -> Path:
    """The folder below which paths of :func:`socket_dir` are walked without following
    symlinks (its own parent is root's: the user cannot replace it)."""
    return ROOTFUL_RUN_DIR if user is None else user.runtime_dir


def prepare_dirs(user: ServiceUser | None) -> None:
    """Create the record and socket folders; raise :class:`host_files.Tampered` (an
    OSError) when one is not what it must be."""
    if user is None:
        host_files.private_dir(ROOTFUL_RUN_DIR)
        return
    user.prepare()
    if user.drop:
        host_files.private_dir(run_dir(user))


def answers(sock: Path, timeout: float = 2.0, owner: int | None = None) -> bool:
    """Whether a Podman (or Docker-compatible) API answers ``/_ping`` on ``sock``.

    ``owner``: the socket must be one of that uid's, not a symlink to another's (a rootless
    user must not point root at the rootful engine's socket)."""
    if owner is not None and not host_files.socket_owned_by(sock, owner):
        return False
    return ping_headers(sock, timeout) is not None


def ping_headers(sock: Path, timeout: float = 2.0) -> dict[str, str] | None:
    """The headers (names in lower case) of a Docker-compatible engine's ``/_ping`` answer,
    or None when it does not answer 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return None
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if not lines[0].startswith(("HTTP/1.0 200", "HTTP/1.1 200")):
        return None
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers


def ping_api_version(sock: Path, timeout: float = 2.0) -> str | None:
    """The API version a Docker-compatible engine names in its ``/_ping`` headers, or None.

    Clients that pass it need no ``/version`` request: rootless Docker 26 with RootlessKit's
    host network and no port driver panics serving ``/version`` (a nil port driver in
    ``fillRootlessVersion``, moby#47085), so docker-py's ``version="auto"`` cannot connect."""
    headers = ping_headers(sock, timeout)
    return (headers or {}).get("api-version") or None


class PodmanService:
    """A service socket; ``owned`` when this process started it (and must stop it)."""

    def __init__(
        self,
        runtime: str,
        sock: Path,
        proc: subprocess.Popen[bytes] | None = None,
        state: Path | None = None,
        log: Path | None = None,
        user: ServiceUser | None = None,
    ) -> None:
        self.runtime = runtime
        self.socket = sock
        self._proc = proc
        self.state = state
        self.log = log
        self.user = user

    @property
    def owned(self) -> bool:
        """This process started the service (and stop() ends it)."""
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        """The pid of the service this process started; None for one found answering, or once
        stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        """The API URL for podman-py (``http+unix://`` and the socket path)."""
        return f"http+unix://{self.socket}"

    @classmethod
    def ensure(cls, runtime: str, rootless: bool, oci_runtime: str | None = None) -> PodmanService:
        """The default service if one answers, else one this process starts and owns.
        ``oci_runtime``: always a service of our own with that default OCI runtime (the
        API's per-container ``oci_runtime`` is ignored by Podman 4.3, measured)."""
        user = ServiceUser.for_mode(rootless)
        sock = default_socket(user)
        if oci_runtime is None and answers(sock, owner=None if user is None else user.uid):
            return cls(runtime, sock)
        return cls._start(runtime, user, oci_runtime)

    @classmethod
    def _start(
        cls, runtime: str, user: ServiceUser | None, oci_runtime: str | None = None
    ) -> PodmanService:
        try:
            prepare_dirs(user)
        except OSError as exc:
            raise RuntimeUnavailable(
                runtime, f"cannot prepare {run_dir(user)}: {exc}", "run the setup (make setup)"
            ) from None
        # one name per service: two adapters of one process must not share (and unlink)
        # each other's socket
        name = f"podman-{session.current().id}-{next(_SERVICE_NUMBERS)}"
        sock = socket_dir(user) / f"{name}.sock"
        log, state = run_dir(user) / f"{name}.log", run_dir(user) / f"{name}.json"
        host_files.unlink_below(trusted_base(user), sock)
        argv = ["podman", "system", "service", "--time=0", f"unix://{sock}"]
        if oci_runtime is not None:
            argv[1:1] = [f"--runtime={oci_runtime}"]
            if oci_runtime == GVISOR:  # see oci_variants: runsc's own netstack refuses
                argv[2:2] = [f"--runtime-flag={f.lstrip('-')}" for f in GVISOR_FLAGS]
        with open(host_files.open_log(log), "wb") as out:
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
        svc = cls(runtime, sock, proc, state, log, user)
        svc._write_state()
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(sock, timeout=1.0, owner=None if user is None else user.uid):
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
        host_files.write_private(self.state, json.dumps(record).encode())

    def stop(self, keep_log: bool = False) -> None:
        """Stop the service if this process started it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                procs.wait(proc, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        host_files.unlink_below(trusted_base(self.user), self.socket)
        for path in (self.state, None if keep_log else self.log):
            if path is not None:
                path.unlink(missing_ok=True)


def _extra_groups(user: ServiceUser | None) -> list[int] | None:
    """The user's supplementary groups when we switch to it (None: keep ours)."""
    if user is None or not user.drop:
        return None
    return os.getgrouplist(user.name, user.gid)


def own_file(state: Path, recorded: object, folder: Path | None = None) -> Path | None:
    """``recorded`` if it names a file of this service (its name starts with the state
    file's) in ``folder`` (default: beside the state file), else None.

    Defence in depth: a record is only read from a folder only root writes, but a path like
    ``DIR/../../etc/shadow`` must never be unlinked whatever the record says.
    """
    if not isinstance(recorded, str):
        return None
    path = Path(recorded)
    if path.parent != (folder or state.parent) or path.name in ("", ".", ".."):
        return None
    if not path.name.startswith(state.stem):
        return None
    return path


def reap_services(rootless: bool) -> int:
    """Stop services whose owning session is dead; remove their files. Returns the count."""
    try:
        user = ServiceUser.for_mode(rootless)
    except RuntimeUnavailable:
        return 0
    n = 0
    records = run_dir(user)
    if user is not None and user.drop:
        try:  # a folder the rootless user made in our place is not read
            host_files.private_dir(records)
        except OSError:
            return 0
    for state in sorted(records.glob(STATE_GLOB)):
        try:
            record = json.loads(host_files.read_small(state) or b"")
            pid, token, owner = int(record["pid"]), str(record["token"]), str(record["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if session.owner_alive(owner):
            continue
        if procs.running(pid, token) and procs.terminate(pid, token):
            n += 1
        sock = own_file(state, record.get("socket"), socket_dir(user))
        if sock is not None:
            host_files.unlink_below(trusted_base(user), sock)
        log = own_file(state, record.get("log"))
        if log is not None:
            log.unlink(missing_ok=True)
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


@functools.cache
def version_line() -> str:
    """``Podman 4.3.1`` from the CLI (no service needed); once per process (each run of the
    CLI is ~30 ms of CPU, and availability() asks before and after the warm-up's reap)."""
    try:
        out = subprocess.run(
            ["podman", "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "Podman (unknown version)"
    return f"Podman {out.split()[-1]}" if out.split() else "Podman (unknown version)"
