"""systemd-nspawn adapter: subprocess argv lists, a cached rootfs, an in-container agent.

How each spec field reaches nspawn: see :mod:`.nspawn_spec`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ...errors import ContainerStartError, RuntimeUnavailable
from ...linux import hostinfo, session
from ...model import Declared
from ...spec import ContainerSpec
from .. import procs
from ..base import (
    DEFAULT_EXEC_TIMEOUT,
    PROBE_BUSYBOX,
    PROBE_DIR,
    Availability,
    Container,
    ExecResult,
    LiveContainers,
    log_tail,
)
from ..oci import oci
from ..oci.oci import start_wait
from . import nspawn_agent as agent
from . import nspawn_cgroup as cg
from . import nspawn_image as images
from .nspawn_spec import (
    NAME,
    NSPAWN,
    _env,
    _memory,
    _volumes,
    capability_set,
    declared_from_argv,
    nspawn_argv,
    spec_args,
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
MACHINE_NAME_MAX = 64
NSPAWN_RUN = Path("/run/systemd/nspawn")


def state_root() -> Path:
    """The state folder: ``$CONTAINERSEC_STATE`` as set at call time (tests point it elsewhere),
    else session.STATE_DIR."""
    return Path(os.environ.get("CONTAINERSEC_STATE") or session.STATE_DIR)


def reap_state_dirs(base: Path, finish: Callable[[Path], None]) -> int:
    """For each state dir under ``base`` whose owner session is dead: kill its nspawn
    process tree, remove its cgroups, then ``finish(dir)``. Returns how many."""
    n = 0
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if not session.orphaned(d):
            continue
        with contextlib.suppress(OSError, ValueError):
            token = (d / "nspawn.pid").read_text().strip()
            if session.owner_alive(token):
                procs.kill_tree(int(token.partition(".")[0]))
        try:
            dirs = [Path(p) for p in json.loads((d / "cgroups").read_text())]
        except (OSError, ValueError):
            dirs = []
        cg.kill_and_remove([p for p in dirs if p.parent.name == cg.PARENT])
        finish(d)
        n += 1
    return n


def remove_nspawn_files(name: str, rootfs: Path) -> None:
    """What a SIGKILLed nspawn leaves under /run/systemd/nspawn: the mount propagation
    folder of the machine and the lock on its directory (``locks/inode-DEV:INO``)."""
    with contextlib.suppress(OSError):
        st = rootfs.stat()
        (NSPAWN_RUN / "locks" / f"inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (NSPAWN_RUN / "propagate" / name).rmdir()


class NspawnContainer(Container):
    """One systemd-nspawn process; its payload is the agent, which execs the main command
    (``host_pid``) and serves every exec beside it with the same confinement."""

    def __init__(
        self,
        rt: NspawnRuntime,
        spec: ContainerSpec,
        name: str,
        state: Path,
        argv: list[str],
        env: dict[str, str],
    ) -> None:
        self._rt = rt
        self.runtime = NAME
        self.name = self.id = name
        self.spec = spec
        self.run_spec = spec  # with the image config's USER and ENTRYPOINT applied
        self.engine_rootless = False
        self.host_pid = 0
        self.state = state
        self.argv = argv
        self._env = env
        self.agent = agent.AgentClient(NAME, state / "run")
        self.cgroups: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Through the agent, behind the user-switch prefix; a timed-out command is killed only when
        it is below the main process."""
        self.guard_probe()
        return self.agent.exec(list(argv), timeout, self.host_pid)

    def image_user(self) -> str | None:
        """The exported image config's USER ("" when it sets none); None when the export recorded no
        config."""
        return images.image_user(self.spec.image, state_root())

    def root_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """As the agent itself: the container's root, before the user switch of ``user``."""
        assert self.proc is not None
        self.guard_probe()
        return self.agent.exec(list(argv), timeout, self.proc.pid, as_root=True)

    def declared(self) -> Declared:
        """nspawn's argv and environment as started, normalized, plus the cgroups made for it."""
        out = declared_from_argv(self.argv, self._env, self.run_spec)
        out["cgroup_dirs"] = [str(d) for d in self.cgroups]
        return out

    def logs(self) -> str:
        """The tail of nspawn's output (its own messages and the payload's stdout and stderr)."""
        return log_tail(self.state / "log")

    def stop(self) -> None:
        """SIGTERM to nspawn (its tree SIGKILLed after STOP_TIMEOUT seconds), then remove its
        cgroups, nspawn's leftovers under /run/systemd/nspawn and the state folder; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.agent.close()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # nspawn kills the container
                try:
                    procs.wait(self.proc, STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    procs.kill_tree(self.proc.pid)
                    self.proc.wait(STOP_TIMEOUT)
            cg.kill_and_remove(self.cgroups)
            remove_nspawn_files(self.name, self.state / "rootfs")
            shutil.rmtree(self.state, ignore_errors=True)
        finally:
            self.release_probe()
            self._rt.forget(self)

    def start(self, cache: Path, image_env: dict[str, str], options: list[str]) -> None:
        """Everything after the spec checked out; the caller stops us on any error."""
        rootfs, systemd = self.state / "rootfs", hostinfo.systemd_is_pid1()
        images.prepare_copy(cache, rootfs, meanwhile=self.new_probe_copy)
        for rel, is_dir in [
            (PROBE_DIR, True),
        ] + [(v.target, os.path.isdir(v.source)) for v in _volumes(self.run_spec)]:
            images.ensure_path(rootfs, rel, is_dir)
        env = dict(image_env)
        prefix: list[str] = []
        if self.run_spec.user is not None:
            prefix, home = self._user(rootfs)
            if home and "HOME" not in dict(_env(self.run_spec)):
                env["HOME"] = home
        self.agent.prepare(prefix)
        copy = self.probe_copy
        assert copy is not None
        if prefix:
            copy.add_tools()  # the user switch runs the host's setpriv from tools/
        if not systemd:
            dirs = cg.plan(hostinfo.cgroup_version(), self.name)
            self.cgroups = cg.unique(dirs)
            (self.state / "cgroups").write_text(json.dumps([str(d) for d in self.cgroups]))
            cg.create(hostinfo.cgroup_version(), dirs, *self._limits())
        self.argv = nspawn_argv(
            self.run_spec, options, name=self.name, rootfs=rootfs, run=self.state / "run",
            probe_dir=str(copy.path), tools=None, systemd=systemd, extra_env=env,
        )  # fmt: skip
        (self.state / "argv.json").write_text(json.dumps(self.argv))
        with (self.state / "log").open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._env},
                preexec_fn=cg.joiner(self.cgroups) if self.cgroups else None,
                start_new_session=True,
            )
        (self.state / "nspawn.pid").write_text(session.owner_token(self.proc.pid))
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            if not self.agent.wait_ready(pidfd, START_TIMEOUT, self.argv):
                self._failed()
            self.host_pid = self._main_pid(prefix)
            if select.select([pidfd], [], [], start_wait(self.spec))[0]:
                self._failed()
        finally:
            os.close(pidfd)

    def _limits(self) -> tuple[int | None, int | None, float | None]:
        return _memory(self.run_spec), self.run_spec.pids_limit, self.run_spec.cpus

    def _user(self, rootfs: Path) -> tuple[list[str], str | None]:
        assert self.run_spec.user is not None
        try:
            uid, gid, extra, _name, home = agent.resolve_user(
                self.run_spec.user,
                images.read_file(rootfs, "etc/passwd"),
                images.read_file(rootfs, "etc/group"),
            )
        except ValueError as exc:
            raise ContainerStartError(
                NAME, [f"user={self.run_spec.user}"], None, str(exc)
            ) from None
        helpers = agent.HELPER_CAPS - capability_set(self.run_spec)
        return agent.drop_prefix(uid, gid, extra, helpers), home

    def _main_pid(self, prefix: list[str]) -> int:
        """Host pid of the main process (pid 2 inside), once it exec'd past the agent and the
        user switch."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while (pid := procs.find_inner(self.proc.pid, 2)) is None:
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                self._failed()
            time.sleep(0.002)
        stages = [self.argv[:1], [PROBE_BUSYBOX, "sh", "-c", agent.AGENT_SCRIPT], prefix[:1]]
        oci.await_workload(NAME, self.argv, pid, stages, START_TIMEOUT)
        return pid

    def _failed(self) -> None:
        assert self.proc is not None
        try:
            status = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        raise ContainerStartError(NAME, self.argv, status, self.logs())


class NspawnRuntime:
    """The ``nspawn`` runtime: one systemd-nspawn process per container."""

    def __init__(self) -> None:
        self.name = NAME
        self.live: LiveContainers[NspawnContainer] = LiveContainers(NAME)

    def availability(self) -> Availability:
        """Check systemd-nspawn, root and the static busybox; starts nothing."""
        exe = shutil.which(NSPAWN)
        if exe is None:
            return Availability(
                NAME,
                False,
                reason="systemd-nspawn not found",
                hint="apt-get install systemd-container",
            )
        if os.geteuid() != 0:
            return Availability(
                NAME, False, reason="systemd-nspawn needs root here", hint="run as root"
            )
        try:
            hostinfo.static_busybox()
        except RuntimeUnavailable as exc:
            return Availability(NAME, False, reason=exc.reason, hint=exc.hint)
        first = (procs.tool_output([exe, "--version"]).splitlines() or ["?"])[0]
        return Availability(NAME, True, "systemd-nspawn " + first.removeprefix("systemd "))

    def start(self, spec: ContainerSpec) -> Container:
        """Run ``spec`` on a private copy of the image's rootfs, with the image config's USER and
        ENTRYPOINT applied as docker would; cgroups are made by hand where systemd is not PID 1."""
        systemd = hostinfo.systemd_is_pid1()
        root = state_root()
        cache, image_env = images.rootfs(spec.image, root, NAME)
        run_spec = images.with_image_config(spec, images.image_config(spec.image, root) or {})
        options, env = spec_args(run_spec, systemd)
        if (spec.memory or spec.pids_limit or spec.cpus) and not systemd:
            cg.plan(hostinfo.cgroup_version(), "x")  # fails early if cgroupfs is unreadable
        name = session.current().next_name(NAME)[:MACHINE_NAME_MAX]
        state = root / "nspawn" / name
        state.mkdir(parents=True, mode=0o700)
        session.claim(state)
        c = NspawnContainer(self, spec, name, state, [], env)
        c.run_spec = run_spec
        return self.live.launch(c, lambda: c.start(cache, image_env, options), lambda: c.argv)

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves it running; the next session's reap() removes it."""
        self.live.forget(c)

    def reap(self) -> int:
        """Remove state dirs (processes, cgroups, rootfs copies) of dead sessions."""

        def finish(d: Path) -> None:
            remove_nspawn_files(d.name, d / "rootfs")
            shutil.rmtree(d, ignore_errors=True)

        return reap_state_dirs(state_root() / "nspawn", finish)

    def close(self) -> None:
        """Stop every container this session still tracks."""
        self.live.stop_all()
