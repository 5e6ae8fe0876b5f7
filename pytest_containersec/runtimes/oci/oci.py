"""Pieces shared by the engine adapters (docker, podman): main process, exec, waiting."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from ...errors import ContainerSecError, ContainerStartError, ExecTimeout
from ...linux import session
from ...model import Declared, DeclaredSeccomp
from ...spec import ContainerSpec
from .. import procs
from ..base import (
    DEFAULT_EXEC_TIMEOUT,
    MAX_OUTPUT,
    PROBE_BUSYBOX,
    PROBE_DIR,
    Container,
    ExecResult,
)

# The idle main process used when the spec names no command: the probe's own busybox,
# so the container stays up on any image (scratch and distroless included).
IDLE_ENTRYPOINT = [PROBE_BUSYBOX]
IDLE_COMMAND = ["sleep", "2147483647"]
TIMEOUT_RC = 137  # busybox `timeout -s KILL` exit status when it killed the command
START_WAIT = 0.05  # seconds a fresh container must survive to count as started
EXEC_WAIT = 30.0  # seconds a started main process may take to exec the workload's command
NOTE_AFTER = 0.5  # seconds after which run_exec asks the adapter to note a running exec


def entrypoint_and_command(spec: ContainerSpec) -> tuple[list[str] | None, list[str]]:
    """(entrypoint override or None to keep the image's, command)."""
    if spec.entrypoint is not None:  # as docker: a new entrypoint drops the image's CMD
        return list(spec.entrypoint), list(spec.command)
    if spec.command:
        return None, list(spec.command)
    return list(IDLE_ENTRYPOINT), list(IDLE_COMMAND)


def start_wait(spec: ContainerSpec) -> float:
    """How long a fresh container must survive to count as started: START_WAIT for the
    spec's own command (it may exit at once); none for the idle busybox sleep."""
    return START_WAIT if spec.command else 0.0


def await_workload(
    runtime: str, argv: list[str], pid: int, wrappers: list[list[str]], timeout: float
) -> None:
    """Return once the container's main process ``pid`` has exec'd the workload's command,
    past the OCI runtime's init and our own ``wrappers`` (see ``procs.wait_past``), or ended
    (the caller's running check reports that); ContainerStartError when it has not within
    ``timeout`` seconds."""
    try:
        procs.wait_past(pid, session.owner_token(pid), wrappers, timeout)
    except TimeoutError as exc:
        raise ContainerStartError(runtime, argv, None, str(exc)) from None


def survived(
    runtime: str,
    argv: list[str],
    spec: ContainerSpec,
    pid: int,
    wrappers: list[list[str]] | None,
    timeout: float,
) -> bool:
    """Whether a fresh container's main process ``pid`` still runs after ``start_wait(spec)``
    and, unless ``wrappers`` is None (a sandbox: ``pid`` is not the workload), once it has
    exec'd the workload (:func:`await_workload`)."""
    token = session.owner_token(pid)
    deadline = time.monotonic() + start_wait(spec)
    while procs.running(pid, token) and time.monotonic() < deadline:
        time.sleep(0.01)
    if wrappers is not None:
        await_workload(runtime, argv, pid, wrappers, timeout)
    return procs.running(pid, token)


def wrap_with_timeout(argv: list[str], timeout: float) -> list[str]:
    """Run ``argv`` under the probe busybox's ``timeout``: the kill happens inside."""
    secs = max(1, math.ceil(timeout))
    return [PROBE_BUSYBOX, "timeout", "-s", "KILL", str(secs), *argv]


class BoundedBuffer:
    """Collects output up to MAX_OUTPUT bytes, drains (and counts) the rest."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, chunk: bytes | None) -> None:
        """Keep ``chunk`` up to the limit and count the rest as dropped; None and ``b""`` are
        ignored."""
        if not chunk:
            return
        room = self.limit - self.size
        if room > 0:
            self.parts.append(chunk[:room])
            self.size += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        """What was kept, decoded (bad UTF-8 replaced), with a note of how many bytes were
        dropped."""
        out = b"".join(self.parts).decode("utf-8", "replace")
        if self.dropped:
            out += f"\n[containersec: {self.dropped} more bytes dropped]"
        return out


def run_exec(
    runtime: str,
    argv: list[str],
    timeout: float,
    stream: Callable[[], Iterable[tuple[bytes | None, bytes | None]]],
    exit_code: Callable[[], int | None],
    kill: Callable[[], None],
    note: Callable[[], None] | None = None,
) -> ExecResult:
    """Drive one exec: ``stream`` yields (stdout, stderr) chunks; bounded and timed.

    The command already runs under busybox ``timeout`` inside; the thread join below is
    the backstop for an engine that hangs (then ``kill`` ends the exec from the host).
    ``kill`` also ends what a timed-out command started. ``note`` is called once when the
    exec still runs after NOTE_AFTER seconds, so the adapter can note the exec's pid
    while the engine still reports it (Podman forgets it when the exec ends).
    """
    out, err = BoundedBuffer(), BoundedBuffer()
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            chunks = stream()
            try:
                for o, e in chunks:
                    out.add(o)
                    err.add(e)
            finally:
                # an adapter's generator closes what it opened, however the reading ends
                close = getattr(chunks, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    t = threading.Thread(target=pump, daemon=True, name=f"containersec-exec-{runtime}")
    started = time.monotonic()
    t.start()
    first = min(NOTE_AFTER, timeout)
    t.join(first)
    if note is not None and t.is_alive():
        note()
    t.join(timeout + 5 - first)
    if t.is_alive():
        kill()
        t.join(5)
        raise ExecTimeout(runtime, argv, timeout)
    if failure:
        raise failure[0]
    rc = exit_code()
    for _ in range(50):  # the engine may report the exit code a moment after EOF
        if rc is not None:
            break
        time.sleep(0.02)
        rc = exit_code()
    # 137 is also any SIGKILL (the OOM killer): only ours when the timeout had come
    ours = time.monotonic() - started >= max(1, math.ceil(timeout)) - 0.1
    if rc == TIMEOUT_RC and ours and argv[:2] == [PROBE_BUSYBOX, "timeout"]:
        kill()  # what the command started: busybox timeout killed the command only
        raise ExecTimeout(runtime, argv[5:], timeout)
    return ExecResult(rc if rc is not None else -1, out.text(), err.text())


def kill_session(
    sid: int, container_pid: int, allowed: Callable[[int], bool] = lambda pid: True
) -> None:
    """SIGKILL the exec whose host pid is ``sid`` and every process of its session (the
    engine makes each exec a session leader) that is in ``container_pid``'s pid namespace.
    A session id stays in use while a member lives, so it names nothing else meanwhile.
    ``allowed``: a rootless engine's pids are the user's word, so only processes of that
    user (its uid and sub-uids) are killed (``pid="host"`` shares our pid namespace)."""
    try:
        ns = os.readlink(f"/proc/{container_pid}/ns/pid")
    except OSError:
        return
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            if int(stat[stat.rfind(")") + 2 :].split()[3]) != sid and int(entry.name) != sid:
                continue
            if os.readlink(f"{entry.path}/ns/pid") == ns and allowed(int(entry.name)):
                os.kill(int(entry.name), signal.SIGKILL)


def check_running(
    runtime: str,
    argv: list[str],
    status: Callable[[], tuple[bool, int | None]],
    logs: Callable[[], str],
    wait: float = START_WAIT,
) -> None:
    """Raise ContainerStartError if the container's main process exited right away
    (within ``wait`` seconds; with 0, only if it is not running now)."""
    deadline = time.monotonic() + wait
    while True:
        running, code = status()
        if not running:
            raise ContainerStartError(
                runtime,
                argv,
                code,
                "the container's main process exited at once; output:\n" + logs(),
            )
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def k8s_log_tail(path: Path, lines: int, limit: int = MAX_OUTPUT) -> str:
    """The last ``lines`` lines of a ``k8s-file`` container log, read from its last
    ``limit`` bytes only: time and memory stay bounded however much the container wrote
    (Podman 4.3's own ``logs --tail`` takes minutes on a 100 MB log of partial lines).

    Records are ``TIMESTAMP STREAM P|F TEXT``: ``P`` is part of a line, ``F`` ends one.
    """
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        records = f.read(limit).split(b"\n")
    if size > limit:
        records = records[1:]  # cut by the seek
    out = bytearray()
    for record in records:
        parts = record.split(b" ", 3)
        if len(parts) >= 3 and parts[2] in (b"P", b"F"):
            out += parts[3] if len(parts) == 4 else b""
            out += b"\n" if parts[2] == b"F" else b""
    text = out.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(text[-lines:]) if lines > 0 else ""


def _flag_opt(options: list[str], name: str) -> bool:
    """``name``, ``name:true`` or ``name=true`` among security options (not ``:false``)."""
    for opt in options:
        key, sep, value = opt.replace("=", ":", 1).partition(":")
        if key == name:
            return not sep or value.lower() in ("true", "1", "yes")
    return False


def declared_from_inspect(
    attrs: dict[str, Any],
    engine: str,
    *,
    daemon_options: tuple[str, ...] = (),
    oci_config: dict[str, Any] | None = None,
    bind_text: Callable[[str], str] = str,
) -> Declared:
    """Normalize ``docker inspect`` / ``podman inspect`` into the declared keys the Facts
    are compared with (pure). ``oci_config``: the OCI config.json the engine handed to the
    runtime, when readable (no ``linux.seccomp`` there means no filter, whatever inspect
    says). The probe's own bind mount is left out."""
    hc = attrs.get("HostConfig") or {}
    cfg = attrs.get("Config") or {}
    sec = list(hc.get("SecurityOpt") or [])
    seccomp: DeclaredSeccomp = "default"
    for opt in sec:
        if opt.startswith("seccomp="):
            seccomp = "unconfined" if opt == "seccomp=unconfined" else "custom"
    if hc.get("Privileged"):
        seccomp = "unconfined"
    if oci_config is not None and not (oci_config.get("linux") or {}).get("seccomp"):
        seccomp = "unconfined"
    nano = hc.get("NanoCpus") or 0
    quota, period = hc.get("CpuQuota") or 0, hc.get("CpuPeriod") or 0
    cpus = nano / 1e9 if nano else (quota / period if quota > 0 and period > 0 else None)
    pids = hc.get("PidsLimit")
    remapped = any(o.startswith("name=userns") for o in daemon_options)
    return {
        "engine": engine,
        "user": cfg.get("User") or None,
        "cap_add": sorted(hc.get("CapAdd") or []),
        "cap_drop": sorted(hc.get("CapDrop") or []),
        "privileged": bool(hc.get("Privileged")),
        "seccomp": seccomp,
        "no_new_privileges": _flag_opt(sec, "no-new-privileges"),
        "read_only": bool(hc.get("ReadonlyRootfs")),
        "memory": hc.get("Memory") or None,
        "cpus": cpus,
        "pids_limit": pids if pids and pids > 0 else None,
        "userns_mode": hc.get("UsernsMode") or ("remap" if remapped else None),
        "network_mode": hc.get("NetworkMode"),
        "binds": [bind_text(b) for b in (hc.get("Binds") or []) if f":{PROBE_DIR}:" not in f"{b}:"],
        "apparmor_profile": attrs.get("AppArmorProfile") or None,
        "daemon_security_options": list(daemon_options),
        "oci_runtime": attrs.get("OCIRuntime") or hc.get("Runtime") or None,
        **_declared_more(attrs, hc),
    }


def _declared_more(attrs: dict[str, Any], hc: dict[str, Any]) -> Declared:
    """Namespaces, groups, devices, tmpfs, ulimits, sysctls and unmasking as declared."""
    tmpfs = sorted(
        set(hc.get("Tmpfs") or {})
        | {m.get("Destination") for m in attrs.get("Mounts") or [] if m.get("Type") == "tmpfs"}
    )
    return {
        "pid_mode": hc.get("PidMode") or None,
        "ipc_mode": hc.get("IpcMode") or None,
        "uts_mode": hc.get("UTSMode") or None,
        "group_add": [str(g) for g in hc.get("GroupAdd") or []],
        "devices": [
            f"{d.get('PathOnHost')}:{d.get('PathInContainer')}:{d.get('CgroupPermissions')}"
            for d in hc.get("Devices") or []
        ],
        "tmpfs": [t for t in tmpfs if t],
        "ulimits": {u["Name"]: f"{u['Soft']}:{u['Hard']}" for u in hc.get("Ulimits") or []},
        "sysctls": dict(hc.get("Sysctls") or {}),
        "unmask": hc.get("MaskedPaths") == [] and not hc.get("Privileged"),
    }


class EngineApi(Protocol):
    """What an EngineContainer needs of its runtime."""

    def engine_error(self, what: str, exc: Exception) -> ContainerSecError:
        """The ContainerSecError for what the engine API raised while doing ``what``."""
        ...

    def forget(self, c: Container) -> None:
        """Stop tracking ``c`` (called once it is removed)."""
        ...


class EngineContainer(Container):
    """A container behind an engine API (docker, podman): whatever the API raises becomes
    a ContainerSecError naming the runtime; a failed removal stays retryable."""

    _api: EngineApi
    _engine_errors: tuple[type[Exception], ...]
    _stopped: bool = False

    def _exec(self, argv: list[str], timeout: float, user: str | None = None) -> ExecResult:
        raise NotImplementedError

    def _inspect(self) -> dict[str, Any]:
        raise NotImplementedError

    def _remove(self) -> None:
        raise NotImplementedError

    def _declared(self, attrs: dict[str, Any]) -> Declared:
        raise NotImplementedError

    def _image_attrs(self) -> dict[str, Any]:
        raise NotImplementedError

    _image_user: str | None = None

    def image_user(self) -> str | None:
        """The image config's USER ("" when it sets none); an image's config does not
        change, so it is asked once."""
        if self._image_user is None:
            try:
                attrs = self._image_attrs()
            except self._engine_errors as exc:
                raise self._api.engine_error(f"inspect image {self.spec.image}", exc) from None
            self._image_user = str((attrs.get("Config") or {}).get("User") or "")
        return self._image_user

    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """The adapter's exec after the probe check; an API error becomes the runtime's
        ``engine_error``."""
        self.guard_probe()
        try:
            return self._exec(argv, timeout)
        except self._engine_errors as exc:
            raise self._api.engine_error("exec", exc) from None

    def root_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """An exec as user 0:0 (the engine's ``exec --user 0:0``): the container's root with
        the capabilities the engine gives root, same confinement otherwise."""
        self.guard_probe()
        try:
            return self._exec(argv, timeout, user="0:0")
        except self._engine_errors as exc:
            raise self._api.engine_error("exec", exc) from None

    def declared(self) -> Declared:
        """The engine's inspect output, normalized; an engine that stopped answering raises."""
        try:
            attrs = self._inspect()
        except self._engine_errors as exc:
            raise self._api.engine_error("inspect", exc) from None
        return self._declared(attrs)

    def stop(self) -> None:
        """Remove the container through the API, then its probe copy; a failed removal raises and
        stays retryable, idempotent once removed."""
        if self._stopped:
            return
        try:
            self._remove()
        except self._engine_errors as exc:  # still ours: a later stop() or close() retries
            raise self._api.engine_error(f"remove {self.name}", exc) from None
        self._stopped = True
        self.release_probe()
        self._api.forget(self)
