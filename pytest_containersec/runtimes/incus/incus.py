"""Incus adapter: ``incus`` CLI argv lists against the local daemon (root, its unix socket).

Each container is one Incus instance created in a single ``POST /1.0/instances`` (``incus
query``; config and devices: :mod:`.incus_spec`), with no profile and no network device,
from a local image imported from the rootfs cache (no registry, no download), then ``incus
start``. ``$STATE/incus/<name>/`` holds ``run/init`` (the main command's script, mounted
read-only) and ``owner``; the instance carries ``user.containersec.owner`` (the session's
token) for :meth:`IncusRuntime.reap`. Execs are ``incus exec`` (the daemon's forkexec
joins the container's namespaces, cgroup, seccomp filter and LSM profile).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ...errors import ContainerStartError, RuntimeUnavailable, UnsupportedSpec
from ...linux import hostinfo, session
from ...model import Declared
from ...spec import ContainerSpec, Volume
from .. import procs
from ..base import (
    DEFAULT_EXEC_TIMEOUT,
    MAX_OUTPUT,
    Availability,
    Container,
    ExecResult,
    LiveContainers,
)
from ..lxc import lxc_spec
from ..lxc.lxc import DEFAULT_PATH, init_ids, stream_pipes
from ..nspawn import nspawn_image as images
from ..nspawn.nspawn import state_root
from ..oci import oci
from . import incus_spec as mapping

NAME = mapping.NAME
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
QUERY_TIMEOUT = 15.0
IMPORT_TIMEOUT = 300.0
FIX = "install Incus (Debian trixie: apt-get install incus-base incus-client) and run make setup"


def incus_dir() -> Path:
    """``$STATE/incus``: one folder per container (its init script and owner token)."""
    return state_root() / "incus"


def _run(
    argv: list[str], timeout: float = QUERY_TIMEOUT, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout,
        input=data, stdin=None if data is not None else subprocess.DEVNULL,
    )  # fmt: skip


def query(path: str, timeout: float = QUERY_TIMEOUT) -> Any:
    """``incus query PATH`` as JSON; RuntimeUnavailable naming the error when it fails."""
    out = _run(["incus", "query", path], timeout)
    if out.returncode != 0:
        raise RuntimeUnavailable(NAME, f"incus query {path}: {out.stderr.strip()}", FIX)
    return json.loads(out.stdout)


def ensure_image(image: str) -> tuple[str, Path, dict[str, str]]:
    """The local alias of ``image`` (imported now from its rootfs cache if missing), the
    cache's rootfs and its image env."""
    rootfs, env = images.rootfs(image, state_root(), NAME)
    entry = rootfs.parent
    version = ""
    for f in ("stamp", "image-id"):
        with contextlib.suppress(OSError):
            version = (entry / f).read_text().strip()
            break
    alias = mapping.image_alias(entry.name, version or str(rootfs.stat().st_mtime_ns))
    if _run(["incus", "image", "info", alias]).returncode == 0:
        return alias, rootfs, env
    with (entry.parent / f".{entry.name}.incus.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _run(["incus", "image", "info", alias]).returncode == 0:
            return alias, rootfs, env
        with tempfile.TemporaryDirectory(prefix="containersec-incus-") as tmp:
            meta = mapping.metadata_yaml(platform.machine(), int(time.time()), image)
            (Path(tmp) / "metadata.yaml").write_text(meta)
            tar = str(Path(tmp) / "image.tar")
            # file capabilities are xattrs: without them `setcap cap_net_raw+ep` was lost
            argv = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
                    "-cf", tar, "-C", tmp, "metadata.yaml", "-C", str(entry), "rootfs"]  # fmt: skip
            packed = _run(argv, IMPORT_TIMEOUT)
            if packed.returncode != 0:
                raise ContainerStartError(NAME, argv, packed.returncode, packed.stderr)
            argv = ["incus", "image", "import", tar, "--alias", alias]
            out = _run(argv, IMPORT_TIMEOUT)
            if out.returncode != 0:
                raise ContainerStartError(NAME, argv, out.returncode, out.stderr.strip())
    return alias, rootfs, env


def destroy(name: str) -> None:
    """``incus delete --force`` (SIGKILL and removal of its rootfs), then its folder."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        _run(["incus", "delete", "--force", name], STOP_TIMEOUT)
    shutil.rmtree(incus_dir() / name, ignore_errors=True)


def instance_exists(name: str) -> bool:
    """Whether Incus has an instance called ``name``."""
    return _run(["incus", "query", f"/1.0/instances/{name}"]).returncode == 0


class IncusContainer(Container):
    """One Incus container; execs are ``incus exec`` as the spec's uid and gid."""

    def __init__(self, rt: IncusRuntime, spec: ContainerSpec, name: str, state: Path) -> None:
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
        self.ids: tuple[int, int] | None = None
        self._stopped = False

    def start(self, alias: str, rootfs: Path, image_env: dict[str, str]) -> None:
        """Everything after the container's folder exists; the caller stops us on error."""
        if self.run_spec.user is not None:
            no_groups = "nothing sets them for the main process"
            self.ids = init_ids(NAME, self.run_spec.user, rootfs, no_groups)
        env = {"PATH": DEFAULT_PATH, **image_env, **dict(self.run_spec.env)}
        run = self.state / "run"
        run.mkdir(mode=0o755)
        (run / "init").write_text(lxc_spec.init_script(self.run_spec))
        (run / "init").chmod(0o644)
        copy = self.new_probe_copy()
        sess = session.current()
        config = mapping.instance_config(
            self.run_spec, owner=sess.owner, session=sess.id, ids=self.ids, env=env
        )
        kinds = {}
        for vol in self.run_spec.volumes:
            v = vol if isinstance(vol, Volume) else Volume.parse(vol)
            if os.path.exists(v.source):
                kinds[v.source] = os.path.isdir(v.source)
        devs = mapping.devices(
            self.run_spec, probe_dir=str(copy.path), run_dir=str(run), is_dir=kinds
        )
        body = json.dumps(mapping.create_request(self.name, alias, config, devs))
        argv = ["incus", "query", "--wait", "-X", "POST", "/1.0/instances", "--data", body]
        try:
            made = _run(argv, START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ContainerStartError(NAME, argv[:5], None, "incus did not create it") from None
        if made.returncode != 0:
            raise ContainerStartError(NAME, argv[:5], made.returncode, made.stderr.strip())
        if self.run_spec.read_only:
            self._mount_points(devs)
        argv = ["incus", "start", self.name]
        try:
            out = _run(argv, START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ContainerStartError(NAME, argv, None, "incus start did not return") from None
        self.host_pid = self._init_pid() if out.returncode == 0 else 0
        # the init script resolves the command, then execs it
        wrappers = [lxc_spec.init_argv()]
        if not self.host_pid or not oci.survived(
            NAME, argv, self.run_spec, self.host_pid, wrappers, START_TIMEOUT
        ):
            why = [e for e in (out.stderr.strip(), self._show_log()) if e]
            why.append("the container's main process exited at once; output:\n" + self.logs())
            raise ContainerStartError(NAME, argv, out.returncode or None, "\n".join(why))

    def _mount_points(self, devs: dict[str, dict[str, str]]) -> None:
        """A read-only root cannot get the devices' mount points at start (LXC: "Failed to
        setup mount entries", measured): make them in the instance's rootfs first (the
        ``dir`` pool keeps it as a folder: ``SOURCE/containers/NAME/rootfs``)."""
        try:
            pool = query(f"/1.0/storage-pools/{mapping.POOL}")
            rootfs = Path(pool["config"]["source"]) / "containers" / self.name / "rootfs"
        except (RuntimeUnavailable, KeyError, TypeError, ValueError) as exc:
            raise UnsupportedSpec(
                "read_only",
                NAME,
                f"cannot find the instance's rootfs on pool {mapping.POOL}: {exc}",
            ) from None
        if not rootfs.is_dir():
            raise UnsupportedSpec(
                "read_only",
                NAME,
                f"{rootfs} is not a folder (a {mapping.POOL!r} pool that is not dir)",
            )
        for dev in devs.values():
            if dev.get("type") == "disk" and dev.get("path", "/") != "/" and "source" in dev:
                images.ensure_path(rootfs, dev["path"], is_dir=os.path.isdir(dev["source"]))

    def _show_log(self) -> str:
        """LXC's errors from the instance's log, and the mount and rootfs lines of the LXC
        config Incus generated (bounded)."""
        lines: list[str] = []
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = _run(["incus", "info", "--show-log", self.name])
            lines += [ln for ln in out.stdout.splitlines() if " ERROR " in ln][-8:]
        with contextlib.suppress(OSError):
            conf = Path(f"/run/incus/{self.name}/lxc.conf").read_text()
            keys = ("lxc.mount.entry", "lxc.rootfs", "lxc.idmap", "lxc.apparmor.profile")
            lines += [ln for ln in conf.splitlines() if ln.startswith(keys)][:30]
        return "\n".join(lines)

    def _init_pid(self) -> int:
        try:
            state = query(f"/1.0/instances/{self.name}/state")
        except (RuntimeUnavailable, ValueError):
            return 0
        pid = state.get("pid") if isinstance(state, dict) else None
        return pid if isinstance(pid, int) and pid > 0 else 0

    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """``incus exec -T`` as the container's uid and gid (its ``environment.*`` set), under
        the probe busybox's ``timeout``. Raises RuntimeUnavailable once stopped."""
        return self._exec(argv, timeout, self.ids)

    def root_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """``incus exec`` as the container's root (the instance's capabilities)."""
        return self._exec(argv, timeout, None)

    def image_user(self) -> str | None:
        """The cached image config's USER ("" when it sets none); None without a config."""
        return images.image_user(self.spec.image, state_root())

    def _exec(self, argv: list[str], timeout: float, ids: tuple[int, int] | None) -> ExecResult:
        self.guard_probe()
        if self._stopped:
            raise RuntimeUnavailable(NAME, f"container {self.name} is stopped")
        cmd = ["incus", "exec", "-T", "--cwd", "/"]
        if ids is not None:
            cmd += ["--user", str(ids[0]), "--group", str(ids[1])]
        wrapped = oci.wrap_with_timeout(list(argv), timeout)
        proc = subprocess.Popen(
            [*cmd, self.name, "--", *wrapped],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

        def kill() -> None:  # the busybox timeout inside kills the command itself
            procs.kill_tree(proc.pid)

        return oci.run_exec(NAME, wrapped, timeout, lambda: stream_pipes(proc), proc.poll, kill)

    def declared(self) -> Declared:
        """The instance's expanded config and devices as Incus reports them, normalized."""
        return mapping.declared_from_instance(query(f"/1.0/instances/{self.name}"), self.run_spec)

    def logs(self) -> str:
        """The main process's console output (``incus console --show-log``), bounded."""
        try:
            out = _run(["incus", "console", self.name, "--show-log"])
        except (OSError, subprocess.SubprocessError) as exc:
            return f"(logs unavailable: {exc})"
        return (
            out.stdout[-MAX_OUTPUT:]
            if out.returncode == 0
            else f"(logs unavailable: {out.stderr.strip()})"
        )

    def stop(self) -> None:
        """``incus delete --force``, then its folder; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            destroy(self.name)
        finally:
            self.release_probe()
            self._rt.forget(self)


class IncusRuntime:
    """The ``incus`` runtime: one Incus container per spec, unprivileged by default."""

    def __init__(self) -> None:
        self.name = NAME
        self.live: LiveContainers[IncusContainer] = LiveContainers(NAME)

    def availability(self) -> Availability:
        """The incus client, root, the daemon, the ``default`` storage pool and the static
        busybox; starts nothing."""
        if shutil.which("incus") is None:
            return Availability(
                NAME, False, reason="incus not found (Incus is not installed)", hint=FIX
            )
        if os.geteuid() != 0:
            return Availability(
                NAME, False, reason="the incus runtime runs as root", hint="run as root"
            )
        try:
            hostinfo.static_busybox()
            server = query("/1.0")
            query(f"/1.0/storage-pools/{mapping.POOL}")
        except RuntimeUnavailable as exc:
            return Availability(NAME, False, reason=exc.reason, hint=exc.hint or FIX)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return Availability(NAME, False, reason=f"incus query failed: {exc}", hint=FIX)
        version = (server.get("environment") or {}).get("server_version", "?")
        lxc = (server.get("environment") or {}).get("driver_version", "?")
        return Availability(NAME, True, f"Incus {version} (LXC {lxc})")

    def start(self, spec: ContainerSpec) -> Container:
        """Import the image if needed, create the instance and start it; an unmappable field
        is refused before anything is made."""
        sess = session.current()
        mapping.instance_config(
            spec, owner=sess.owner, session=sess.id, ids=None, env=dict(spec.env)
        )
        alias, rootfs, image_env = ensure_image(spec.image)
        name = sess.next_name(NAME)
        state = incus_dir() / name
        incus_dir().mkdir(parents=True, exist_ok=True)
        state.mkdir(mode=0o755)
        session.claim(state)
        c = IncusContainer(self, spec, name, state)
        return self.live.launch(
            c, lambda: c.start(alias, rootfs, image_env), lambda: ["incus", "start", name]
        )

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves it running; the next session's reap() removes it."""
        self.live.forget(c)

    def reap(self) -> int:
        """Delete the instances (and folders) of sessions whose process is dead."""
        gone: set[str] = set()
        try:
            instances = query("/1.0/instances?recursion=1")
        except (RuntimeUnavailable, ValueError, OSError, subprocess.SubprocessError):
            instances = []
        for inst in instances if isinstance(instances, list) else []:
            owner = (inst.get("config") or {}).get(mapping.OWNER_KEY)
            if owner and not session.owner_alive(owner):
                destroy(inst["name"])
                gone.add(inst["name"])
        base = incus_dir()
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if not session.orphaned(d):
                continue
            destroy(d.name)
            gone.add(d.name)
        return len(gone)

    def close(self) -> None:
        """Stop every container this session still tracks."""
        self.live.stop_all()
