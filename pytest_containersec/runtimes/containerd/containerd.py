"""containerd adapter: ``ctr`` argv lists in the ``containersec`` namespace.

The daemon: ``$CONTAINERSEC_CONTAINERD_ADDRESS``, else the host's
``/run/containerd/containerd.sock`` when it answers (containerd.service), else a
containerd of our own started on first use (own root, state and socket under
/var/lib/containersec and /run/containersec, CRI plugin off), shared by the sessions that
hold a lease on it and stopped by the last (the lease logic of docker_daemons). Docker's
private containerd is never touched. How each spec field maps: :mod:`.containerd_spec`.

Per container ``$STATE/containerd/<name>/`` holds ``owner`` (for :meth:`reap`), the
task's log and pid file; the task's cgroup is ``/containersec.containerd/<name>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import ContainerStartError, ImageNotFound, ProbeError, RuntimeUnavailable
from ...linux import hostinfo, session
from ...model import Declared
from ...spec import ContainerSpec
from .. import procs
from ..base import (
    DEFAULT_EXEC_TIMEOUT,
    Availability,
    Container,
    ExecResult,
    LiveContainers,
    log_tail,
)
from ..docker.docker_daemons import DaemonConfig, DockerDaemon
from ..lxc.lxc import stream_pipes
from ..nspawn import nspawn_agent as agent
from ..nspawn import nspawn_cgroup as cg
from ..nspawn import nspawn_image as images
from ..nspawn.nspawn import state_root
from ..oci import oci
from ..oci.oci_variants import sandbox_of
from ..podman import podman_service as svc
from . import containerd_spec as mapping

NAME = mapping.NAME
SYSTEM_SOCKET = Path("/run/containerd/containerd.sock")
ADDRESS_ENV = "CONTAINERSEC_CONTAINERD_ADDRESS"
CTR_TIMEOUT = 60.0
# `docker save | ctr images import` of a large image (postgres, 130 MB) took over 60 s on
# the VM host under TCG; as Incus's image import
IMPORT_TIMEOUT = 300.0
FIX = "apt-get install containerd (make setup)"
IMAGE_LABEL = "io.containersec.source"
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)  # + an empty SETTINGS frame


def grpc_answers(sock: Path, timeout: float = 2.0) -> bool:
    """A gRPC (HTTP/2) server on ``sock`` answers the client preface with SETTINGS."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(_HTTP2_PREFACE[:24] + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = s.recv(9)
    except OSError:
        return False
    return len(head) == 9 and head[3] == 0x04


def daemon_config() -> DaemonConfig:
    """The containerd of our own, the fallback when neither ``$CONTAINERSEC_CONTAINERD_ADDRESS`` nor
    the system socket answers: root-only, its socket and state under /run/containersec, its root
    under the state folder, CRI plugin off. Its ``require`` writes the config file."""
    run = svc.ROOTFUL_RUN_DIR
    base = run / "containerd"
    toml = run / "containerd.toml"
    root = session.STATE_DIR / "containerd-root"

    def require() -> None:
        if shutil.which("containerd") is None or shutil.which("ctr") is None:
            raise RuntimeUnavailable(NAME, "containerd or ctr not found", FIX)
        if os.geteuid() != 0:
            raise RuntimeUnavailable(NAME, "its daemon runs as root", "run as root")
        run.mkdir(mode=0o755, parents=True, exist_ok=True)
        toml.write_text(
            f'version = 2\nroot = "{root}"\nstate = "{base}-state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{base}.sock"\n[ttrpc]\n  address = "{base}.sock.ttrpc"\n'
        )

    argv = (shutil.which("containerd") or "containerd", f"--config={toml}")
    return DaemonConfig(NAME, False, Path(f"{base}.sock"), run, Path(f"{base}.pid"), argv,
                        require=require, answers=grpc_answers)  # fmt: skip


def containers_root() -> Path:
    """``$STATE/containerd``: one folder per container (``owner``, ``log``, ``pid``), walked by
    :meth:`ContainerdRuntime.reap`."""
    return state_root() / "containerd"


class ContainerdContainer(Container):
    """A ``ctr run`` task in the ``containersec`` namespace. Without ``--user`` in ctr, the user
    switch is a setpriv prefix put in front of the main command and of every exec alike."""

    def __init__(self, rt: ContainerdRuntime, spec: ContainerSpec, name: str, state: Path) -> None:
        self._rt = rt
        self.runtime = rt.name
        self.name = self.id = name
        self.spec = spec
        self.run_spec = spec  # with the image config's USER and ENTRYPOINT (start)
        self.engine_rootless = False
        self.host_pid = 0
        self.sandbox = sandbox_of(rt.runc_binary)
        self.state = state
        self.prefix: list[str] = []
        self.argv: list[str] = []
        self.pids_cgroups: list[Path] = []
        self._stopped = False
        self._execs = 0

    def start(self) -> None:
        """Make the probe copy and the pids cgroup, run the task and read its pid file; raises
        ContainerStartError when ctr fails or the task exits at once. The caller stops us on any
        error."""
        rt = self._rt
        # The image's ENTRYPOINT stays in front of a given command, as on Docker (ctr's own
        # `run IMAGE ID ARGS` would replace it). Its USER needs nothing: ctr applies it
        # itself (oci.WithImageConfig) when the spec names none, so run_spec says so and
        # only an explicit spec.user gets the setpriv prefix, from ctr's root.
        spec = self.run_spec = images.with_image_config(self.spec, rt.image_config(self.spec.image))
        copy = self.new_probe_copy()
        if self.spec.user is not None:
            self.prefix = self._user()
            copy.add_tools()  # the user switch runs the host's setpriv from tools/
        self.pids_cgroups = pids_cgroup(self.name, spec.pids_limit)
        self.argv = mapping.run_argv(
            spec.replace(user=self.spec.user), name=self.name, log=self.state / "log",
            pid_file=self.state / "pid",
            probe_dir=copy.path, tools=None, prefix=self.prefix,
            labels=session.current().labels, runc_binary=rt.runc_binary,
        )  # fmt: skip
        out = rt.ctr(*self.argv, timeout=CTR_TIMEOUT)
        if out.returncode != 0:
            raise ContainerStartError(self.runtime, self.argv, out.returncode, out.stderr.strip())
        try:
            self.host_pid = int((self.state / "pid").read_text().strip())
        except (OSError, ValueError):
            self._failed()
        # the user switch runs as root until it execs; under gVisor the pid is the Sentry
        wrappers = [self.prefix[:1]] if self.sandbox is None else None
        if not oci.survived(self.runtime, self.argv, spec, self.host_pid, wrappers, CTR_TIMEOUT):
            self._failed()

    def _failed(self) -> None:
        """The task exited at once: its exit status (``ctr task delete`` reports it)."""
        out = self._rt.ctr("task", "delete", self.name)
        status = None
        words = out.stderr.split("non-zero exit code")
        if len(words) > 1 and words[1].split()[0].strip('"').isdigit():
            status = int(words[1].split()[0].strip('"'))
        raise ContainerStartError(
            self.runtime, self.argv, status,
            "the container's main process exited at once; output:\n" + self.logs(),
        )  # fmt: skip

    def _user(self) -> list[str]:
        user = self.spec.user
        assert user is not None
        passwd, group = self._rt.image_files(self.spec.image)
        try:
            uid, gid, extra, _name, _home = agent.resolve_user(user, passwd, group)
        except ValueError as exc:
            raise ContainerStartError(NAME, [f"user={user}"], None, str(exc)) from None
        helpers = agent.HELPER_CAPS - mapping.capability_set(self.spec)
        return agent.drop_prefix(uid, gid, extra, helpers)

    def image_user(self) -> str | None:
        """The image config's USER ("" when it sets none), Docker's, read at import."""
        return str(self._rt.image_config(self.spec.image).get("User") or "")

    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """``ctr task exec`` behind the user-switch prefix, under the probe busybox's ``timeout``;
        on a host-side timeout the exec's own sessions in the container are killed too. ProbeError
        once stopped."""
        return self._exec(argv, timeout, self.prefix)

    def root_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """``ctr task exec --user 0`` without the user switch: root with the task's
        capabilities (also where the image's USER made the task non-root)."""
        return self._exec(argv, timeout, [], ["--user", "0"])

    def _exec(
        self, argv: list[str], timeout: float, prefix: list[str], opts: Sequence[str] = ()
    ) -> ExecResult:
        self.guard_probe()
        if self._stopped:
            raise ProbeError(self.runtime, "the container is stopped")
        self._execs += 1
        exec_id = f"e{self._execs}-{os.getpid()}"
        wrapped = oci.wrap_with_timeout([*prefix, *argv], timeout)
        cmd = self._rt.ctr_argv("task", "exec", f"--exec-id={exec_id}", *opts, self.name, *wrapped)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        sessions: set[int] = set()

        def note() -> None:  # the exec's own session (runc makes each process a leader)
            sessions.update(exec_sessions(self.host_pid, wrapped))

        def kill() -> None:
            note()
            self._rt.ctr("task", "kill", "-s", "SIGKILL", f"--exec-id={exec_id}", self.name)
            # under gVisor host_pid is the Sentry, in the host's pid namespace: no host
            # session is the exec's (the timeout inside kills it)
            for sid in sessions if self.sandbox is None else ():
                oci.kill_session(sid, self.host_pid)
            procs.kill_tree(proc.pid)

        try:
            return oci.run_exec(self.runtime, wrapped, timeout, lambda: stream_pipes(proc),
                                proc.poll, kill, note)  # fmt: skip
        finally:  # collected whatever happened (a killed ctr is reaped here)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def declared(self) -> Declared:
        """``ctr containers info`` (the OCI spec containerd stored), normalized."""
        out = self._rt.ctr("containers", "info", self.name)
        if out.returncode != 0:
            raise ProbeError(self.runtime, f"ctr containers info failed: {out.stderr.strip()}")
        declared = mapping.declared_from_info(
            json.loads(out.stdout), self.spec, self.spec.pids_limit
        )
        declared["user"] = self.run_spec.user  # the image's USER, which ctr applied
        return declared

    def logs(self) -> str:
        """The tail of the task's log file (bounded)."""
        return log_tail(self.state / "log")

    def stop(self) -> None:
        """Kill and delete the task, the container with its snapshot, its cgroups and state folder;
        idempotent: a failed removal is not retried (a later reap() finishes it)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._rt.remove(self.name)
        finally:
            self.release_probe()
            self._rt.forget(self)


def exec_sessions(container_pid: int, argv: list[str]) -> set[int]:
    """Session ids of the processes in ``container_pid``'s pid namespace running ``argv``
    (busybox ``timeout`` becomes the command it runs: ``argv[5:]`` is matched too)."""
    wants = {b"\0".join(a.encode() for a in cmd) + b"\0" for cmd in (argv, argv[5:]) if cmd}
    out: set[int] = set()
    try:
        ns = os.readlink(f"/proc/{container_pid}/ns/pid")
    except OSError:
        return out
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == container_pid:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if os.readlink(f"{entry.path}/ns/pid") != ns:
                continue
            if Path(entry.path, "cmdline").read_bytes() in wants:
                stat = Path(entry.path, "stat").read_text()
                out.add(int(stat[stat.rfind(")") + 2 :].split()[3]))
    return out


def pids_cgroup(name: str, limit: int | None) -> list[Path]:
    """Create the task's pids cgroup with ``pids.max`` (ctr has no flag for it)."""
    if limit is None:
        return []
    root = Path("/sys/fs/cgroup")
    if hostinfo.cgroup_version() == 2:
        parent = root / mapping.CGROUP_PARENT
        parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text("+pids +memory +cpu")
        d = parent / name
    else:
        d = root / "pids" / mapping.CGROUP_PARENT / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "pids.max").write_text(str(limit))
    return [d]


def remove_cgroups(name: str) -> None:
    """The task's cgroups (runc removes them on delete; a lost shim may not)."""
    root = Path("/sys/fs/cgroup")
    tops = [root] if hostinfo.cgroup_version() == 2 else [p for p in root.iterdir() if p.is_dir()]
    cg.kill_and_remove([top / mapping.CGROUP_PARENT / name for top in tops], wait=1.0)


class ContainerdRuntime:
    """The ``containerd`` runtime (``containerd:RUNC`` selects the OCI runtime binary)."""

    def __init__(self, name: str = NAME, runc_binary: str | None = None) -> None:
        self.name = name
        self.runc_binary = runc_binary
        self.daemon = DockerDaemon(NAME, daemon_config)
        self._address: Path | None = None
        self.live: LiveContainers[ContainerdContainer] = LiveContainers(self.name)
        self._imported: set[str] = set()
        self._configs: dict[str, dict[str, Any]] = {}
        self.version = ""

    # -- the daemon ---------------------------------------------------------------------

    def _fixed_address(self) -> Path | None:
        if os.environ.get(ADDRESS_ENV):
            return Path(os.environ[ADDRESS_ENV])
        return SYSTEM_SOCKET if grpc_answers(SYSTEM_SOCKET, 1.0) else None

    @property
    def address(self) -> Path:
        """The daemon's socket: ``$CONTAINERSEC_CONTAINERD_ADDRESS``, else the system containerd's
        when it answers, else ours (started here on first use); kept until :meth:`close`."""
        if self._address is None:
            fixed = self._fixed_address()
            self._address = fixed or Path(self.daemon.ensure().removeprefix("unix://"))
        return self._address

    def ctr_argv(self, *args: str) -> list[str]:
        """``ctr ARGS`` against :attr:`address`, in the ``containersec`` namespace (resolving the
        address may start the daemon)."""
        return ["ctr", f"--address={self.address}", f"--namespace={mapping.NAMESPACE}", *args]

    def ctr(self, *args: str, timeout: float = CTR_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``ctr ARGS``; a non-zero status is returned, not raised. Raises RuntimeUnavailable
        when ctr does not return within ``timeout`` seconds."""
        try:
            return subprocess.run(
                self.ctr_argv(*args), capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RuntimeUnavailable(
                self.name, f"ctr {args[0]} did not return within {timeout:g}s ({self.address})",
                "is containerd alive?",
            ) from None  # fmt: skip

    def availability(self) -> Availability:
        """Check containerd and ctr, root, the static busybox and a variant's OCI runtime binary;
        starts no daemon."""
        try:
            self.daemon.config.require()
            hostinfo.static_busybox()
            if self.runc_binary is not None:
                from ..oci.oci_variants import require_binary

                require_binary(self.name, self.runc_binary)
        except RuntimeUnavailable as exc:
            return Availability(self.name, False, reason=exc.reason, hint=exc.hint)
        words = procs.tool_output(["containerd", "--version"]).split()
        return Availability(self.name, True, f"containerd {words[2] if len(words) > 2 else '?'}")

    # -- images -------------------------------------------------------------------------

    def ensure_image(self, image: str) -> None:
        """Import ``image`` from the local Docker store once (re-imported when it changed)."""
        if image in self._imported:
            return
        ref = mapping.image_ref(image)
        found = _docker_image(image)
        if found is None:
            raise ImageNotFound(
                self.name, image,
                "not in the local Docker store, which containerd's copy is imported from; "
                "build or import it locally (pytest-containersec never pulls)",
            )  # fmt: skip
        source, self._configs[image] = found
        have = self.ctr("images", "ls", f"name=={ref}")
        if source not in have.stdout:
            save = subprocess.Popen(
                ["docker", "-H", _docker_host(), "save", image], stdout=subprocess.PIPE
            )
            argv = self.ctr_argv("images", "import", "--no-unpack", "-")
            try:
                out = subprocess.run(argv, stdin=save.stdout, capture_output=True,
                                     timeout=IMPORT_TIMEOUT)  # fmt: skip
                save.wait(CTR_TIMEOUT)
            except subprocess.TimeoutExpired:
                why = f"importing {image} from Docker did not end within {IMPORT_TIMEOUT:.0f} s"
                raise ContainerStartError(self.name, argv, None, why) from None
            finally:
                if save.stdout is not None:
                    save.stdout.close()  # our end of the pipe: ctr had its own
                if save.poll() is None:
                    save.kill()
                    save.wait()
            if out.returncode != 0 or save.returncode != 0:
                err = out.stderr.decode(errors="replace")
                raise ContainerStartError(self.name, argv, None, err)
            self.ctr("images", "label", ref, f"{IMAGE_LABEL}={source}")
        self._imported.add(image)

    def image_config(self, image: str) -> dict[str, Any]:
        """The image's config (Docker's ``Config``, read when it was imported)."""
        self.ensure_image(image)
        return self._configs.get(image, {})

    def image_files(self, image: str) -> tuple[str | None, str | None]:
        """The image's /etc/passwd and /etc/group (from nspawn's rootfs cache)."""
        cache, _ = images.rootfs(image, state_root(), self.name)
        return images.read_file(cache, "etc/passwd"), images.read_file(cache, "etc/group")

    # -- containers ---------------------------------------------------------------------

    def start(self, spec: ContainerSpec) -> Container:
        """Import the image from the local Docker store (never pulled), then ``ctr run`` ``spec``;
        an OCI runtime refusing this host (crun on cgroup v1) raises RuntimeUnavailable."""
        mapping.run_argv(spec, name="x", log=Path("/x"), pid_file=Path("/x"),
                         probe_dir=Path("/x"), tools=None, prefix=[], labels={})  # fmt: skip
        self.ensure_image(spec.image)
        name = session.current().next_name(NAME)
        state = containers_root() / name
        state.mkdir(parents=True, mode=0o700)
        session.claim(state)
        c = ContainerdContainer(self, spec, name, state)
        try:
            return self.live.launch(c, c.start, lambda: c.argv)
        except ContainerStartError as exc:
            from ..oci.oci_variants import host_refusal

            refused = host_refusal(self.name, self.runc_binary, str(exc))
            if refused is not None:
                raise refused from None
            raise

    def remove(self, name: str) -> None:
        """Kill the task, delete it and the container (its snapshot too), its files."""
        self.ctr("task", "kill", "-s", "SIGKILL", name)
        for _ in range(50):
            out = self.ctr("task", "delete", "--force", name)
            if out.returncode == 0 or "not found" in out.stderr:
                break
            time.sleep(0.05)
        self.ctr("containers", "delete", name)
        remove_cgroups(name)
        shutil.rmtree(containers_root() / name, ignore_errors=True)

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves its task running; the next session's reap() removes
        it."""
        self.live.forget(c)

    def reap(self) -> int:
        """Remove the containers of dead sessions, then a daemon nobody holds a lease on."""
        dead = []
        base = containers_root()
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if session.orphaned(d):
                dead.append(d.name)
        if dead and self.availability().available:
            for name in dead:
                self.remove(name)
        return len(dead) + self.daemon.reap()

    def close(self) -> None:
        """Stop this session's containers (a daemon that stopped answering leaves them to reap()),
        then drop our lease on the daemon we started or share."""
        self.live.stop_all(RuntimeUnavailable)
        self._address = None
        self.daemon.release()


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _docker_image(image: str) -> tuple[str, dict[str, Any]] | None:
    """The image's id and config (``Config``: USER, ENTRYPOINT, ...) in the local Docker
    store; None when Docker does not have it. A Docker that cannot answer is not "image
    not found": RuntimeUnavailable says so."""
    fmt = '{"Id": {{json .Id}}, "Config": {{json .Config}}}'
    argv = ["docker", "-H", _docker_host(), "image", "inspect", "--format", fmt, image]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        why = f"cannot read {image} from the local Docker store ({' '.join(argv)}): {exc}"
        raise RuntimeUnavailable(NAME, why, "is dockerd running? (make setup)") from None
    if out.returncode == 0:
        data = json.loads(out.stdout)
        return str(data["Id"]), data.get("Config") or {}
    if "no such" in out.stderr.lower():
        return None
    why = f"cannot read {image} from the local Docker store: {out.stderr.strip()[-300:]}"
    raise RuntimeUnavailable(NAME, why, "is dockerd running? (make setup)")
