"""The second dockerds behind ``docker-userns`` and ``docker-rootless``.

Each runtime has one fixed socket. A daemon that already answers there is used as it is.
Otherwise the first session that needs it starts one (own session and process group, so
a Ctrl-C aimed at pytest does not kill it before close() cleans up), records its pid and
pid token in a state file, and every session that uses it holds a *lease* (a file named
after its owner token). close() drops the lease; the last live lease holder stops the
daemon and removes its socket, pid file, exec root and state. Leases let xdist workers
share one daemon (one data root cannot serve two daemons) without one worker stopping it
under the other. A killed session leaves a dead lease: :meth:`DockerDaemon.reap` (or the
next session's close) stops the orphan. The setup script holds a lease for its own shell
while it imports the images (``python3 -m pytest_containersec.runtimes.docker.docker_daemons``).

- ``docker-userns``: ``dockerd --userns-remap=default`` as root, files under
  /run/containersec and data root /var/lib/containersec/docker-userns.
- ``docker-rootless``: dockerd-rootless.sh (rootlesskit) as the unprivileged user with
  rootless Docker's default socket, data root and exec root, host network (slirp4netns
  needs /dev/net/tun) and no port driver. Its lock, log, state, leases and daemon.json
  live in a folder only root writes (/run/containersec/rootless-UID, when we are root):
  the user, who owns everything in its runtime folder, can neither forge the record whose
  pid root stops nor plant a symlink where root writes. Only what the daemon itself
  creates (socket, pid file, exec root, rootlesskit's state) is in the user's folder, and
  root touches it through :mod:`.host_files`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import RuntimeUnavailable
from ...linux import hostinfo, session
from .. import host_files, procs
from ..base import Availability
from ..podman import podman_service as svc

USERNS, ROOTLESS = "docker-userns", "docker-rootless"
START_TIMEOUT = 60.0
ROOTLESS_SCRIPTS = (
    "dockerd-rootless.sh",
    "/usr/share/docker.io/contrib/dockerd-rootless.sh",  # Debian/Ubuntu docker.io
    "/usr/bin/dockerd-rootless.sh",  # docker-ce-rootless-extras
)
COMMON_FLAGS = ("--bridge=none", "--iptables=false", "--ip-masq=false", "--shutdown-timeout=2")
SETUP_HINT = "run the project setup (make setup)"
# Where a system containerd runs (trixie's docker.io uses it when it is there), a second
# dockerd must not share the main one's containerd namespace: each daemon deletes the
# tasks it does not know in its namespace (moby#41640).
CONTAINERD_NAMESPACES = ("--containerd-namespace=containersec-userns",
                         "--containerd-plugins-namespace=containersec-userns-plugins")  # fmt: skip


@dataclass(frozen=True)
class DaemonConfig:
    """Where one daemon lives and how it is started (``run_dir``: state, lock, leases, log,
    written by us alone; ``user_dir``: the rootless user's folder for what the daemon
    creates; ``base``: a trusted folder above the daemon's own files, below which no
    symlink is followed)."""

    runtime: str
    rootless: bool
    socket: Path
    run_dir: Path
    pidfile: Path
    argv: tuple[str, ...]
    env: dict[str, str] | None = None
    user: svc.ServiceUser | None = None
    # removed after a stop when nothing is mounted there, with dockerd's remapped copies
    # (``<exec-root>.<uid>.<gid>``)
    cleanup_dirs: tuple[Path, ...] = ()
    require: Callable[[], None] = field(default=lambda: None, compare=False)
    user_dir: Path | None = None
    base: Path | None = None

    @property
    def trusted(self) -> Path:
        """The folder below which no symlink is followed when we touch the daemon's files: ``base``,
        else ``run_dir``."""
        return self.base or self.run_dir

    @property
    def socket_owner(self) -> int | None:
        """The uid whose socket we talk to (None: ours, in a folder of ours)."""
        return self.user.uid if self.user is not None else None

    # whether the API answers on the socket (containerd speaks gRPC, not HTTP/1)
    answers: Callable[[Path, float], bool] = field(default=svc.answers, compare=False)

    def path(self, suffix: str) -> Path:
        """``run_dir/<runtime><suffix>``: the files only we write (``.json`` record, ``.lock``,
        ``.leases``, ``.log``, ``.daemon.json``)."""
        return self.run_dir / f"{self.runtime}{suffix}"


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=svc.SAFE_PATH)


def _require(runtime: str, tools: tuple[tuple[str, str], ...]) -> None:
    for tool, package in tools:
        if _which(tool) is None and not Path(tool).is_file():
            raise RuntimeUnavailable(runtime, f"{tool} is missing", f"apt-get install {package}")


def userns_config() -> DaemonConfig:
    """``docker-userns``: root's ``dockerd --userns-remap=default``, socket, pid file and exec root
    under /run/containersec, its own data root under the state folder."""
    run = svc.ROOTFUL_RUN_DIR
    base = run / "docker-userns"

    def require() -> None:
        _require(USERNS, (("dockerd", "docker.io"),))
        if os.geteuid() != 0:
            raise RuntimeUnavailable(USERNS, "its daemon runs as root", "run as root")

    argv = (_which("dockerd") or "dockerd", f"--host=unix://{base}.sock",
            f"--data-root={session.STATE_DIR / 'docker-userns'}", f"--exec-root={base}-exec",
            f"--pidfile={base}.pid", f"--config-file={base}.daemon.json",
            "--userns-remap=default", "--ip-forward=false", *CONTAINERD_NAMESPACES,
            *COMMON_FLAGS)  # fmt: skip
    return DaemonConfig(USERNS, False, Path(f"{base}.sock"), run, Path(f"{base}.pid"), argv,
                        cleanup_dirs=(Path(f"{base}-exec"),), require=require)  # fmt: skip


def rootless_config() -> DaemonConfig:
    """``docker-rootless``: dockerd-rootless.sh as the rootless user, on rootless Docker's default
    socket, data root and exec root. Raises RuntimeUnavailable when the host has no rootless user;
    its ``require`` checks the tools and the user's sub-id ranges."""
    try:
        user = svc.ServiceUser.for_mode(True)
    except RuntimeUnavailable as exc:
        raise RuntimeUnavailable(ROOTLESS, exc.reason, exc.hint) from None
    assert user is not None
    xdg, run, own = user.runtime_dir, svc.run_dir(user), svc.socket_dir(user)
    script = next((s for s in map(_which, ROOTLESS_SCRIPTS) if s), ROOTLESS_SCRIPTS[1])

    def require() -> None:
        _require(ROOTLESS, (("dockerd", "docker.io"), ("rootlesskit", "rootlesskit"),
                            ("newuidmap", "uidmap"), ("newgidmap", "uidmap"),
                            (script, "docker.io")))  # fmt: skip
        for kind in ("subuid", "subgid"):
            if hostinfo.subid_range(user.name, f"/etc/{kind}") is None:
                why = f"{user.name} has no /etc/{kind} range"
                raise RuntimeUnavailable(ROOTLESS, why, SETUP_HINT)

    kit = own / "docker-rootless-kit"  # rootlesskit's state (else a temp dir left if killed)
    # "container" set: moby's apparmor.HostSupports() is false, as for Docker-in-Docker.
    # Rootless Docker cannot use AppArmor (its daemon info lists none), yet on an AppArmor
    # host Docker 26 still checks /sys/kernel/security/apparmor/profiles for docker-default
    # before every start, which its user namespace may not read: every start failed.
    env = {**user.env(), "container": "rootless-docker", "DOCKERD_ROOTLESS_ROOTLESSKIT_NET": "host",
           "DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER": "none",
           "DOCKERD_ROOTLESS_ROOTLESSKIT_FLAGS": f"--state-dir={kit}"}  # fmt: skip
    argv = (script, f"--host=unix://{xdg / 'docker.sock'}",
            f"--data-root={Path(user.home) / '.local/share/docker'}",
            f"--exec-root={xdg / 'docker'}", f"--pidfile={xdg / 'docker.pid'}",
            f"--config-file={run / 'docker-rootless.daemon.json'}", *COMMON_FLAGS)  # fmt: skip
    return DaemonConfig(ROOTLESS, True, xdg / "docker.sock", run, xdg / "docker.pid", argv, env,
                        user, (xdg / "docker", kit), require, own, xdg)  # fmt: skip


CONFIGS: dict[str, Callable[[], DaemonConfig]] = {USERNS: userns_config, ROOTLESS: rootless_config}


@dataclass(frozen=True)
class Record:
    """The daemon process a state file names: its pid and start-time token, so a reused pid never
    passes for it."""

    pid: int
    token: str

    @classmethod
    def read(cls, path: Path) -> Record | None:
        """The record in ``path`` (read bounded, never through a symlink); None when it is missing
        or malformed."""
        try:
            data = json.loads(host_files.read_small(path) or b"")
            return cls(int(data["pid"]), str(data["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def running(self) -> bool:
        """The recorded process still runs: same pid and start time, and not a zombie."""
        return procs.running(self.pid, self.token)


class DockerDaemon:
    """The daemon of one runtime: find it, or start, lease, stop and reap it."""

    def __init__(self, runtime: str, config: Callable[[], DaemonConfig] | None = None) -> None:
        self.runtime = runtime
        self.rootless = runtime == ROOTLESS
        self._factory = config or CONFIGS[runtime]
        self._proc: subprocess.Popen[bytes] | None = None
        self._lease: Path | None = None

    @functools.cached_property
    def config(self) -> DaemonConfig:
        """The daemon's DaemonConfig, built on first use (may raise RuntimeUnavailable, e.g. no
        rootless user)."""
        return self._factory()

    @property
    def url(self) -> str:
        """``unix://`` URL of the daemon's socket, whether anything answers there or not."""
        return f"unix://{self.config.socket}"

    @property
    def started(self) -> bool:
        """This process started the daemon (it may still be shared with other sessions)."""
        return self._proc is not None

    def answers(self) -> bool:
        """Whether the daemon answers on its socket now (a rootless one: only on a socket its user
        owns); never starts it, never raises."""
        try:
            return self._answers()
        except RuntimeUnavailable:
            return False

    def _answers(self, timeout: float = 2.0) -> bool:
        cfg = self.config
        owner = cfg.socket_owner
        if owner is not None and not host_files.socket_owned_by(cfg.socket, owner):
            return False  # the user's own socket, not a symlink to another engine's
        return cfg.answers(cfg.socket, timeout)

    def availability(self) -> Availability:
        """Whether the daemon can be started here (cheap: nothing is started)."""
        try:
            self.config.require()
            hostinfo.static_busybox()
        except RuntimeUnavailable as exc:
            return Availability(self.runtime, False, reason=exc.reason, hint=exc.hint)
        return Availability(self.runtime, True, _dockerd_version(), rootless=self.rootless)

    # -- the shared lifecycle (always under the daemon's lock) ----------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The daemon's lock; creates our folder (and the user's for a rootless one, which
        only a start needs: a tampered user folder never keeps us from stopping)."""
        cfg, user = self.config, self.config.user
        try:
            if user is not None and not user.drop:
                user.prepare()  # our own folders: the records live there too
            if user is None or user.drop:
                host_files.private_dir(cfg.run_dir)
            fd = os.open(cfg.path(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)  # fmt: skip
        except OSError as exc:
            raise RuntimeUnavailable(self.runtime, f"cannot prepare {cfg.run_dir}: {exc}",
                                     SETUP_HINT) from None  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _live_leases(self) -> list[Path]:
        """Remove the leases of dead sessions; return the others."""
        live = []
        for lease in sorted(self.config.path(".leases").glob("*")):
            if session.owner_alive(lease.name):
                live.append(lease)
            else:
                lease.unlink(missing_ok=True)
        return live

    def ensure(self, owner: str | None = None) -> str:
        """The daemon's URL; starts it (as ``owner``'s lease) when none answers."""
        cfg = self.config
        with self._locked():
            self._live_leases()
            record = Record.read(cfg.path(".json"))
            if self._answers():
                if record is not None and record.running:
                    self._take_lease(owner)
                return self.url
            cfg.require()
            if record is not None:  # ours, but it no longer answers: replace it
                self._stop(record)
            if cfg.user is not None:
                try:
                    cfg.user.prepare()
                    if cfg.user_dir is not None:
                        cfg.user.make_dir(cfg.user_dir)
                except OSError as exc:
                    raise RuntimeUnavailable(self.runtime, str(exc), SETUP_HINT) from None
            self._start(owner)
        return self.url

    def _take_lease(self, owner: str | None) -> None:
        leases = self.config.path(".leases")
        leases.mkdir(mode=0o755, exist_ok=True)
        self._lease = leases / (owner or session.current().owner)
        self._lease.touch()

    def _drop_lease(self) -> None:
        if self._lease is not None:
            self._lease.unlink(missing_ok=True)
            self._lease = None

    def _start(self, owner: str | None) -> None:
        cfg = self.config
        for stale in (cfg.socket, cfg.pidfile):
            host_files.unlink_below(cfg.trusted, stale)
        log, drop = cfg.path(".log"), cfg.user is not None and cfg.user.drop
        # not /etc/docker/daemon.json: isolated; readable by the rootless daemon, not writable
        host_files.write_private(cfg.path(".daemon.json"), b"{}\n", 0o644)
        with open(host_files.open_log(log), "wb") as out:
            try:
                proc = subprocess.Popen(  # own session: pytest's Ctrl-C must not reach it
                    cfg.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd="/", env=cfg.env, start_new_session=True,
                    user=cfg.user.uid if drop and cfg.user else None,
                    group=cfg.user.gid if drop and cfg.user else None,
                    extra_groups=svc._extra_groups(cfg.user))  # fmt: skip
            except OSError as exc:
                raise RuntimeUnavailable(
                    self.runtime, f"cannot run {cfg.argv[0]}: {exc}", SETUP_HINT
                ) from None
        self._proc = proc
        record = {"pid": proc.pid, "token": session.owner_token(proc.pid),
                  "owner": owner or session.current().owner, "argv": list(cfg.argv)}  # fmt: skip
        host_files.write_private(cfg.path(".json"), json.dumps(record).encode())
        self._take_lease(owner)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers(timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                late = f"did not answer in {START_TIMEOUT:g}s"
                what, tail = "exited" if proc.poll() is not None else late, procs.tail(log, 30)
                self._stop(Record(proc.pid, str(record["token"])), keep_log=True)
                self._drop_lease()
                self._proc = None
                why = f"{' '.join(cfg.argv)} {what}; log {log}:\n{tail}"
                raise RuntimeUnavailable(self.runtime, why, f"read the log; {SETUP_HINT}")
            time.sleep(0.05)

    def release(self) -> None:
        """Drop this session's lease; the last lease holder stops the daemon. Idempotent."""
        if self._lease is None:
            return
        with self._locked():
            self._drop_lease()
            record = Record.read(self.config.path(".json"))
            if record is not None and not self._live_leases():
                self._stop(record)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # it serves other sessions still (their leases): not ours to wait for; dropping
            # a running Popen is what this is, so its ResourceWarning is not a leak
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del proc

    def reap(self) -> int:
        """Stop a daemon no live session holds a lease on; 1 if one was stopped."""
        try:
            state = self.config.path(".json")
        except RuntimeUnavailable:
            return 0
        if not state.exists():
            return 0
        with self._locked():
            record = Record.read(state)
            if record is None or self._live_leases():
                return 0
            was_running = record.running
            self._stop(record)
        return int(was_running)

    def _stop(self, record: Record, keep_log: bool = False) -> None:
        """Stop the daemon's process tree, then remove what it left (caller holds the lock)."""
        proc = self._proc if self._proc is not None and self._proc.pid == record.pid else None
        if record.running:
            procs.stop_tree(record.pid, record.token, proc)
        cfg = self.config
        if not cfg.answers(cfg.socket, 0.5):  # never unlink a stranger's live socket
            host_files.unlink_below(cfg.trusted, cfg.socket)
        host_files.unlink_below(cfg.trusted, cfg.pidfile)
        cfg.path(".json").unlink(missing_ok=True)
        cfg.path(".daemon.json").unlink(missing_ok=True)
        if not keep_log:
            cfg.path(".log").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            cfg.path(".leases").rmdir()
        mounts = Path("/proc/self/mountinfo").read_text()
        for top in cfg.cleanup_dirs:
            for d in (top, *_siblings(cfg.trusted, top)):
                if f" {d}/" not in mounts and f" {d} " not in mounts:
                    host_files.remove_tree_below(cfg.trusted, d)

    def host_pid(self, reported: int) -> int | None:
        """``reported`` (State.Pid, in the daemon's pid namespace) as a pid of ours; None
        when a rootless daemon names a process that is not its user's (uid or sub-uid): the
        user controls what that daemon says, and must not point root at a host process to
        watch, or at a session to kill when an exec times out. (Not "a descendant of the
        daemon": containerd's shims are reparented to init unless rootlesskit has --pidns.)"""
        if not self.rootless:  # a root dockerd shares our pid namespace
            return reported
        record = Record.read(self.config.path(".json"))
        running = record is not None and record.running
        pid = translate_pid(reported, record.pid if record is not None and running else None)
        user = self.config.user
        ok = user is not None and procs.owned_by_user(pid, user.uid, user.name)
        return pid if ok else None


def _siblings(base: Path, top: Path) -> list[Path]:
    """``top.*`` beside ``top`` (dockerd's remapped copies), listed without following links."""
    try:
        fd = host_files.open_below(base, top.parent)
    except (OSError, ValueError):
        return []
    try:
        return [top.parent / n for n in os.listdir(fd) if n.startswith(f"{top.name}.")]
    finally:
        os.close(fd)


def _dockerd_version() -> str:
    try:
        out = subprocess.run([_which("dockerd") or "dockerd", "--version"], capture_output=True,
                             text=True, timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "Docker (unknown version)"
    words = out.replace(",", " ").split()
    return f"Docker {words[2]}" if len(words) > 2 else "Docker (unknown version)"


# -- processes --------------------------------------------------------------------------


def translate_pid(reported: int, daemon_pid: int | None, proc: Path = Path("/proc")) -> int:
    """The pid in our namespace of the container process the daemon reports as ``reported``.

    A daemon in our pid namespace (dockerd as root; rootlesskit without --pidns) reports
    our pids. One in a pid namespace of its own (rootlesskit --pidns) reports its own:
    the container's init is then the process below ``daemon_pid`` whose NSpid (outermost
    first) lists ``reported`` one level above the container's own namespace.
    """
    with contextlib.suppress(OSError):
        own = os.readlink(proc / "self" / "ns" / "pid")
        ours = daemon_pid is None or all(
            os.readlink(proc / str(p) / "ns" / "pid") == own
            for p in (daemon_pid, *procs.descendants(daemon_pid, proc)[:1])
        )
        if ours:
            return reported
        for p in procs.descendants(daemon_pid, proc) if daemon_pid is not None else ():
            ids = procs.nspid(p, proc)
            if ids is not None and len(ids) >= 3 and ids[-2] == reported:
                return p
    return reported


# -- for scripts/setup: hold a lease for the shell while it imports images ---------------


def main(argv: list[str]) -> int:
    """The CLI scripts/setup uses: ``up RUNTIME`` prints the URL of a daemon leased to
    ``--lease-pid`` (started if needed), ``down RUNTIME`` drops that lease, ``reap`` stops orphaned
    daemons. Returns 1 when the daemon is unavailable."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pytest_containersec.runtimes.docker.docker_daemons")
    p.add_argument("action", choices=("up", "down", "reap"), help="up prints the daemon's URL")
    p.add_argument("runtime", nargs="?", choices=tuple(CONFIGS))
    p.add_argument("--lease-pid", type=int, help="hold the lease for this process (a shell)")
    a = p.parse_args(argv)
    if a.action == "reap":
        for name in CONFIGS:
            print(f"{name}: stopped {DockerDaemon(name).reap()} orphaned daemon(s)")
        return 0
    if a.runtime is None:
        p.error(f"{a.action} needs a runtime")
    daemon = DockerDaemon(a.runtime)
    owner = session.owner_token(a.lease_pid) if a.lease_pid else session.current().owner
    try:
        if a.action == "up":
            print(daemon.ensure(owner))
        else:
            daemon._lease = daemon.config.path(".leases") / owner
            daemon.release()
    except RuntimeUnavailable as exc:
        print(f"{exc.runtime}: {exc.reason}\n(fix: {exc.hint})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
