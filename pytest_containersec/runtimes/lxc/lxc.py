"""LXC adapter: ``lxc-start``/``lxc-attach``/``lxc-stop`` argv lists on a private lxcpath.

Each container is ``$STATE/lxc/<name>/`` (the lxcpath is ``$STATE/lxc``): ``config``
(see :mod:`.lxc_spec`), ``rootfs/`` (a private copy of the image's rootfs, mounted
idmapped), ``run/init`` (the main command's script), ``console.log`` and ``owner`` (the
session's token, for :meth:`LxcRuntime.reap`). Execs go through ``lxc-attach``, which
joins the container's namespaces and cgroup and applies its capability drops, seccomp
policy, no_new_privs and LSM profile (measured: the probe's own /proc/self/status equals
the host's view of the main process; any difference is an ``inside`` mismatch).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from ...errors import ContainerStartError, RuntimeUnavailable, UnsupportedSpec
from ...linux import hostinfo, session
from ...model import Declared
from ...spec import ContainerSpec
from .. import procs
from ..base import (
    DEFAULT_EXEC_TIMEOUT,
    PROBE_DIR,
    Availability,
    Container,
    ExecResult,
    LiveContainers,
    log_tail,
)
from ..nspawn import nspawn_agent as agent
from ..nspawn import nspawn_cgroup as cg
from ..nspawn import nspawn_image as images
from ..nspawn.nspawn import state_root
from ..oci import oci
from . import lxc_spec as mapping

NAME = mapping.NAME
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FIX = "apt-get install lxc (make setup)"


def lxcpath() -> Path:
    """``$STATE/lxc``: the private lxcpath (``-P``), one folder per container."""
    return state_root() / "lxc"


def _run(argv: list[str], timeout: float = STOP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _subids() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    return mapping.parse_subids(read("/etc/subuid")), mapping.parse_subids(read("/etc/subgid"))


def apparmor_enabled() -> bool:
    """Whether the kernel's AppArmor is on (a privileged container's config then says
    ``unconfined``); False when that cannot be read."""
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


def cgroup_dirs(name: str) -> list[Path]:
    """Every cgroup LXC makes for ``name`` (payload and monitor, each hierarchy),
    deepest first."""
    root = Path("/sys/fs/cgroup")
    tops = [root] if hostinfo.cgroup_version() == 2 else [p for p in root.iterdir() if p.is_dir()]
    out: list[Path] = []
    for top in tops:
        for kind in ("lxc.payload.", "lxc.monitor.", "lxc.pivot/lxc.payload."):
            d = top / f"{kind}{name}"
            if d.is_dir():
                out += sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
                out.append(d)
    return out


def remove_cgroups(name: str) -> None:
    """Kill what is left in ``name``'s cgroups and remove them (after a lost monitor)."""
    cg.kill_and_remove(cgroup_dirs(name), wait=1.0)


def destroy(name: str) -> None:
    """Stop ``name`` (SIGKILL through lxc-stop), then remove its cgroups and folder."""
    path = lxcpath()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        _run(["lxc-stop", "-k", "-n", name, "-P", str(path)])
    remove_cgroups(name)
    shutil.rmtree(path / name, ignore_errors=True)


def init_ids(runtime: str, user: str, rootfs: Path, no_groups: str) -> tuple[int, int]:
    """The uid and gid of ``user`` by docker's rules against ``rootfs``'s /etc files, for an
    LXC init (``lxc.init.uid``/``gid``, Incus's too). A user with supplementary groups in
    the image is UnsupportedSpec (``no_groups``: why the main process would not get them)."""
    try:
        uid, gid, extra, _name, _home = agent.resolve_user(
            user, images.read_file(rootfs, "etc/passwd"), images.read_file(rootfs, "etc/group")
        )
    except ValueError as exc:
        raise ContainerStartError(runtime, [f"user={user}"], None, str(exc)) from None
    if extra:
        raise UnsupportedSpec(
            "user", runtime,
            f"{user!r} has supplementary groups {extra} in the image; {no_groups}, so the "
            "process would differ from Docker's",
        )  # fmt: skip
    return uid, gid


class LxcContainer(Container):
    """One LXC container on the private lxcpath, run detached by ``lxc-start``; execs are
    ``lxc-attach`` with the container's environment (and the user's uid and gid)."""

    def __init__(self, rt: LxcRuntime, spec: ContainerSpec, name: str, state: Path) -> None:
        self._rt = rt
        self.runtime = NAME
        self.name = self.id = name
        self.spec = spec
        # what runs: spec with the image config's USER and ENTRYPOINT (Docker's rules)
        self.run_spec = images.with_image_config(
            spec, images.image_config(spec.image, state_root()) or {}
        )
        self.engine_rootless = False
        self.host_pid = 0
        self.state = state
        self.config: list[str] = []
        self.env: dict[str, str] = {}
        self.ids: tuple[int, int] | None = None
        self._stopped = False

    def _lxc(self, tool: str, *args: str) -> list[str]:
        return [tool, "-n", self.name, "-P", str(lxcpath()), *args]

    def start(self, cache: Path, image_env: dict[str, str]) -> None:
        """Everything after the container's folder exists; the caller stops us on error."""
        rootfs = self.state / "rootfs"
        images.prepare_copy(cache, rootfs, meanwhile=self.new_probe_copy)
        images.ensure_path(rootfs, PROBE_DIR, is_dir=True)
        idmap = mapping.idmap_for(self.run_spec, *_subids())
        if self.run_spec.user is not None:
            no_groups = "LXC 5 sets none (lxc.init.groups is newer)"
            self.ids = init_ids(NAME, self.run_spec.user, rootfs, no_groups)
        self.env = {"PATH": DEFAULT_PATH, **image_env, **dict(self.run_spec.env)}
        run = self.state / "run"
        run.mkdir(mode=0o755)
        (run / "init").write_text(mapping.init_script(self.run_spec))
        (run / "init").chmod(0o644)
        copy = self.probe_copy
        assert copy is not None
        self.config = mapping.config_lines(
            self.run_spec, name=self.name, rootfs=rootfs, probe_dir=copy.path, run_dir=run,
            log=self.state / "console.log", idmap=idmap, cgroup_version=hostinfo.cgroup_version(),
            ids=self.ids, env=self.env, apparmor=apparmor_enabled(),
        )  # fmt: skip
        (self.state / "config").write_text("\n".join(self.config) + "\n")
        argv = self._lxc("lxc-start", "-d", "-o", str(self.state / "lxc.log"), "-l", "INFO")
        try:
            out = _run(argv, START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ContainerStartError(NAME, argv, None, "lxc-start did not return") from None
        self.host_pid = self._init_pid() if out.returncode == 0 else 0
        # the init script resolves the command, then execs it
        wrappers = [mapping.init_argv()]
        if not self.host_pid or not oci.survived(
            NAME, argv, self.run_spec, self.host_pid, wrappers, START_TIMEOUT
        ):
            self._failed(argv, out.stderr)

    def _failed(self, argv: list[str], stderr: str) -> None:
        """The main process exited (or never ran): its status, LXC's errors, its output."""
        deadline = time.monotonic() + STOP_TIMEOUT  # the monitor logs the status as it ends
        while time.monotonic() < deadline:
            status, errors = mapping.log_outcome(procs.tail(self.state / "lxc.log", 400))
            if status is not None or self._init_pid() == 0:
                break
            time.sleep(0.02)
        why = [e for e in (stderr.strip(), "\n".join(errors)) if e]
        why.append("the container's main process exited at once; output:\n" + self.logs())
        raise ContainerStartError(NAME, argv, status, "\n".join(why))

    def _init_pid(self) -> int:
        out = _run(self._lxc("lxc-info", "-p", "-H"))
        text = out.stdout.strip()
        return int(text) if out.returncode == 0 and text.isdigit() else 0

    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """``lxc-attach --clear-env`` with the container's environment (and the user's uid and gid),
        under the probe busybox's ``timeout``. Raises RuntimeUnavailable (not ProbeError) once
        stopped."""
        return self._attach(argv, timeout, self.ids)

    def root_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """``lxc-attach`` as the container's root (uid and gid 0, the config's capabilities)."""
        return self._attach(argv, timeout, None)

    def image_user(self) -> str | None:
        """The cached image config's USER ("" when it sets none); None without a config."""
        return images.image_user(self.spec.image, state_root())

    def _attach(self, argv: list[str], timeout: float, ids: tuple[int, int] | None) -> ExecResult:
        self.guard_probe()
        if self._stopped:
            raise RuntimeUnavailable(NAME, f"container {self.name} is stopped")
        cmd = self._lxc("lxc-attach", "--clear-env")
        cmd += [f"--set-var={k}={v}" for k, v in self.env.items()]
        if ids is not None:
            cmd += ["-u", str(ids[0]), "-g", str(ids[1])]
        wrapped = oci.wrap_with_timeout(list(argv), timeout)
        proc = subprocess.Popen(
            [*cmd, "--", *wrapped],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        sessions: set[int] = set()

        def note() -> None:  # the attached command's session, while it runs
            sessions.update(s for s in map(_sid, procs.descendants(proc.pid)) if s)

        def kill() -> None:
            note()
            procs.kill_tree(proc.pid)
            for sid in sessions:
                oci.kill_session(sid, self.host_pid)

        return oci.run_exec(
            NAME, wrapped, timeout, lambda: stream_pipes(proc), proc.poll, kill, note
        )

    def declared(self) -> Declared:
        """The container's LXC config as written (``lxc.*`` keys), normalized."""
        return mapping.declared_from_config(self.config, self.run_spec)

    def logs(self) -> str:
        """The tail of the main process's console log (bounded)."""
        return log_tail(self.state / "console.log")

    def stop(self) -> None:
        """``lxc-stop -k``, then remove its cgroups and folder (the rootfs copy too); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            destroy(self.name)
        finally:
            self.release_probe()
            self._rt.forget(self)


def stream_pipes(proc: subprocess.Popen[bytes]) -> Iterable[tuple[bytes | None, bytes | None]]:
    """stdout/stderr chunks until EOF, or until EOF_GRACE after lxc-attach exited (a
    background child of the command may hold the pipes open: Docker returns then too)."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, 0)
    sel.register(proc.stderr, selectors.EVENT_READ, 1)
    exited: float | None = None
    try:
        while sel.get_map():
            if exited is None and proc.poll() is not None:
                exited = time.monotonic()
            if exited is not None and time.monotonic() - exited > agent.EOF_GRACE:
                return
            for key, _ in sel.select(0.1):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.data == 0:
                    yield chunk, None
                else:
                    yield None, chunk
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)


def _sid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rfind(")") + 2 :].split()[3])
    except (OSError, ValueError, IndexError):
        return None


class LxcRuntime:
    """The ``lxc`` runtime: one LXC container per spec, root-owned, idmapped by default."""

    def __init__(self) -> None:
        self.name = NAME
        self.live: LiveContainers[LxcContainer] = LiveContainers(NAME)

    def availability(self) -> Availability:
        """Check the lxc tools, root, LXC's common.conf, a sub-id range root holds for both uids and
        gids, and the static busybox; starts nothing."""
        missing = [t for t in ("lxc-start", "lxc-attach", "lxc-stop", "lxc-info")
                   if shutil.which(t) is None]  # fmt: skip
        if missing:
            return Availability(NAME, False, reason=f"{', '.join(missing)} not found", hint=FIX)
        if os.geteuid() != 0:
            return Availability(
                NAME, False, reason="the lxc runtime runs as root", hint="run as root"
            )
        if not (mapping.LXC_CONFIG / "common.conf").is_file():
            return Availability(
                NAME, False, reason=f"{mapping.LXC_CONFIG}/common.conf missing", hint=FIX
            )
        uids, gids = _subids()
        if not [r for r in uids if r in gids]:
            return Availability(
                NAME, False,
                reason="root has no subordinate id range in /etc/subuid and /etc/subgid "
                "(LXC maps through newuidmap, which insists on one)",
                hint="run the project setup (make setup), or add root:231072:65536 to both",
            )  # fmt: skip
        try:
            hostinfo.static_busybox()
            out = _run(["lxc-start", "--version"])
        except RuntimeUnavailable as exc:
            return Availability(NAME, False, reason=exc.reason, hint=exc.hint)
        except (OSError, subprocess.SubprocessError) as exc:
            return Availability(NAME, False, reason=f"lxc-start --version failed: {exc}", hint=FIX)
        return Availability(NAME, True, f"LXC {out.stdout.strip()}")

    def start(self, spec: ContainerSpec) -> Container:
        """Copy the image's rootfs, write the config and ``lxc-start`` it; properties and an
        unmappable userns or seccomp profile are refused before anything is made."""
        if spec.properties:
            raise UnsupportedSpec("properties", NAME, "systemd unit properties: use systemd-run")
        mapping.idmap_for(spec, *_subids())  # fails before anything is made
        mapping.seccomp_profile(spec)
        cache, image_env = images.rootfs(spec.image, state_root(), NAME)
        name = session.current().next_name(NAME)
        state = lxcpath() / name
        lxcpath().mkdir(parents=True, exist_ok=True)
        lxcpath().chmod(0o755)  # the idmapped root walks it
        state.mkdir(mode=0o755)
        session.claim(state)
        c = LxcContainer(self, spec, name, state)
        return self.live.launch(c, lambda: c.start(cache, image_env), lambda: ["lxc-start", name])

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves it running; the next session's reap() removes it."""
        self.live.forget(c)

    def reap(self) -> int:
        """Stop and remove the containers of sessions whose process is dead."""
        n = 0
        base = lxcpath()
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if not session.orphaned(d):
                continue
            destroy(d.name)
            n += 1
        return n

    def close(self) -> None:
        """Stop every container this session still tracks."""
        self.live.stop_all()
