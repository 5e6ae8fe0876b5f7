"""Podman adapters (``podman``, ``podman-rootless``): podman-py against a service socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from podman import PodmanClient
from podman.api import stream_frames
from podman.domain.containers import Container as SdkContainer
from podman.errors import APIError, NotFound, PodmanError
from podman.errors import ImageNotFound as SdkImageNotFound
from requests import RequestException

from ...errors import (
    ContainerSecError,
    ContainerStartError,
    ImageNotFound,
    ProbeError,
    RuntimeUnavailable,
)
from ...linux import session
from ...model import Declared
from ...spec import ContainerSpec
from .. import host_files, procs
from ..base import Availability, Container, ExecResult, LiveContainers
from ..oci import oci, oci_fields
from ..oci.oci_variants import check_network, sandbox_of
from ..probe_copy import ProbeCopy
from .podman_service import (
    PodmanService,
    RootlessIds,
    ServiceUser,
    answers,
    check_host,
    ping_headers,
    reap_services,
    version_line,
)
from .podman_spec import conf_default_ulimits, conf_paths, create_kwargs, declared_from_inspect

API_TIMEOUT = 60
PING_TIMEOUT = 10.0
# What talking to the service can raise: podman-py errors and (APIError) HTTP errors.
ENGINE_ERRORS = (PodmanError, RequestException)


def _explain(exc: BaseException) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def _host_pid(pid: int) -> bool:
    """True if ``pid`` is a live process of our pid namespace that is pid 1 in its own."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return bool(ids) and ids[0] == str(pid) and (len(ids) == 1 or ids[-1] == "1")
    return True


class PodmanContainer(oci.EngineContainer):
    """A container of a Podman service (rootful, or the rootless user's); execs and inspect go
    through the REST API."""

    _engine_errors = ENGINE_ERRORS

    def __init__(self, runtime: PodmanRuntime, sdk: SdkContainer, spec: ContainerSpec) -> None:
        self._rt = self._api = runtime
        self._sdk = sdk
        self.runtime = runtime.name
        self.id = str(sdk.id or "")
        self.name = str(sdk.attrs.get("Name") or "")
        self.spec = spec
        self.engine_rootless = runtime.rootless
        self.sandbox = sandbox_of(runtime.oci_runtime)
        self.host_pid = int(sdk.attrs["State"]["Pid"])

    def _exec(self, argv: list[str], timeout: float, user: str | None = None) -> ExecResult:
        api = self._rt.client.api
        wrapped = oci.wrap_with_timeout(list(argv), timeout)
        body: dict[str, Any] = {
            "AttachStdout": True, "AttachStderr": True, "AttachStdin": False, "Cmd": wrapped,
        }  # fmt: skip
        if user is not None:
            body["User"] = user
        resp = api.post(f"/containers/{self.id}/exec", data=json.dumps(body))
        resp.raise_for_status()
        exec_id = str(resp.json()["Id"])

        def stream() -> Iterator[tuple[bytes | None, bytes | None]]:
            start = api.post(
                f"/exec/{exec_id}/start",
                data=json.dumps({"Detach": False, "Tty": False}),
                stream=True,
                timeout=timeout + API_TIMEOUT,
            )
            with contextlib.closing(start):  # its connection, however the reading ends
                start.raise_for_status()
                for frame in stream_frames(start, demux=True):
                    yield cast(tuple[bytes | None, bytes | None], frame)

        def inspect() -> dict[str, Any]:
            r = api.get(f"/exec/{exec_id}/json")
            r.raise_for_status()
            return cast(dict[str, Any], r.json())

        def exit_code() -> int | None:
            info = inspect()
            return None if info.get("Running") else info.get("ExitCode")

        noted: list[int] = []

        def note() -> None:  # Podman reports Pid 0 once the exec ended
            noted.append(int(inspect().get("Pid") or 0))

        def kill() -> None:
            pid = inspect().get("Pid") or (noted[0] if noted else 0)
            if pid and self.sandbox is None:  # under gVisor: runsc's helper, host pid ns
                oci.kill_session(int(pid), self.host_pid, self._rt.may_kill)

        return oci.run_exec(self.runtime, wrapped, timeout, stream, exit_code, kill, note)

    def _inspect(self) -> dict[str, Any]:
        self._sdk.reload()
        return cast(dict[str, Any], self._sdk.attrs)

    def _image_attrs(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._rt.client.images.get(self.spec.image).attrs)

    def _declared(self, attrs: dict[str, Any]) -> Declared:
        oci_config: dict[str, Any] | None = None
        with contextlib.suppress(OSError, ValueError, TypeError):
            # a rootless service names a file of its user: bounded, a regular file, theirs
            owner = self._rt._ids.uid if self.engine_rootless and self._rt._ids else None
            raw = host_files.read_small(Path(attrs["OCIConfigPath"]), 4 << 20, owner)
            oci_config = json.loads(raw) if raw is not None else None
        return declared_from_inspect(attrs, self.engine_rootless, oci_config)

    def logs(self) -> str:
        """The last 200 lines, read bounded from a ``k8s-file`` log, else through the API; the
        error's text, not an exception, when the service fails."""
        return _logs(self._sdk, 200)

    def _remove(self) -> None:
        self._rt.remove(self.id)


def end_exec_monitors(container_id: str) -> None:
    """Kill the conmons of a removed container's execs. Each one waits out Podman's
    ``exit_command_delay`` (300 s by default) after its exec ended, so they would outlive
    the container, and the session, by five minutes."""
    needle = f"\0-c\0{container_id}\0".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(entry.path, "cmdline").read_bytes()
            if needle in cmd and b"\0--exec-attach\0" in cmd and b"conmon" in cmd[:64]:
                os.kill(int(entry.name), signal.SIGKILL)


def _logs(sdk: SdkContainer, tail: int) -> str:
    log = cast(dict[str, Any], sdk.attrs).get("HostConfig", {}).get("LogConfig") or {}
    if log.get("Type") == "k8s-file" and log.get("Path"):  # bounded, unlike the API's tail
        with contextlib.suppress(OSError):
            return oci.k8s_log_tail(Path(log["Path"]), tail)
    try:
        data = sdk.logs(tail=tail)
        raw = data if isinstance(data, bytes) else b"".join(cast(Iterable[bytes], data))
    except ENGINE_ERRORS as exc:
        return f"(logs unavailable: {_explain(exc)})"
    return raw.decode("utf-8", "replace")


class PodmanRuntime:
    """``podman`` (rootful) or ``podman-rootless`` (as hostinfo.rootless_user())."""

    def __init__(self, rootless: bool, oci_runtime: str | None = None, name: str = "") -> None:
        self.rootless = rootless
        self.name = name or ("podman-rootless" if rootless else "podman")
        self.oci_runtime = oci_runtime  # a podman:OCI variant (oci_variants)
        self.version = ""
        self.service: PodmanService | None = None
        self._client: PodmanClient | None = None
        self._ids: RootlessIds | None = None
        self.live: LiveContainers[PodmanContainer] = LiveContainers(self.name)
        self._lock = threading.RLock()

    @property
    def client(self) -> PodmanClient:
        """The podman-py client, connected on first use to the default service or one this process
        starts; raises RuntimeUnavailable when the host cannot run this Podman or no API answers."""
        with self._lock:
            if self._client is None:
                self._ids = check_host(self.name, self.rootless)
                svc = PodmanService.ensure(self.name, self.rootless, self.oci_runtime)
                # /_ping names the version (Libpod's API version is Podman's); /version would
                # run conmon and the OCI runtime for theirs: ~0.45 s per request, measured
                headers = ping_headers(svc.socket, PING_TIMEOUT)
                if headers is None:
                    svc.stop()
                    why = f"no Podman API at {svc.socket}: /_ping did not answer 200"
                    raise RuntimeUnavailable(self.name, why, "make setup")
                self.version = headers.get("libpod-api-version") or "?"
                client = PodmanClient(base_url=svc.url, timeout=API_TIMEOUT)
                self.service, self._client = svc, client
            return self._client

    def may_kill(self, pid: int) -> bool:
        """Whether ``pid`` may be a process of this engine's containers: any for rootful
        Podman; for rootless, one of the user's uid or sub-uids (the service is the user's,
        and so is every pid it reports)."""
        if not self.rootless:
            return True
        ids, uid = self._ids, procs.real_uid(pid)
        if ids is None or uid is None:
            return False
        return uid == ids.uid or ids.subuid[0] <= uid < ids.subuid[0] + ids.subuid[1]

    def availability(self) -> Availability:
        """Check the host (rootless: the user and its sub-ids) and a variant's OCI runtime binary;
        starts no service."""
        try:
            self._ids = check_host(self.name, self.rootless)
            if self.oci_runtime is not None:
                from ..oci.oci_variants import require_binary

                require_binary(self.name, self.oci_runtime)
        except RuntimeUnavailable as exc:
            return Availability(self.name, False, reason=exc.reason, hint=exc.hint)
        version = f"Podman {self.version}" if self.version else version_line()
        return Availability(self.name, True, version, rootless=self.rootless)

    def start(self, spec: ContainerSpec) -> Container:
        """Create and start ``spec`` with its probe copy bound read-only. Raises ImageNotFound
        (never pulls), ContainerStartError, and RuntimeUnavailable when the service stops answering,
        runs another OCI runtime than the variant's, or that runtime refuses this host."""
        client = self.client
        sess = session.current()
        name = sess.next_name(self.name)
        try:
            with ProbeCopy.made(name) as copy:
                c = self._start(client, spec, name, copy)
        except ContainerStartError as exc:
            from ..oci.oci_variants import host_refusal

            refused = host_refusal(self.name, self.oci_runtime, str(exc))
            if refused is not None:
                raise refused from None
            raise
        c.probe_copy = copy
        return self.live.add(c)

    def _start(
        self, client: PodmanClient, spec: ContainerSpec, name: str, copy: ProbeCopy
    ) -> PodmanContainer:
        user = ServiceUser.for_mode(self.rootless)
        defaults = conf_default_ulimits(conf_paths(user.home if user else None))
        kw = create_kwargs(
            spec,
            self.name,
            self._ids if self.rootless else None,
            probe=str(copy.path),
            default_ulimits=defaults,
        )
        if self.oci_runtime is not None:
            from ..oci.oci_variants import require_binary

            require_binary(self.name, self.oci_runtime)
            check_network(self.name, self.oci_runtime, spec.network)
            kw["runtime"] = self.oci_runtime
        try:
            if not client.images.exists(spec.image):
                raise ImageNotFound(self.name, spec.image)
        except ENGINE_ERRORS as exc:
            if isinstance(err := self.engine_error("look up the image", exc), RuntimeUnavailable):
                raise err from None
            raise ContainerStartError(self.name, [spec.image], None, _explain(exc)) from None
        argv = [f"{k}={v!r}" for k, v in kw.items()]
        options = kw.pop(oci_fields.MOUNT_OPTIONS, None)
        try:
            if options:
                sdk = _create_raw(client, spec.image, name, kw, options)
            else:
                sdk = client.containers.create(
                    spec.image, name=name, labels=session.current().labels, **kw
                )
        except SdkImageNotFound:
            raise ImageNotFound(self.name, spec.image) from None
        except (*ENGINE_ERRORS, TypeError, ValueError) as exc:
            raise ContainerStartError(self.name, argv, None, _explain(exc)) from None
        try:
            sdk.start()
            oci.check_running(  # reloads the attributes: State.Pid is read from them
                self.name, argv, lambda: _status(sdk), lambda: _logs(sdk, 100), oci.start_wait(spec)
            )
            used = sdk.attrs.get("OCIRuntime")
            if self.oci_runtime is not None and used != self.oci_runtime:
                raise RuntimeUnavailable(
                    self.name, f"Podman ran the container with {used!r}, not {self.oci_runtime!r}",
                    f"check that {self.oci_runtime} is in containers.conf [engine.runtimes]",
                )  # fmt: skip
            pid = int(sdk.attrs["State"]["Pid"])
            if not _host_pid(pid) or not self.may_kill(pid):
                why = f"State.Pid {pid} is not a process of the engine's user in our pid namespace"
                raise ContainerStartError(self.name, argv, None, why)
            if self.oci_runtime is None or sandbox_of(self.oci_runtime) is None:
                oci.await_workload(self.name, argv, pid, [], oci.EXEC_WAIT)  # past runc's init
        except BaseException as exc:
            with contextlib.suppress(*ENGINE_ERRORS, OSError):
                self.remove(str(sdk.id))
            if isinstance(exc, ENGINE_ERRORS):
                raise ContainerStartError(self.name, argv, None, _explain(exc)) from None
            raise
        return PodmanContainer(self, sdk, spec)

    def remove(self, container_id: str) -> None:
        """Kill and delete at once (no stop timeout: pid 1 may ignore SIGTERM)."""
        params = {"force": True, "timeout": 0, "volumes": True}
        for attempt in range(20):
            try:
                self.client.api.delete(
                    f"/containers/{container_id}", params=params
                ).raise_for_status()
                break
            except NotFound:
                break
            except APIError as exc:
                # a mount of the dying container can be busy for a moment (its shm)
                if "busy" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.1)
        end_exec_monitors(container_id)

    def engine_error(self, what: str, exc: Exception) -> ContainerSecError:
        """A clear error for what podman-py raised: the service refused, or it is gone."""
        service = self.service
        if service is not None and not answers(service.socket, timeout=1.0):
            why = f"the Podman API at {service.socket} stopped answering ({what}: {_explain(exc)})"
            return RuntimeUnavailable(self.name, why, "make setup")
        return ProbeError(self.name, f"{what} failed: {_explain(exc)}")

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves it running; the next session's reap() removes it."""
        self.live.forget(c)

    def reap(self) -> int:
        """Remove the labelled containers of dead sessions, then the services dead sessions started;
        0 when this Podman cannot run here."""
        if self._client is None and not self.availability().available:
            return 0
        n = 0
        try:
            found = self.client.containers.list(all=True, filters={"label": session.LABEL_OWNER})
        except ENGINE_ERRORS as exc:
            raise self.engine_error("list containers", exc) from None
        for sdk in found:
            owner = (sdk.labels or {}).get(session.LABEL_OWNER, "")
            if not session.owner_alive(owner):
                try:
                    self.remove(str(sdk.id))
                    n += 1
                except ENGINE_ERRORS:
                    pass
        return n + reap_services(self.rootless)

    def close(self) -> None:
        """Stop this session's containers (a dead service leaves them to reap()), close the client
        and stop a service this process started."""
        self.live.stop_all(ContainerSecError, OSError)  # a dead service: reaped later
        with self._lock:
            if self._client is not None:
                cast(Any, self._client).close()
                self._client = None
            if self.service is not None:
                self.service.stop()
                self.service = None


def _create_raw(
    client: PodmanClient, image: str, name: str, kw: dict[str, Any], options: dict[str, list[str]]
) -> SdkContainer:
    """``containers.create`` with mount options podman-py's mount dict cannot carry."""
    from podman import api

    manager: Any = client.containers
    payload = manager._render_payload(
        {"image": image, "name": name, "labels": session.current().labels, **kw}
    )
    for m in payload.get("mounts") or []:
        if m.get("destination") in options:
            m["options"] = options[m["destination"]]
    r = client.api.post(
        "/containers/create",
        headers={"content-type": "application/json"},
        data=api.prepare_body(payload),
    )
    r.raise_for_status(not_found=SdkImageNotFound)
    return client.containers.get(r.json()["Id"])


def _status(sdk: SdkContainer) -> tuple[bool, int | None]:
    sdk.reload()
    state = sdk.attrs["State"]
    return bool(state.get("Running")), state.get("ExitCode")
