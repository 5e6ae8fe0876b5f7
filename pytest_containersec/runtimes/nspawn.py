"""systemd-nspawn adapter: subprocess argv lists, a cached rootfs, an in-container agent.

How each ContainerSpec field reaches nspawn (nothing is dropped silently):

- image: rootfs cache exported once from Docker or Podman (``nspawn_image``), a private
  ``cp -a`` per container; ``--private-users=pick --private-users-ownership=map``.
- command: the main process (``host_pid``), exec'd by the agent script under
  ``--as-pid2`` (nspawn's stub init is PID 1 and reaps); empty -> an idle busybox sleep.
- user: nspawn's ``--user`` needs getent in the image, so the payload drops privileges
  itself (``setpriv --inh-caps=-all`` + ``nsenter -S UID -G GID``), resolved with
  ``docker run --user`` rules from the image's /etc/passwd and /etc/group: CapPrm/CapEff
  become empty, CapInh too, the bounding set stays. Supplementary groups from /etc/group
  cannot be set by busybox: UnsupportedSpec rather than a different process state.
- cap_add/cap_drop: Docker's arithmetic (``add ALL`` = all minus drops, ``drop ALL`` =
  only adds) over nspawn's default set, emitted as explicit ``--capability=`` and
  ``--drop-capability=`` lists (nspawn 252's own ``all`` loses CAP_NET_BIND_SERVICE in a
  user namespace, measured).
- privileged: mapped to what is security-relevant in ``docker --privileged``: every
  capability plus seccomp off (``SYSTEMD_SECCOMP=0``). nspawn still hides host devices
  and keeps /proc/sys and /sys read-only, and the user namespace stays as requested; the
  observed Facts show that, so the gap to Docker is a finding, not an error.
- seccomp: ``default`` = nspawn's filter; ``unconfined`` = ``SYSTEMD_SECCOMP=0`` in
  nspawn's environment (Seccomp: 0 measured); a profile path -> UnsupportedSpec (nspawn
  has only ``--system-call-filter=`` lists, not OCI profiles).
- no_new_privileges, read_only, network none, volumes, env: ``--no-new-privileges=yes``,
  ``--read-only``, ``--private-network``, ``--bind``/``--bind-ro``, ``--setenv``.
- memory/pids_limit/cpus: systemd PID 1 -> ``--register=yes --property=...`` (machined
  makes a scope); otherwise a cgroup made by hand that nspawn joins before exec.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import caps, hostinfo, session
from ..errors import ContainerStartError, RuntimeUnavailable, UnsupportedSpec
from ..spec import ContainerSpec, Volume, parse_size
from . import nspawn_agent as agent
from . import nspawn_cgroup as cg
from . import nspawn_image as images
from .base import (
    DEFAULT_EXEC_TIMEOUT,
    MAX_OUTPUT,
    PROBE_BUSYBOX,
    PROBE_DIR,
    Availability,
    Container,
    ExecResult,
)
from .oci import IDLE_COMMAND, START_WAIT

NAME = "nspawn"
NSPAWN = "systemd-nspawn"
NSPAWN_DEFAULT_CAPS = frozenset(caps.decode_mask("fdecabff"))  # nspawn 252, measured
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
MACHINE_NAME_MAX = 64
NSPAWN_RUN = Path("/run/systemd/nspawn")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _memory(spec: ContainerSpec) -> int | None:
    return None if spec.memory is None else parse_size(spec.memory)


def _volumes(spec: ContainerSpec) -> list[Volume]:
    return [Volume.parse(v) if isinstance(v, str) else v for v in spec.volumes]


def _env(spec: ContainerSpec) -> list[tuple[str, str]]:
    env = spec.env
    return list(env.items()) if isinstance(env, Mapping) else [(k, v) for k, v in env]


def state_root() -> Path:
    return Path(os.environ.get("CONTAINERSEC_STATE") or session.STATE_DIR)


def remove_nspawn_files(name: str, rootfs: Path) -> None:
    """What a SIGKILLed nspawn leaves under /run/systemd/nspawn: the mount propagation
    folder of the machine and the lock on its directory (``locks/inode-DEV:INO``)."""
    with contextlib.suppress(OSError):
        st = rootfs.stat()
        (NSPAWN_RUN / "locks" / f"inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (NSPAWN_RUN / "propagate" / name).rmdir()


def capability_set(spec: ContainerSpec) -> frozenset[str]:
    """The capabilities the container keeps: Docker's TweakCapabilities over nspawn's set."""
    if spec.privileged:
        return caps.ALL_CAPS
    add, drop = set(spec.cap_add), set(spec.cap_drop)
    if "ALL" in add:
        return frozenset(caps.ALL_CAPS - caps.normalize_set(drop - {"ALL"}))
    if "ALL" in drop:
        return caps.normalize_set(add)
    return frozenset((NSPAWN_DEFAULT_CAPS - drop) | add)


def spec_args(spec: ContainerSpec, systemd: bool) -> tuple[list[str], dict[str, str]]:
    """nspawn options and environment for every spec field but image/command/user (pure)."""
    args: list[str] = []
    if spec.properties:
        raise UnsupportedSpec("properties", NAME, "systemd unit properties: use systemd-run")
    env: dict[str, str] = {}
    keep = capability_set(spec)
    if spec.user is not None:  # the payload's user switch needs them; it drops them after
        keep |= agent.HELPER_CAPS
    # Both lists in full: nspawn's own default grows with options (--private-network adds
    # CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, measured), explicit drops always win.
    if keep:
        args.append("--capability=" + ",".join(sorted(keep)))
    if caps.ALL_CAPS - keep:
        args.append("--drop-capability=" + ",".join(sorted(caps.ALL_CAPS - keep)))
    if spec.seccomp.startswith("/"):
        raise UnsupportedSpec(
            "seccomp", NAME, "nspawn takes --system-call-filter= lists, not OCI seccomp profiles"
        )
    if spec.seccomp == "unconfined" or spec.privileged:
        env["SYSTEMD_SECCOMP"] = "0"
    if spec.no_new_privileges:
        args.append("--no-new-privileges=yes")
    if spec.read_only:
        args.append("--read-only")
    if systemd:
        args += cg.systemd_properties(_memory(spec), spec.pids_limit, spec.cpus)
    args += userns_args(spec)
    if spec.network == "none":
        args.append("--private-network")
    for v in _volumes(spec):
        if "\\" in v.source or "\\" in v.target:
            raise UnsupportedSpec("volumes", NAME, f"{v}: nspawn treats '\\' as an escape")
        args.append(f"--bind{'-ro' if v.read_only else ''}={v.source}:{v.target}")
    for key, value in _env(spec):
        if not _ENV_NAME.match(key):
            raise UnsupportedSpec("env", NAME, f"{key!r} is not a name nspawn --setenv accepts")
        args.append(f"--setenv={key}={value}")
    return args, env


def userns_args(spec: ContainerSpec) -> list[str]:
    if spec.userns in (None, "auto"):
        return ["--private-users=pick", "--private-users-ownership=map"]
    if spec.userns == "host":
        return ["--private-users=no"]
    maps = spec.uid_maps
    if len(maps) == 1 and maps[0][0] == 0:
        return [f"--private-users={maps[0][1]}:{maps[0][2]}", "--private-users-ownership=map"]
    raise UnsupportedSpec(
        "userns",
        NAME,
        f"{spec.userns!r}: nspawn maps one range starting at container uid 0 (0:OUTSIDE:COUNT)",
    )


def nspawn_argv(
    spec: ContainerSpec,
    options: list[str],
    *,
    name: str,
    rootfs: Path,
    run: Path,
    probe_dir: str,
    tools: Path | None,
    systemd: bool,
    extra_env: dict[str, str],
) -> list[str]:
    """The full command line (pure): fixed options, spec options, probe mounts, payload."""
    argv = [NSPAWN, "--quiet", "--console=pipe", "--as-pid2", f"--machine={name}"]
    argv += ["--register=yes"] if systemd else ["--register=no", "--keep-unit"]
    argv += [f"--directory={rootfs}"]
    argv += [f"--setenv={k}={v}" for k, v in extra_env.items() if _ENV_NAME.match(k)]
    argv += options  # after the image's env: a later --setenv wins
    idmap = ":idmap" if spec.userns != "host" else ""
    argv += [f"--bind-ro={probe_dir}:{PROBE_DIR}", f"--bind={run}:{agent.RUN_DIR}{idmap}"]
    if tools is not None:
        argv.append(f"--bind-ro={tools}:{agent.TOOLS_DIR}")
    main = list(spec.command) if spec.command else [PROBE_BUSYBOX, *IDLE_COMMAND]
    return argv + agent.payload_argv(main)


def declared_from_argv(argv: list[str], env: dict[str, str], spec: ContainerSpec) -> dict[str, Any]:
    """Normalize the nspawn argv into docker.declared_from_inspect's keys (pure)."""
    opts = argv[: argv.index(PROBE_BUSYBOX)] if PROBE_BUSYBOX in argv else argv

    def values(prefix: str) -> list[str]:
        return [a[len(prefix) :] for a in opts if a.startswith(prefix)]

    def csv(prefix: str) -> list[str]:
        return sorted(c for v in values(prefix) for c in v.split(",") if c)

    props = dict(p.split("=", 1) for p in values("--property="))
    users = values("--private-users=")
    userns = {"pick": "auto", "no": "host"}.get(users[-1], f"0:{users[-1]}") if users else "host"
    binds = [f"{v}" for v in values("--bind=") if not v.split(":")[1].startswith(agent.RUN_DIR)]
    binds += [f"{v}:ro" for v in values("--bind-ro=") if not v.split(":")[1].startswith(PROBE_DIR)]
    cpus = spec.cpus
    if "CPUQuota" in props:
        cpus = int(props["CPUQuota"].rstrip("%")) / 100
    return {
        "engine": NAME,
        "argv": list(argv),
        "user": spec.user,
        "cap_add": csv("--capability="),
        "cap_drop": csv("--drop-capability="),
        "capabilities": sorted(capability_set(spec)),
        "privileged": spec.privileged,
        "seccomp": "unconfined" if env.get("SYSTEMD_SECCOMP") == "0" else "default",
        "no_new_privileges": "--no-new-privileges=yes" in opts,
        "read_only": "--read-only" in opts,
        "memory": int(props["MemoryMax"]) if "MemoryMax" in props else _memory(spec),
        "cpus": cpus,
        "pids_limit": int(props["TasksMax"]) if "TasksMax" in props else spec.pids_limit,
        "userns_mode": userns,
        "network_mode": "none" if "--private-network" in opts else "host",
        "binds": binds,
    }


class NspawnContainer(Container):
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
        assert self.proc is not None
        return self.agent.exec(list(argv), timeout, self.proc.pid)

    def declared(self) -> dict[str, Any]:
        out = declared_from_argv(self.argv, self._env, self.spec)
        out["cgroup_dirs"] = [str(d) for d in self.cgroups]
        return out

    def logs(self) -> str:
        try:
            with (self.state / "log").open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - MAX_OUTPUT))
                return f.read(MAX_OUTPUT).decode("utf-8", "replace")
        except OSError as exc:
            return f"(logs unavailable: {exc})"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.agent.close()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # nspawn kills the container
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    agent.kill_tree(self.proc.pid)
                    self.proc.wait(STOP_TIMEOUT)
            cg.kill_and_remove(self.cgroups)
            remove_nspawn_files(self.name, self.state / "rootfs")
            shutil.rmtree(self.state, ignore_errors=True)
        finally:
            self._rt.forget(self)

    def start(self, cache: Path, image_env: dict[str, str], options: list[str]) -> None:
        """Everything after the spec checked out; the caller stops us on any error."""
        rootfs, systemd = self.state / "rootfs", hostinfo.systemd_is_pid1()
        tools = None
        if self.spec.user is not None:
            tools = agent.setpriv_tools(state_root() / "tools" / "setpriv")
        images.prepare_copy(cache, rootfs)
        for rel, is_dir in [
            (PROBE_DIR, True),
        ] + [(v.target, os.path.isdir(v.source)) for v in _volumes(self.spec)]:
            images.ensure_path(rootfs, rel, is_dir)
        env = dict(image_env)
        prefix: list[str] = []
        if self.spec.user is not None:
            prefix, home = self._user(rootfs)
            if home and "HOME" not in dict(_env(self.spec)):
                env["HOME"] = home
        self.agent.prepare(prefix)
        if not systemd:
            dirs = cg.plan(hostinfo.cgroup_version(), self.name)
            self.cgroups = cg.unique(dirs)
            (self.state / "cgroups").write_text(json.dumps([str(d) for d in self.cgroups]))
            cg.create(hostinfo.cgroup_version(), dirs, *self._limits())
        self.argv = nspawn_argv(
            self.spec, options, name=self.name, rootfs=rootfs, run=self.state / "run",
            probe_dir=hostinfo.probe_dir(), tools=tools, systemd=systemd, extra_env=env,
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
            if select.select([pidfd], [], [], START_WAIT)[0]:
                self._failed()
        finally:
            os.close(pidfd)

    def _limits(self) -> tuple[int | None, int | None, float | None]:
        return _memory(self.spec), self.spec.pids_limit, self.spec.cpus

    def _user(self, rootfs: Path) -> tuple[list[str], str | None]:
        assert self.spec.user is not None
        try:
            uid, gid, extra, _name, home = agent.resolve_user(
                self.spec.user,
                images.read_file(rootfs, "etc/passwd"),
                images.read_file(rootfs, "etc/group"),
            )
        except ValueError as exc:
            raise ContainerStartError(NAME, [f"user={self.spec.user}"], None, str(exc)) from None
        helpers = agent.HELPER_CAPS - capability_set(self.spec)
        return agent.drop_prefix(uid, gid, extra, helpers), home

    def _main_pid(self, prefix: list[str]) -> int:
        """Host pid of the main process (pid 2 inside), once it exec'd past the agent."""
        assert self.proc is not None
        stages = [[PROBE_BUSYBOX, "sh", "-c", agent.AGENT_SCRIPT]]
        if prefix:
            stages.append(prefix[:1])
        deadline = time.monotonic() + 2.0
        pid = None
        while time.monotonic() < deadline:
            pid = pid or agent.find_inner(self.proc.pid, 2)
            if pid is not None:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    self._failed()  # the main process is gone already
                words = [w.decode("utf-8", "replace") for w in cmd]
                if not any(words[: len(s)] == s for s in stages):
                    return pid
            time.sleep(0.002)
        if pid is None:
            self._failed()
        return pid or 0

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
        self._live: dict[str, NspawnContainer] = {}
        self._lock = threading.Lock()

    def availability(self) -> Availability:
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
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
        except RuntimeUnavailable as exc:
            return Availability(NAME, False, reason=exc.reason, hint=exc.hint)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Availability(NAME, False, reason=f"{exe} --version failed: {exc}")
        first = (out.stdout.splitlines() or ["?"])[0]
        return Availability(NAME, True, "systemd-nspawn " + first.removeprefix("systemd "))

    def start(self, spec: ContainerSpec) -> Container:
        systemd = hostinfo.systemd_is_pid1()
        options, env = spec_args(spec, systemd)
        if (spec.memory or spec.pids_limit or spec.cpus) and not systemd:
            cg.plan(hostinfo.cgroup_version(), "x")  # fails early if cgroupfs is unreadable
        root = state_root()
        cache, image_env = images.rootfs(spec.image, root, NAME)
        name = session.current().next_name(NAME)[:MACHINE_NAME_MAX]
        state = root / "nspawn" / name
        state.mkdir(parents=True, mode=0o700)
        (state / "owner").write_text(session.current().owner)
        c = NspawnContainer(self, spec, name, state, [], env)
        with self._lock:
            self._live[name] = c
        try:
            c.start(cache, image_env, options)
        except BaseException as exc:
            c.stop()
            if isinstance(exc, OSError | subprocess.SubprocessError):
                raise ContainerStartError(NAME, c.argv, None, str(exc)) from None
            raise
        return c

    def forget(self, c: Container) -> None:
        with self._lock:
            self._live.pop(c.name, None)

    def reap(self) -> int:
        """Remove state dirs (processes, cgroups, rootfs copies) of dead sessions."""
        base = state_root() / "nspawn"
        n = 0
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            try:
                owner = (d / "owner").read_text().strip()
            except OSError:
                owner = ""
                if time.time() - d.stat().st_mtime < 60:
                    continue  # being created right now
            if owner and session.owner_alive(owner):
                continue
            try:
                token = (d / "nspawn.pid").read_text().strip()
                if session.owner_alive(token):
                    agent.kill_tree(int(token.partition(".")[0]))
            except (OSError, ValueError):
                pass
            try:
                dirs = [Path(p) for p in json.loads((d / "cgroups").read_text())]
            except (OSError, ValueError):
                dirs = []
            cg.kill_and_remove([p for p in dirs if p.parent.name == cg.PARENT])
            remove_nspawn_files(d.name, d / "rootfs")
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n

    def close(self) -> None:
        with self._lock:
            live = list(self._live.values())
        for c in live:
            c.stop()
