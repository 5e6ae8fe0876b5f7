"""Docker adapter: the docker SDK against a daemon socket."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import docker
import docker.errors
from docker.models.containers import Container as SdkContainer
from requests import RequestException

from ...errors import (
    ContainerSecError,
    ContainerStartError,
    ImageNotFound,
    ProbeError,
    RuntimeUnavailable,
    UnsupportedSpec,
)
from ...linux import hostinfo, session
from ...model import Declared
from ...spec import ContainerSpec, refuse_portable_profile
from .. import procs
from ..base import PROBE_DIR, Availability, Container, ExecResult, LiveContainers
from ..oci import oci, oci_fields
from ..oci.oci_variants import check_network, sandbox_of
from ..podman import podman_service as svc
from ..probe_copy import ProbeCopy

if TYPE_CHECKING:
    from .docker_daemons import DockerDaemon

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
FRAME_HEADER = struct.Struct(">BxxxI")  # stream (1 stdout, 2 stderr, 3 daemon error), size
API_TIMEOUT = 60
# What talking to the daemon can raise: SDK errors, and connection errors (a dead daemon).
ENGINE_ERRORS = (docker.errors.DockerException, RequestException)


def _hint(base_url: str) -> str:
    if base_url == DEFAULT_SOCKET:
        return "run the project setup (make setup), or start dockerd"
    return f"start the daemon that serves {base_url} (make setup)"


def host_config(
    spec: ContainerSpec, runtime: str, probe: str, oci_runtime: str | None = None
) -> dict[str, Any]:
    """docker-py ``containers.create`` keyword arguments for ``spec`` (pure); ``probe``
    is the container's own probe folder on the host; ``oci_runtime``: HostConfig.Runtime."""
    kw: dict[str, Any] = {}
    if oci_runtime is not None:
        kw["runtime"] = oci_runtime
        check_network(runtime, oci_runtime, spec.network)
    if spec.properties:
        raise UnsupportedSpec("properties", runtime, "systemd unit properties: use systemd-run")
    refuse_portable_profile(spec, runtime)
    entrypoint, command = oci.entrypoint_and_command(spec)
    if entrypoint is not None:
        kw["entrypoint"] = entrypoint
    kw["command"] = command
    if spec.user is not None:
        kw["user"] = spec.user
    if spec.cap_add:
        kw["cap_add"] = ["ALL"] if len(spec.cap_add) >= 41 else list(spec.cap_add)
    if spec.cap_drop:
        kw["cap_drop"] = ["ALL"] if len(spec.cap_drop) >= 41 else list(spec.cap_drop)
    kw["privileged"] = spec.privileged
    security_opt: list[str] = []
    if spec.seccomp == "unconfined":
        security_opt.append("seccomp=unconfined")
    elif spec.seccomp != "default":
        try:
            profile = Path(spec.seccomp).read_text()
            json.loads(profile)
        except (OSError, ValueError) as exc:
            raise UnsupportedSpec("seccomp", runtime, f"cannot read profile: {exc}") from None
        security_opt.append(f"seccomp={profile}")
    if spec.no_new_privileges:
        security_opt.append("no-new-privileges:true")
    if security_opt:
        kw["security_opt"] = security_opt
    kw["read_only"] = spec.read_only
    if spec.memory is not None:
        kw["mem_limit"] = spec.memory
    if spec.cpus is not None:
        kw["nano_cpus"] = round(spec.cpus * 1e9)
    if spec.pids_limit is not None:
        kw["pids_limit"] = spec.pids_limit
    if spec.userns == "host":
        kw["userns_mode"] = "host"
    elif spec.userns is not None:
        raise UnsupportedSpec(
            "userns",
            runtime,
            f"{spec.userns!r}: Docker maps users per daemon (dockerd --userns-remap), "
            "not per container; choose the runtime instead (docker-userns, docker-rootless, "
            "podman, nspawn)",
        )
    binds = [f"{probe}:{PROBE_DIR}:ro"]
    binds += [str(v) for v in spec.volumes]
    kw["volumes"] = binds
    kw["network_mode"] = spec.network
    if spec.env:
        kw["environment"] = dict(spec.env)
    extra = oci_fields.docker_fields(spec, runtime)
    if "security_opt" in extra:
        kw["security_opt"] = kw.get("security_opt", []) + extra.pop("security_opt")
    return {**kw, **extra}


def exec_stream(api: Any, exec_id: str) -> Iterator[tuple[bytes | None, bytes | None]]:
    """An exec's (stdout, stderr) chunks: ``POST /exec/ID/start`` upgraded to Docker's
    multiplexed stream, read through the HTTP response's own buffered reader.

    docker-py's ``exec_start`` reads the raw socket under that reader (docker-py#3332,
    #425): whatever the reader took in past the ``101`` headers, the first frames when the
    daemon is quick and we are slow, was lost, and the probe's output then came without its
    first line ("missing the CSPROBE1 BEGIN header", seen under load). The response is
    closed at the end (docker-py leaves it open: docker-py#3282)."""
    res = api._post_json(
        api._url("/exec/{0}/start", exec_id),
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        data={"Tty": False, "Detach": False},
        stream=True,
    )
    try:
        api._raise_for_status(res)
        yield from read_frames(res.raw._fp.fp)
    finally:
        res.close()


def read_frames(fp: BinaryIO) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Docker's multiplexed frames from a buffered reader, until EOF (a short frame ends it)."""
    while True:
        header = fp.read(FRAME_HEADER.size)
        if len(header) < FRAME_HEADER.size:
            return
        kind, size = FRAME_HEADER.unpack(header)
        data = fp.read(size) if size else b""
        if kind == 1:
            yield data, None
        elif kind in (2, 3):
            yield None, data
        if len(data) < size:
            return


class DockerContainer(oci.EngineContainer):
    """A container of one dockerd (the default, userns-remapped or rootless daemon); ``host_pid`` is
    State.Pid as our pid, refused when a rootless daemon names another user's process."""

    _engine_errors = ENGINE_ERRORS

    def __init__(self, runtime: DockerRuntime, sdk: SdkContainer, spec: ContainerSpec) -> None:
        self._rt = self._api = runtime
        self._sdk = sdk
        self.runtime = runtime.name
        self.id = sdk.id or ""
        self.name = sdk.name or ""
        self.spec = spec
        self.engine_rootless = runtime.rootless
        self.sandbox = sandbox_of(runtime.oci_runtime)
        reported = int(sdk.attrs["State"]["Pid"])
        host_pid = runtime.host_pid(reported)
        if host_pid is None:  # a rootless daemon named a process it did not start
            why = f"State.Pid {reported} is not a process of the daemon's user"
            raise ContainerStartError(runtime.name, [], None, why)
        self.host_pid = host_pid

    def _exec(self, argv: list[str], timeout: float, user: str | None = None) -> ExecResult:
        api = self._rt.client.api
        wrapped = oci.wrap_with_timeout(list(argv), timeout)
        exec_id = api.exec_create(self.id, wrapped, stdout=True, stderr=True, user=user or "")["Id"]

        def stream() -> Iterator[tuple[bytes | None, bytes | None]]:
            return exec_stream(api, exec_id)

        def exit_code() -> int | None:
            info = api.exec_inspect(exec_id)
            return None if info.get("Running") else info.get("ExitCode")

        noted: list[int] = []

        def note() -> None:  # our pid of a running exec (a rootless daemon reports its own)
            pid = api.exec_inspect(exec_id).get("Pid")
            ours = self._rt.host_pid(int(pid)) if pid else None
            if ours:
                noted.append(ours)

        def kill() -> None:
            if self.sandbox is not None:  # the pid is runsc's exec helper on the host, in
                return  # the host's pid namespace: the timeout inside kills the command
            pid = noted[0] if noted else 0
            if not pid and not self.engine_rootless:
                pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
            if pid:
                oci.kill_session(pid, self.host_pid, self._rt.may_kill)

        return oci.run_exec(self.runtime, wrapped, timeout, stream, exit_code, kill, note)

    def _inspect(self) -> dict[str, Any]:
        self._sdk.reload()
        return self._sdk.attrs

    def _image_attrs(self) -> dict[str, Any]:
        return self._rt.client.images.get(self.spec.image).attrs

    def _declared(self, attrs: dict[str, Any]) -> Declared:
        return declared_from_inspect(attrs, self._rt.security_options)

    def logs(self) -> str:
        """The last 200 lines through the API; the error's text, not an exception, when the daemon
        fails."""
        try:
            data = self._sdk.logs(tail=200)
        except ENGINE_ERRORS as exc:
            return f"(logs unavailable: {exc})"
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    def _remove(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._sdk.remove(force=True)


def declared_from_inspect(attrs: dict[str, Any], daemon_options: tuple[str, ...]) -> Declared:
    """Normalize ``docker inspect`` into the fields the Facts compare against (pure)."""
    return oci.declared_from_inspect(attrs, "docker", daemon_options=daemon_options)


class DockerRuntime:
    """The ``docker`` runtime (and, with another socket, docker-userns/docker-rootless)."""

    def __init__(
        self,
        name: str = "docker",
        base_url: str | None = None,
        daemon: DockerDaemon | None = None,
        oci_runtime: str | None = None,
    ) -> None:
        self.name = name
        self.oci_runtime = oci_runtime  # a docker:OCI variant (oci_variants)
        self.oci_runtimes: tuple[str, ...] = ()
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
        self.daemon = daemon  # a daemon of its own: started on first use, released in close()
        self._client: docker.DockerClient | None = None
        self.live: LiveContainers[DockerContainer] = LiveContainers(self.name)
        self.security_options: tuple[str, ...] = ()
        self.rootless = False
        self.version = ""

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, connected on first use (starting our own daemon when this runtime has
        one); also reads the daemon's version, security options and OCI runtimes. Raises
        RuntimeUnavailable when no daemon answers."""
        if self._client is None:
            if self.daemon is not None:
                self.base_url = self.daemon.ensure()
            try:
                client = docker.DockerClient(
                    base_url=self.base_url, version=self._api_version(), timeout=API_TIMEOUT
                )
                info = client.info()  # one request: the version is in it too
                self.version = str(info.get("ServerVersion") or "?")
            except docker.errors.DockerException as exc:
                raise RuntimeUnavailable(
                    self.name, f"no daemon answers at {self.base_url}: {exc}", _hint(self.base_url)
                ) from None
            self.security_options = tuple(info.get("SecurityOptions") or ())
            self.oci_runtimes = tuple(info.get("Runtimes") or ())
            self.rootless = any(o.startswith("name=rootless") for o in self.security_options)
            self._client = client
        return self._client

    def _api_version(self) -> str:
        """The daemon's API version from its /_ping headers (no /version request, which
        rootless Docker 26 cannot serve); docker-py's own negotiation where that fails."""
        if self.base_url.startswith("unix://"):
            version = svc.ping_api_version(Path(self.base_url.removeprefix("unix://")))
            if version is not None:
                return version
        return "auto"

    def availability(self) -> Availability:
        """Connect and check the static busybox and a variant's registered OCI runtime; a daemon of
        our own that is not running is only checked, never started."""
        if self._client is None and self.daemon is not None and not self.daemon.answers():
            return self.daemon.availability()  # what starting it needs; starts nothing
        try:
            self.client  # noqa: B018 - connects and reads the version
            hostinfo.static_busybox()
            if self.oci_runtime is not None:
                self._require_oci(self.oci_runtime)
        except RuntimeUnavailable as exc:
            return Availability(self.name, False, reason=exc.reason, hint=exc.hint)
        return Availability(self.name, True, f"Docker {self.version}", rootless=self.rootless)

    def _require_oci(self, oci_runtime: str) -> None:
        from ..oci.oci_variants import require_binary

        require_binary(self.name, oci_runtime)
        if oci_runtime not in self.oci_runtimes:
            raise RuntimeUnavailable(
                self.name,
                f"the daemon at {self.base_url} has no OCI runtime {oci_runtime!r} registered "
                f"(it knows {', '.join(self.oci_runtimes) or 'none'})",
                f'add "runtimes": {{"{oci_runtime}": {{"path": "{oci_runtime}"}}}} to '
                "/etc/docker/daemon.json and reload dockerd (kill -HUP)",
            )

    def engine_error(self, what: str, exc: Exception) -> ContainerSecError:
        """A clear error for what the SDK raised: the daemon refused, or it is gone."""
        if isinstance(exc, docker.errors.APIError):
            return ProbeError(self.name, f"{what} failed: {exc.explanation or exc}")
        return RuntimeUnavailable(
            self.name, f"the daemon at {self.base_url} stopped answering ({what}: {exc})",
            _hint(self.base_url),
        )  # fmt: skip

    def start(self, spec: ContainerSpec) -> Container:
        """Create and start ``spec`` with its probe copy bound read-only. Raises ImageNotFound
        (never pulls), ContainerStartError with the daemon's explanation, and RuntimeUnavailable
        when the daemon stops answering or the OCI runtime refuses this host."""
        client = self.client
        sess = session.current()
        name = sess.next_name(self.name)
        with ProbeCopy.made(name) as copy:
            c = self._start(client, spec, name, copy)
        c.probe_copy = copy
        return self.live.add(c)

    def _start(
        self, client: docker.DockerClient, spec: ContainerSpec, name: str, copy: ProbeCopy
    ) -> DockerContainer:
        try:
            client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            raise ImageNotFound(self.name, spec.image) from None
        except ENGINE_ERRORS as exc:
            raise self.engine_error(f"look up image {spec.image}", exc) from None
        if self.oci_runtime is not None:
            self._require_oci(self.oci_runtime)
        kw = host_config(spec, self.name, str(copy.path), self.oci_runtime)
        argv = [f"{k}={v!r}" for k, v in kw.items()]
        extra = kw.pop(oci_fields.HOST_CONFIG_EXTRA, None)
        try:
            if extra:
                sdk = _create_raw(client, spec.image, name, kw, extra)
            else:
                sdk = client.containers.create(
                    spec.image, name=name, labels=session.current().labels, detach=True, **kw
                )
        except docker.errors.APIError as exc:
            raise ContainerStartError(self.name, argv, None, str(exc.explanation or exc)) from None
        except ENGINE_ERRORS as exc:
            raise self.engine_error("create", exc) from None
        try:
            return self._run(sdk, spec, argv)
        except ContainerStartError as exc:
            from ..oci.oci_variants import host_refusal

            refused = host_refusal(self.name, self.oci_runtime, str(exc))
            if refused is not None:
                raise refused from None
            raise

    def _run(self, sdk: SdkContainer, spec: ContainerSpec, argv: list[str]) -> DockerContainer:
        try:
            sdk.start()
            oci.check_running(  # reloads the attributes: State.Pid is read from them
                self.name, argv, lambda: self._status(sdk), lambda: _logs(sdk), oci.start_wait(spec)
            )
            c = DockerContainer(self, sdk, spec)
            if c.sandbox is None:  # `docker start` returns before runc's init execs the command
                oci.await_workload(self.name, argv, c.host_pid, [], oci.EXEC_WAIT)
            return c
        except BaseException as exc:
            with contextlib.suppress(*ENGINE_ERRORS):
                sdk.remove(force=True)
            if isinstance(exc, docker.errors.APIError):
                raise ContainerStartError(
                    self.name, argv, None, str(exc.explanation or exc)
                ) from None
            if isinstance(exc, ENGINE_ERRORS):
                raise self.engine_error("start", exc) from None
            raise

    @staticmethod
    def _status(sdk: SdkContainer) -> tuple[bool, int | None]:
        sdk.reload()
        state = sdk.attrs["State"]
        return bool(state.get("Running")), state.get("ExitCode")

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves it running; the next session's reap() removes it."""
        self.live.forget(c)

    def may_kill(self, pid: int) -> bool:
        """Whether a process an exec's timeout kills may be ``pid`` (a rootless daemon's
        pids are its user's word: only that user's processes)."""
        user = self.daemon.config.user if self.daemon is not None and self.rootless else None
        return user is None or procs.owned_by_user(pid, user.uid, user.name)

    def host_pid(self, reported: int) -> int | None:
        """Our pid of a process the daemon reports (None: not one the daemon started)."""
        return self.daemon.host_pid(reported) if self.daemon is not None else reported

    def reap(self) -> int:
        """Stop an orphaned daemon of our own, then force-remove the labelled containers of dead
        sessions; the count of both. Starts no daemon: with none answering, no container is
        removed."""
        n = self.daemon.reap() if self.daemon is not None else 0
        if self._client is None and self.daemon is not None and not self.daemon.answers():
            return n  # its containers were stopped with it; removed when it runs again
        if self._client is None and not self.availability().available:
            return n
        try:
            found = self.client.containers.list(all=True, filters={"label": session.LABEL_OWNER})
        except ENGINE_ERRORS as exc:
            raise self.engine_error("list containers", exc) from None
        for sdk in found:
            owner = (sdk.labels or {}).get(session.LABEL_OWNER, "")
            if not session.owner_alive(owner):
                try:
                    sdk.remove(force=True)
                    n += 1
                except ENGINE_ERRORS:
                    pass
        return n

    def close(self) -> None:
        """Stop this session's containers (a daemon gone leaves them to reap()), close the client
        and drop our lease on a daemon of our own."""
        self.live.stop_all(ContainerSecError)  # a dead daemon: reaped when it is back
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.daemon is not None:
            self.daemon.release()


def _create_raw(
    client: docker.DockerClient, image: str, name: str, kw: dict[str, Any], extra: dict[str, Any]
) -> SdkContainer:
    """``containers.create`` with HostConfig keys docker-py has no keyword for."""
    from docker.models import containers

    create_args: Any = containers._create_container_args  # type: ignore[attr-defined]
    args = create_args(
        {**kw, "image": image, "name": name, "labels": session.current().labels,
         "detach": True, "version": client.api.api_version}
    )  # fmt: skip
    args["host_config"].update(extra)
    resp = client.api.create_container(**args)
    return client.containers.get(resp["Id"])


def _logs(sdk: SdkContainer) -> str:
    try:
        data = sdk.logs(tail=100)
    except ENGINE_ERRORS as exc:
        return f"(logs unavailable: {exc})"
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
