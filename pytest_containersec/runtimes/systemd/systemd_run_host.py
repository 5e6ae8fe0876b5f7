"""The systemd that runs the units: the host's own (PID 1), or one booted in systemd-nspawn.

On a host where systemd is PID 1 the units are the host's (commands run directly). Elsewhere
(CI, this VM) a Debian rootfs with systemd, built once by ``scripts/setup``
(``$STATE/images/systemd-bookworm-container/rootfs``), is copied and booted once per session, lazily
on the first start, with ``systemd-nspawn -b --private-users=pick
--private-users-ownership=map``; every command then runs as ``nsenter -t LEADER -a CMD``.
The booted instance, like an nspawn container, lives in a cgroup made by hand (its
``cgroup.procs`` lists everything it ever started) and a state folder with the owner's
token, so :func:`reap` can remove what a killed session left: processes, cgroups, the
rootfs copy, nspawn's propagation folder.

Both kinds give the units the probe folder at /.containersec and the agents' run folder
at /.containersec/run: the booted one with nspawn binds (the units see them as part of
their root file system, no unit property needed), the host one with
``BindReadOnlyPaths=`` added to each unit (documented in systemd_run's declared output).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from ...errors import ContainerStartError, RuntimeUnavailable
from ...linux import hostinfo, procfs, session
from ...model import unmap_id
from .. import procs
from ..base import PROBE_DIR
from ..nspawn import nspawn_cgroup as cg
from ..nspawn.nspawn import reap_state_dirs, state_root
from ..probe_copy import ProbeCopy
from ..procs import STOP_TIMEOUT

NAME = "systemd-run"
ROOTFS_KEY = "systemd-bookworm-container"  # the folder changes with what the rootfs must hold
BOOT_TIMEOUT = 60.0
TOOL_TIMEOUT = 30.0
RUN_INSIDE = f"{PROBE_DIR}/run"
PROPAGATE = Path("/run/systemd/nspawn/propagate")
TOOL_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
}
READY_STATES = ("running", "degraded")


def base_dir() -> Path:
    """``$STATE/systemd-run``: one state folder per instance, walked by :func:`reap`."""
    return state_root() / "systemd-run"


def rootfs_cache() -> Path:
    """The systemd rootfs scripts/setup builds; each booted instance runs on a copy."""
    return state_root() / "images" / ROOTFS_KEY / "rootfs"


def has_systemd(rootfs: Path) -> bool:
    """Whether ``rootfs`` holds a systemd binary to boot."""
    return any((rootfs / p).exists() for p in ("lib/systemd/systemd", "usr/lib/systemd/systemd"))


def nspawn_argv(name: str, rootfs: Path, probe_dir: str, run: Path) -> list[str]:
    """The boot command line (pure). No --private-network: units share the instance's
    network namespace unless their own properties say otherwise, as on a real host."""
    return [
        "systemd-nspawn", "--quiet", "--boot", "--console=pipe", f"--machine={name}",
        "--register=no", "--keep-unit", f"--directory={rootfs}",
        "--private-users=pick", "--private-users-ownership=map",
        f"--bind-ro={probe_dir}:{PROBE_DIR}", f"--bind-ro={run}:{RUN_INSIDE}:idmap",
    ]  # fmt: skip


class SystemdInstance:
    """One systemd manager the runtime talks to (``kind``: ``"host"`` or ``"booted"``)."""

    def __init__(self, kind: str, state: Path, runtime: str = NAME) -> None:
        self.kind = kind
        self.runtime = runtime  # whose errors name it (systemd-run, portable)
        self.state = state
        self.run_host = state / "run"
        # Where units find their agent folders: bound at /.containersec/run either way
        # (nspawn's bind, or each unit's BindReadOnlyPaths=); never the host path, whose
        # parents (0700) a unit's non-root user cannot traverse.
        self.run_inside = RUN_INSIDE
        self.leader = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroups: list[Path] = []
        self.argv: list[str] = []
        self.boot_seconds = 0.0
        self.name = state.name
        self.probe: ProbeCopy | None = None  # the booted kind's, bound for every unit
        identity: tuple[tuple[int, int, int], ...] = ((0, 0, 2**32 - 1),)
        self._uid_map = self._gid_map = identity

    # -- commands ---------------------------------------------------------------------

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as run against this manager: as is on the host, else through ``nsenter`` into
        every namespace of the booted system's PID 1."""
        if self.kind == "host":
            return list(argv)
        return ["nsenter", "-t", str(self.leader), "-a", "--", *argv]

    def run(
        self, argv: list[str], timeout: float = TOOL_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a systemd tool against this instance; never raises for a non-zero status."""
        try:
            return subprocess.run(
                self.command(argv), capture_output=True, text=True, timeout=timeout,
                env={**os.environ, **TOOL_ENV}, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {exc.timeout}s")

    def spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        """Start a systemd tool against this instance; :meth:`collect` reads its result."""
        return subprocess.Popen(
            self.command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **TOOL_ENV}, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    @staticmethod
    def collect(
        proc: subprocess.Popen[str], timeout: float = TOOL_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """The result of :meth:`spawn` (killed at ``timeout``, as :meth:`run` reports it)."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            return subprocess.CompletedProcess(
                proc.args, 124, "", f"timed out after {exc.timeout}s"
            )
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def host_pid(self, inner: int) -> int | None:
        """The host pid of ``inner``, a pid as this systemd sees it (NSpid of the leader)."""
        if self.kind == "host" or inner <= 0:
            return inner if inner > 0 else None
        return procs.find_inner(self.leader, inner)

    def inner_ids(self, host_uid: int, host_gid: int) -> tuple[int, int]:
        """``(uid, gid)`` as this systemd (and the idmapped run folder) sees host ids."""
        uid = unmap_id(self._uid_map, host_uid)
        gid = unmap_id(self._gid_map, host_gid)
        return (65534 if uid is None else uid), (65534 if gid is None else gid)

    def unit_extra_properties(self, probe_dir: str) -> list[tuple[str, str]]:
        """What each unit needs to see the probe and its agent folder. Either way the unit
        gets a mount namespace of its own, so what one unit mounts over /.containersec
        stays its own (the booted kind binds the instance's folder onto itself)."""
        if self.kind == "booted":
            return [("BindReadOnlyPaths", f"{PROBE_DIR}:{PROBE_DIR}")]
        return [
            ("BindReadOnlyPaths", f"{probe_dir}:{PROBE_DIR}"),
            ("BindReadOnlyPaths", f"{self.run_host}:{RUN_INSIDE}"),
        ]

    def alive(self) -> bool:
        """True for the host's systemd; a booted one while its nspawn process runs."""
        if self.kind == "host":
            return True
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` bytes of the booted system's console; "" when there is none (the host
        kind)."""
        try:  # the booted system's console: as long as a unit makes it, read its end only
            with (self.state / "log").open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - n))
                return f.read(n).decode("utf-8", "replace")
        except OSError:
            return ""

    # -- booting ----------------------------------------------------------------------

    def boot(self, rootfs: Path) -> None:
        """Copy the rootfs, boot it, wait until systemd reports running. Caller closes on error."""
        started = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs), str(self.state / "rootfs")],
                       check=True, capture_output=True)  # fmt: skip
        version = hostinfo.cgroup_version()
        dirs = cg.plan(version, self.name)
        self.cgroups = cg.unique(dirs)
        (self.state / "cgroups").write_text(json.dumps([str(d) for d in self.cgroups]))
        cg.create(version, dirs, None, None, None)
        self.probe = ProbeCopy.create(self.name)
        self.argv = nspawn_argv(
            self.name, self.state / "rootfs", str(self.probe.path), self.run_host
        )
        with (self.state / "log").open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=cg.joiner(self.cgroups), start_new_session=True,
            )  # fmt: skip
        (self.state / "nspawn.pid").write_text(session.owner_token(self.proc.pid))
        deadline = started + BOOT_TIMEOUT
        while not self.leader:
            self._check_booting(deadline, "no PID 1 in the container")
            self.leader = procs.find_inner(self.proc.pid, 1) or 0
            time.sleep(0.01)
        self._uid_map = procfs.parse_id_map(Path(f"/proc/{self.leader}/uid_map").read_text())
        self._gid_map = procfs.parse_id_map(Path(f"/proc/{self.leader}/gid_map").read_text())
        state = ""
        while state not in READY_STATES:
            self._check_booting(deadline, f"system state {state or 'unknown'!r}")
            state = self.run(["systemctl", "is-system-running"], timeout=5).stdout.strip()
            if state in ("maintenance", "stopping"):  # "offline": no bus yet
                self._fail(f"systemd reached {state!r} instead of running")
            time.sleep(0.02)
        self.boot_seconds = time.monotonic() - started

    def _check_booting(self, deadline: float, what: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            self._fail(f"systemd-nspawn exited with status {self.proc.returncode}")
        if time.monotonic() > deadline:
            self._fail(f"not booted after {BOOT_TIMEOUT:g}s: {what}")

    def _fail(self, reason: str) -> None:
        raise ContainerStartError(self.runtime, self.argv, None, f"{reason}\n{self.log_tail()}")

    # -- cleanup ----------------------------------------------------------------------

    def close(self) -> None:
        """Kill the booted system (its PID 1 first: the whole pid namespace goes with it),
        remove its cgroups, rootfs copy and state folder. The host kind has nothing."""
        if self.kind == "booted":
            if self.leader and self.proc is not None:  # nspawn reaps its PID 1, then exits
                procs.kill_and_wait(self.leader, self.proc.pid, STOP_TIMEOUT)
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    procs.wait(self.proc, STOP_TIMEOUT)
                if self.proc.poll() is None:  # not reaped yet: its pid is still its own
                    procs.kill_tree(self.proc.pid)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        procs.wait(self.proc, STOP_TIMEOUT)
            cg.kill_and_remove(self.cgroups)
            remove_propagation(self.name)
        if self.probe is not None:
            self.probe.remove()
        remove_tree(self.state)


def remove_tree(path: Path) -> None:
    """``rm -rf`` (three times faster than shutil.rmtree on the rootfs copy's ~5000 files)."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def remove_propagation(machine: str) -> None:
    """nspawn's host-side mount propagation folder (left behind when nspawn is killed)."""
    p = PROPAGATE / machine
    if p.parent == PROPAGATE and machine and "/" not in machine:
        shutil.rmtree(p, ignore_errors=True)


def availability_reason() -> tuple[str, str] | None:
    """Why no instance can be had here, and the fix; None when one can."""
    if hostinfo.systemd_is_pid1():
        if shutil.which("systemd-run") is None:
            return "systemd-run not found", "apt-get install systemd"
        return None
    if os.geteuid() != 0:
        return "booting a systemd instance needs root here", "run as root"
    if shutil.which("systemd-nspawn") is None:
        return "no systemd as PID 1 and no systemd-nspawn", "apt-get install systemd-container"
    if not has_systemd(rootfs_cache()):
        return (
            f"no systemd as PID 1 and no systemd rootfs at {rootfs_cache()}",
            "run the project setup (scripts/setup.d/60-systemd-rootfs.sh debootstraps it)",
        )
    return None


def start_instance(base: Path | None = None, runtime: str = NAME) -> SystemdInstance:
    """The host's systemd, or a freshly booted one owned by this session; its state folder
    under ``base`` (default :func:`base_dir`: the reaper of ``base`` owns it)."""
    reason = availability_reason()
    if reason is not None:
        raise RuntimeUnavailable(runtime, *reason)
    sess = session.current()
    name = sess.next_name("systemd")[:64]
    state = (base or base_dir()) / name
    state.mkdir(parents=True, mode=0o700)
    session.claim(state)
    kind = "host" if hostinfo.systemd_is_pid1() else "booted"
    inst = SystemdInstance(kind, state, runtime)
    inst.run_host.mkdir(mode=0o711)
    if kind == "booted":
        try:
            inst.boot(rootfs_cache())
        except BaseException as exc:
            inst.close()
            if isinstance(exc, OSError | subprocess.SubprocessError):
                raise ContainerStartError(runtime, inst.argv, None, str(exc)) from None
            raise
    return inst


def stop_unit(inst: SystemdInstance, unit: str) -> None:
    """Kill every process of ``unit`` at once, then stop and forget it (idempotent)."""
    inst.run(["systemctl", "kill", "--signal=SIGKILL", unit], timeout=10)
    inst.run(["systemctl", "stop", unit], timeout=10)
    inst.run(["systemctl", "reset-failed", unit], timeout=10)


def reap() -> int:
    """Remove instances of dead sessions: a booted system (processes, cgroups, rootfs
    copy), or on a systemd host the units listed in the state folder."""

    def finish(d: Path) -> None:
        if (d / "units").is_dir():  # a systemd host: the units are the host's own
            host = SystemdInstance("host", d)
            for unit in sorted(p.name for p in (d / "units").iterdir()):
                stop_unit(host, unit)
        remove_propagation(d.name)
        remove_tree(d)

    return reap_state_dirs(base_dir(), finish)
