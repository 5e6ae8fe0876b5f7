"""systemd-run adapter: the workload is a transient service unit, confined by systemd alone.

The manager is the host's systemd when it is PID 1, else one booted in systemd-nspawn once
per session (``systemd_run_host``). How each ContainerSpec field becomes a unit property
(nothing is dropped silently; ``properties`` replaces a mapped property of the same name):

- image: units run on the manager's own root file system, so only the default image is
  accepted; another is UnsupportedSpec (RootDirectory=/RootImage= too: the probe lives
  on the manager's root).
- command: the main process (``host_pid`` = the unit's MainPID on the host); empty -> an
  idle busybox sleep. Every ``$`` is doubled: systemd 252 expands ``$VAR`` in ExecStart.
- user: ``User=`` (and ``Group=`` for ``USER:GROUP``); ``DynamicUser=yes`` via properties.
- cap_add/cap_drop: Docker's arithmetic over systemd's default (every capability) as one
  ``CapabilityBoundingSet=``; cap_add also becomes ``AmbientCapabilities=`` for a non-root
  user (how systemd hands a capability to a service's user).
- privileged: a root unit with no CapabilityBoundingSet= and no SystemCallFilter= is what
  systemd runs unconfined; nothing is added.
- seccomp: ``default`` -> ``SystemCallFilter=@system-service`` with
  ``SystemCallErrorNumber=EPERM`` (denials are errors, as Docker's, not SIGSYS kills);
  ``unconfined`` -> none; a profile path -> UnsupportedSpec.
- no_new_privileges -> ``NoNewPrivileges=yes``; read_only -> ``ProtectSystem=strict``;
  memory/pids_limit/cpus -> ``MemoryMax=``/``TasksMax=``/``CPUQuota=``; userns ``auto`` ->
  ``PrivateUsers=yes`` (``host``/None: the manager's namespace; maps: UnsupportedSpec);
  network none -> ``PrivateNetwork=yes`` + ``IPAddressDeny=any``; env -> ``--setenv``;
  volumes -> ``BindPaths=``/``BindReadOnlyPaths=`` on a systemd host (a booted manager
  cannot see host paths: UnsupportedSpec).

Exec inherits the unit's confinement because the unit's ExecStart is a busybox-sh agent
(the nspawn agent's protocol) that forks its listener and then execs the main command: the
listener and every command it runs are descendants of the main process, in the unit's
cgroup, with its user, capabilities, seccomp filter, no_new_privs and namespaces. Its
FIFOs live in /.containersec/run/UNIT, owned by the unit's uid once the unit runs (0700:
no other user can reach them; the agent waits until it can). Only FIFOs are written from
inside, so ProtectSystem=strict does not stop it.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ContainerStartError
from ...linux import hostinfo, session
from ...model import Declared, SystemdAnalyze
from ...spec import ContainerSpec
from .. import procs
from ..agent_client import AgentNotReady
from ..base import (
    DEFAULT_EXEC_TIMEOUT,
    PROBE_BUSYBOX,
    Availability,
    Container,
    ExecResult,
    LiveContainers,
)
from ..nspawn import nspawn_agent as agent
from ..oci import oci
from ..oci.oci import IDLE_COMMAND, BoundedBuffer, start_wait
from ..probe_copy import ProbeCopy
from . import systemd_run_declared as decl
from . import systemd_run_host as sdhost
from .systemd_run_declared import pairs, run_argv, unit_properties

if TYPE_CHECKING:
    pass

NAME = sdhost.NAME
START_TIMEOUT = 30.0

AGENT_SCRIPT = (
    r"""set -f
run=$1; shift
"""
    + agent.SH_RESOLVE
    + r"""handle() {
  d=$run/$1; set --; first=1
  while IFS= read -r -d '' a; do
    if [ $first = 1 ]; then
      first=0
      if ! resolve "$a"; then
        notfound "$a" >"$d/err"; : >"$d/out"; printf '0\n127\n' >"$d/rc"; return
      fi
      a=$r
    fi
    set -- "$@" "$a"
  done <"$d/argv"
  exec 4>"$d/rc"
  "$@" </dev/null >"$d/out" 2>"$d/err" 3<&- 4>&- &
  echo $! >&4
  wait $!
  echo $? >&4
}
serve() {
  i=0
  until [ -r "$run/req" ] && [ -w "$run/ready" ]; do
    i=$((i+1)); [ $i -gt 3000 ] && exit 1
    /.containersec/busybox sleep 0.01
  done
  exec 3<>"$run/req"
  echo ready >"$run/ready"
  while IFS= read -r id <&3; do
    case $id in ''|*[!0-9]*) continue;; esac
    handle "$id" &
  done
}
i=0; n=$#
"""
    + agent.SH_EXEC_MAIN
)


def agent_command(busybox: str, run_dir: str, main: list[str]) -> list[str]:
    """The unit's ExecStart: ``busybox sh`` running the agent, which serves ``run_dir`` and execs
    ``main`` as the unit's main process."""
    return [busybox, "sh", "-c", AGENT_SCRIPT, agent.AGENT_ARGV0, run_dir, *main]


class UnitAgent(agent.AgentClient):
    """The nspawn agent's client, with files owned by the unit's user and the command's
    pid sent as the first line of the ``rc`` FIFO (a read-only root allows FIFOs only).
    The stage is the instance's own state folder (``run_host`` is what the units see)."""

    def __init__(self, run: Path, inst: sdhost.SystemdInstance) -> None:
        super().__init__(NAME, run, inst.state / "stage" / run.name)
        self.inst = inst

    def prepare(self, prefix: list[str]) -> None:
        """Make the stage folder's parent in the instance's state, then as the base class."""
        self.stage.parent.mkdir(mode=0o700, exist_ok=True)
        super().prepare(prefix)

    def grant(self, uid: int, gid: int) -> None:
        """Hand the folder to the unit's user: its contents first, without following a
        symlink, then the folder itself (the unit can enter it only after that)."""
        self.owner = (uid, gid)
        for name in ("req", "ready", "prefix"):
            os.chown(name, uid, gid, dir_fd=self._run_fd, follow_symlinks=False)
        assert self._run_fd is not None
        os.fchown(self._run_fd, uid, gid)

    def close(self) -> None:
        """Close the descriptors, then remove the host-only stage folder."""
        super().close()
        shutil.rmtree(self.stage, ignore_errors=True)

    def _result(self, bufs: dict[str, BoundedBuffer]) -> ExecResult:
        lines = bufs["rc"].text().split()
        rc = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else -1
        return ExecResult(rc, bufs["out"].text(), bufs["err"].text())

    def _reported_pid(self, req: agent.Request, bufs: dict[str, BoundedBuffer]) -> int | None:
        lines = bufs["rc"].text().split()
        return int(lines[0]) if lines and lines[0].isdigit() else None

    def _kill(self, req: agent.Request, bufs: dict[str, BoundedBuffer], main_pid: int) -> None:
        """Kill the command the unit reports, only if it is below the unit's main process."""
        inner = self._reported_pid(req, bufs)
        pid = self.inst.host_pid(inner) if inner is not None else None
        if pid is not None and main_pid > 0 and pid in procs.descendants(main_pid):
            procs.kill_tree(pid)


class SystemdRunContainer(Container):
    """A transient service unit ``<name>.service`` whose ExecStart is the agent, which execs the
    main command and serves the execs inside the unit."""

    def __init__(
        self, rt: SystemdRunRuntime, inst: sdhost.SystemdInstance, spec: ContainerSpec, name: str
    ) -> None:
        self._rt = rt
        self.inst = inst
        self.runtime = NAME
        self.name = name
        self.id = self.unit = f"{name}.service"
        self.spec = spec
        self.engine_rootless = False
        self.host_pid = 0
        self.argv: list[str] = []
        self.agent = UnitAgent(inst.run_host / name, inst)
        self._stopped = False
        # systemd-analyze security, started once the unit runs (it takes seconds: ~20 s
        # under the VM's TCG), collected by the first declared(), stopped by stop()
        self._analyze: list[subprocess.Popen[str]] = []
        self._analyzed: tuple[str, str] | None = None

    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Through the unit's agent, as the unit's user with all its confinement; a timed-out
        command is killed only when it is below the main process."""
        self.guard_probe()
        return self.agent.exec(list(argv), timeout, self.host_pid)

    def show(self) -> dict[str, str]:
        """The unit's ``systemctl show`` values of :data:`.systemd_run_declared.SHOW_PROPERTIES`,
        read now ({} when the manager does not answer)."""
        r = self.inst.run(["systemctl", "show", self.unit, "-p", ",".join(decl.SHOW_PROPERTIES)])
        return decl.parse_show(r.stdout)

    def _start_analyze(self) -> None:
        """Both ``systemd-analyze security`` runs, in the background and side by side."""
        self._analyze = [self.inst.spawn(["systemd-analyze", "security", "--json=short",
                                          self.unit]),
                         self.inst.spawn(["systemd-analyze", "security", "--no-pager",
                                          self.unit])]  # fmt: skip

    def _analysis(self) -> tuple[str, str]:
        """``(json, text)`` of systemd-analyze security (the unit's settings do not change
        while it runs: read once)."""
        if self._analyzed is None:
            if not self._analyze:
                self._start_analyze()
            json_out, text_out = (self.inst.collect(p) for p in self._analyze)
            self._analyze = []
            self._analyzed = (json_out.stdout, text_out.stdout)
        return self._analyzed

    def declared(self) -> Declared:
        """``systemctl show`` of the unit, normalized, with ``systemd-analyze security``."""
        try:
            analyze: SystemdAnalyze | None = decl.parse_analyze(*self._analysis())
        except ValueError:
            analyze = None
        out = decl.declared_from_show(self.show(), analyze)
        out["argv"] = list(self.argv)
        out["manager"] = self.inst.kind
        return out

    def logs(self) -> str:
        """The unit's last 200 journal lines (journalctl's error when there are none)."""
        r = self.inst.run(["journalctl", "--no-pager", "-o", "cat", "-n", "200", "-u", self.unit])
        return r.stdout or r.stderr

    def start(self, props: list[tuple[str, str]]) -> None:
        """Everything after the spec checked out; the caller stops us on any error."""
        self.agent.prepare([])
        busybox = PROBE_BUSYBOX
        if self.inst.kind == "host":
            assert self.probe_copy is not None
            busybox = f"{self.probe_copy.path}/busybox"  # systemd-run checks it exists
            (self.inst.state / "units").mkdir(exist_ok=True)
            (self.inst.state / "units" / self.unit).touch()
        main = list(self.spec.command) or [PROBE_BUSYBOX, *IDLE_COMMAND]
        if self.spec.entrypoint is not None:
            main = [*self.spec.entrypoint, *self.spec.command]
        run_dir = f"{self.inst.run_inside}/{self.name}"
        command = agent_command(busybox, run_dir, main)
        self.argv = run_argv(self.unit, props, command, pairs(self.spec.env))
        r = self.inst.run(self.argv, timeout=START_TIMEOUT)
        if r.returncode != 0:
            self._failed(r.returncode, r.stderr)
        self._watch_main(command)

    def _watch_main(self, command: list[str]) -> None:
        """Once the unit runs: its main process on the host, the agent's folder handed to
        the unit's user, the agent ready and ``command`` (``agent_command``) exec'd past the
        agent into the main command (``host_pid``)."""
        inner = int(self.show().get("MainPID") or 0)
        pid = self.inst.host_pid(inner)
        if pid is None:
            self._failed(None, "the unit's main process exited at once")
        assert pid is not None
        try:
            st = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            uid, gid = int(st["Uid"].split()[0]), int(st["Gid"].split()[0])
            pidfd = os.pidfd_open(pid)
        except (OSError, KeyError, ValueError):
            self._failed(None, "the unit's main process exited at once")
        try:
            self.agent.grant(*self.inst.inner_ids(uid, gid))
            if not self.agent.wait_ready(pidfd, START_TIMEOUT, self.argv):
                self._failed(None, "the unit's main process exited")
            # the agent execs the main command once ready
            oci.await_workload(self.runtime, self.argv, pid, [command[:4]], START_TIMEOUT)
            self.host_pid = pid
            if select.select([pidfd], [], [], start_wait(self.spec))[0]:
                self._failed(None, "the unit's main process exited")
        finally:
            os.close(pidfd)
        self._start_analyze()

    def _failed(self, status: int | None, why: str) -> None:
        raise ContainerStartError(
            self.runtime, self.argv, status, f"{why.strip()}\n{self.logs()[-2000:]}"
        )

    def stop(self) -> None:
        """Kill the background systemd-analyze runs, stop and forget the unit, remove its agent
        folder; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for proc in self._analyze:  # never collected: no facts were taken
            proc.kill()
            proc.communicate()
        self._analyze = []
        try:
            self.agent.close()
            self._remove_unit()
            shutil.rmtree(self.agent.run, ignore_errors=True)
        finally:
            self.release_probe()
            self._rt.forget(self)

    def _remove_unit(self) -> None:
        """Stop the transient unit and forget it (the reaper's record)."""
        if self.inst.alive():
            sdhost.stop_unit(self.inst, self.unit)
        with contextlib.suppress(OSError):
            (self.inst.state / "units" / self.unit).unlink()


class SystemdRunRuntime:
    """The ``systemd-run`` runtime: one transient service unit per container."""

    def __init__(self) -> None:
        self.name = NAME
        self.live: LiveContainers[SystemdRunContainer] = LiveContainers(NAME)
        self._inst: sdhost.SystemdInstance | None = None
        self._lock = threading.Lock()

    def availability(self) -> Availability:
        """Check that a manager can be had (the host's systemd, or the rootfs to boot one) and the
        static busybox; boots nothing."""
        reason = sdhost.availability_reason()
        if reason is None:
            try:
                hostinfo.static_busybox()
            except Exception as exc:  # RuntimeUnavailable, with its own hint
                reason = (str(exc), "apt-get install busybox-static")
        if reason is not None:
            return Availability(NAME, False, reason=reason[0], hint=reason[1])
        out = procs.tool_output(["systemd-run", "--version"])
        version = (out.splitlines() or ["systemd ?"])[0].split(" (")[0]
        where = "the host's systemd" if hostinfo.systemd_is_pid1() else "booted in nspawn"
        return Availability(NAME, True, f"{version}, {where}")

    def instance(self) -> sdhost.SystemdInstance:
        """The manager, booted on first use and kept until :meth:`close`."""
        with self._lock:
            if self._inst is None or not self._inst.alive():
                if self._inst is not None:
                    self._inst.close()
                self._inst = sdhost.start_instance()
            return self._inst

    def start(self, spec: ContainerSpec) -> Container:
        """Run ``spec`` as a transient unit, booting the session's manager on first use."""
        base = unit_properties(spec, hostinfo.systemd_is_pid1())
        inst = self.instance()

        def make() -> tuple[SystemdRunContainer, Callable[[], None]]:
            name = session.current().next_name(NAME)
            # booted: one copy its user namespace cannot write; a systemd host: the unit's own
            copy = inst.probe.shared() if inst.probe is not None else ProbeCopy.create(name)
            props = base + inst.unit_extra_properties(str(copy.path))
            c = SystemdRunContainer(self, inst, spec, name)
            c.probe_copy = copy
            return c, lambda: c.start(props)

        return self._launch(make)

    def _launch(
        self, make: Callable[[], tuple[SystemdRunContainer, Callable[[], None]]]
    ) -> Container:
        """Register the container ``make`` gives and run its start; on any failure stop it
        (nothing is left). A unit whose agent never answered while its main process kept
        running (a stall of the manager, rare, seen under load) is stopped and started once
        more as a new unit; the error of a second stall names both."""
        c, start = make()
        try:
            return self.live.launch(c, start, lambda: c.argv)
        except AgentNotReady as first:
            c, start = make()
            try:
                return self.live.launch(c, start, lambda: c.argv)
            except AgentNotReady as second:
                why = f"{second.stderr}; the attempt before: {first.stderr}"
                raise AgentNotReady(second.runtime, second.argv, None, why) from None

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves its unit running; the next session's reap() removes
        it."""
        self.live.forget(c)

    def reap(self) -> int:
        """Remove what dead sessions' instances left (:func:`.systemd_run_host.reap`)."""
        return sdhost.reap()

    def close(self) -> None:
        """Stop this session's units, then close the manager (a booted one is killed whole)."""
        self.live.stop_all()
        with self._lock:
            inst, self._inst = self._inst, None
        if inst is not None:
            inst.close()
