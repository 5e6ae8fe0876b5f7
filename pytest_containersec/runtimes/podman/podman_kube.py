"""``podman-kube``: the Kubernetes manifest itself, run by rootful ``podman kube play``, so
Podman's own translation of the securityContext is observed beside containersec's.

Only specs read from a manifest (``kube=``) run here; any other spec, or a manifest spec
that a marker changed, is UnsupportedSpec. The workload's pod template becomes one Pod
holding only the chosen container, changed in what the probe needs and nothing else:
the probe folder as a read-only hostPath volume at /.containersec, ``imagePullPolicy:
Never`` (the image must exist locally: it is checked first), ``restartPolicy: Never``,
the pod's labels carrying the session owner (the reaper removes pods of dead sessions),
the other containers' volumes dropped, configMap/secret/projected/downwardAPI volumes as
empty memory emptyDirs (their files come from a cluster), no ``ports`` (podman refuses
port mappings on network none),
and, when the container names neither command nor args, the probe's idle sleep as its
command (as every runtime does). ``--network none`` unless the pod asks for hostNetwork.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ...errors import (
    ContainerSecError,
    ContainerStartError,
    ImageNotFound,
    ProbeError,
    UnsupportedSpec,
)
from ...linux import session
from ...model import Declared
from ...spec import ContainerSpec
from ..base import (
    MAX_OUTPUT,
    PROBE_BUSYBOX,
    PROBE_DIR,
    Availability,
    Container,
    ExecResult,
    LiveContainers,
)
from ..oci import oci
from ..probe_copy import ProbeCopy
from .podman_service import version_line
from .podman_spec import declared_from_inspect

NAME = "podman-kube"
TIMEOUT = 120
STATE = session.STATE_DIR / "podman-kube"
PROBE_VOLUME = "containersec-probe"


def _podman(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def pod_manifest(spec: ContainerSpec, doc: dict[str, Any], name: str, probe: str) -> dict[str, Any]:
    """The Pod that ``podman kube play`` runs for ``spec`` (pure; see the module doc)."""
    from ...sources.kube import POD_SPEC_PATHS

    assert spec.origin is not None
    node: Any = doc
    meta: dict[str, Any] = {}
    for key in POD_SPEC_PATHS[str(doc.get("kind"))]:
        if key == "spec" and isinstance(node.get("metadata"), dict):
            meta = node["metadata"]  # ends as the pod template's (or the Pod's) metadata
        node = node[key]
    pod = copy.deepcopy(node)
    chosen = [
        c for key in ("containers", "initContainers") for c in pod.get(key) or []
        if c.get("name") == spec.origin.name
    ]  # fmt: skip
    container = chosen[0]
    pod.pop("initContainers", None)
    pod["containers"] = [container]
    pod["restartPolicy"] = "Never"
    container["imagePullPolicy"] = "Never"
    if spec.network != "host":  # podman refuses port mappings on --network none
        container.pop("ports", None)
    if "command" not in container and "args" not in container:
        container["command"] = [PROBE_BUSYBOX]
        container["args"] = list(oci.IDLE_COMMAND)
    mounts = container.setdefault("volumeMounts", [])
    used = {m.get("name") for m in mounts}
    volumes = []
    for v in pod.get("volumes") or []:  # only the chosen container's; cluster-made
        if v.get("name") in used:  # contents (configMap, secret, ...) become empty
            cluster = {"configMap", "secret", "projected", "downwardAPI"} & set(v)
            volumes.append({"name": v["name"], "emptyDir": {"medium": "Memory"}} if cluster else v)
    pod["volumes"] = volumes
    mounts.append({"name": PROBE_VOLUME, "mountPath": PROBE_DIR, "readOnly": True})
    volumes.append({"name": PROBE_VOLUME, "hostPath": {"path": probe, "type": "Directory"}})
    annotations = dict(meta.get("annotations") or {})
    sess = session.current()
    labels = {session.LABEL_OWNER: sess.owner, session.LABEL_SESSION: sess.id}
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod}


class PodmanKubeContainer(Container):
    """The chosen container of a pod ``podman kube play`` started, driven through the ``podman``
    command (no API service)."""

    def __init__(self, rt: PodmanKubeRuntime, spec: ContainerSpec, pod: str, cid: str) -> None:
        self._rt = rt
        self.runtime = NAME
        self.spec = spec
        self.pod = pod
        self.id = cid
        self.name = f"{pod}-{spec.origin.name if spec.origin else ''}"
        self.engine_rootless = False
        self._stopped = False
        self.host_pid = int(self._inspect()["State"]["Pid"])

    def _inspect(self) -> dict[str, Any]:
        r = _podman("container", "inspect", self.id, timeout=60)
        if r.returncode != 0:
            raise ProbeError(NAME, f"podman inspect failed: {r.stderr.strip()}")
        data = json.loads(r.stdout)
        return dict(data[0])

    def exec(self, argv: list[str], timeout: float = 30.0) -> ExecResult:
        """``podman exec`` under the probe busybox's ``timeout`` (the command is killed inside);
        ExecTimeout when podman itself has not returned 30 s after that."""
        self.guard_probe()
        wrapped = oci.wrap_with_timeout(list(argv), timeout)
        try:
            r = subprocess.run(
                ["podman", "exec", self.id, *wrapped],
                capture_output=True,
                timeout=timeout + 30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            from ...errors import ExecTimeout

            raise ExecTimeout(NAME, argv, timeout) from None
        out, err = oci.BoundedBuffer(), oci.BoundedBuffer()
        out.add(r.stdout)
        err.add(r.stderr)
        return ExecResult(r.returncode, out.text(), err.text())

    def declared(self) -> Declared:
        """``podman inspect`` of the pod's container and its OCI config: what kube play made."""
        attrs = self._inspect()
        oci_config: dict[str, Any] | None = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            oci_config = json.loads(Path(attrs["OCIConfigPath"]).read_text())
        return {**declared_from_inspect(attrs, False, oci_config), "engine": "podman kube play"}

    def logs(self) -> str:
        """``podman logs --tail 200``, stdout and stderr together, bounded."""
        r = _podman("logs", "--tail", "200", self.id, timeout=60)
        return (r.stdout + r.stderr)[-MAX_OUTPUT:]

    def stop(self) -> None:
        """Remove the whole pod and its manifest folder; idempotent."""
        if self._stopped:
            return
        self._rt.remove_pod(self.pod)
        self._stopped = True
        self.release_probe()
        self._rt.forget(self)


class PodmanKubeRuntime:
    """Runs Kubernetes manifests with rootful ``podman kube play``."""

    name = NAME

    def __init__(self) -> None:
        self.live: LiveContainers[PodmanKubeContainer] = LiveContainers(NAME)

    def availability(self) -> Availability:
        """Check podman, root and its ``kube play``; starts nothing."""
        if shutil.which("podman") is None:
            return Availability(NAME, False, reason="podman is not installed", hint="make setup")
        if os.geteuid() != 0:
            return Availability(NAME, False, reason="podman kube play runs rootful here",
                                hint="run as root")  # fmt: skip
        r = _podman("kube", "play", "--help", timeout=30)
        if r.returncode != 0:
            return Availability(NAME, False, reason=f"podman kube play: {r.stderr.strip()}")
        return Availability(NAME, True, f"{version_line()} (kube play)")

    def start(self, spec: ContainerSpec) -> Container:
        """Play ``spec``'s pod. Only a spec read unchanged from a manifest runs: a changed field is
        UnsupportedSpec; ImageNotFound when the image is not in the local store."""
        origin = spec.origin
        if origin is None or origin.kind != "kube":
            raise UnsupportedSpec(
                "origin", NAME, "runs Kubernetes manifests only (kube=..., container=...)"
            )
        from ... import sources

        as_written = sources.load("kube", origin.path, origin.name).spec
        changed = sorted(k for k in spec.non_default_fields() | as_written.non_default_fields()
                         if getattr(spec, k) != getattr(as_written, k))  # fmt: skip
        for field in changed:
            raise UnsupportedSpec(field, NAME, "podman kube play runs the manifest as written")
        if _podman("image", "exists", spec.image, timeout=60).returncode != 0:
            raise ImageNotFound(NAME, spec.image)
        docs = list(yaml.safe_load_all(Path(origin.path).read_text()))
        docs = [d for d in docs if d is not None]
        name = session.current().next_name(NAME)
        probe = ProbeCopy.create(name)
        folder = STATE / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            manifest = pod_manifest(spec, docs[origin.document], name, str(probe.path))
            path = folder / "pod.yaml"
            path.write_text(yaml.safe_dump(manifest, sort_keys=False))
            c = self._play(spec, name, path)
        except BaseException:
            self.remove_pod(name)
            probe.remove()
            raise
        c.probe_copy = probe
        return self.live.add(c)

    def _play(self, spec: ContainerSpec, name: str, path: Path) -> PodmanKubeContainer:
        argv = ["podman", "kube", "play", "--start"]
        if spec.network != "host":
            argv.append("--network=none")
        argv.append(str(path))
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ContainerStartError(NAME, argv, None, f"no answer within {TIMEOUT}s") from None
        if r.returncode != 0:
            raise ContainerStartError(NAME, argv, r.returncode, r.stderr or r.stdout)
        assert spec.origin is not None
        cid = f"{name}-{spec.origin.name}"
        c = PodmanKubeContainer(self, spec, name, cid)

        def status() -> tuple[bool, int | None]:
            state = c._inspect()["State"]
            return bool(state.get("Running")), state.get("ExitCode")

        oci.check_running(NAME, argv, status, c.logs)
        return c

    def remove_pod(self, pod: str) -> None:
        """``podman pod rm --force --time 0`` and the pod's manifest folder; a pod already gone is
        no error (podman's status is not checked)."""
        _podman("pod", "rm", "--force", "--time", "0", pod, timeout=TIMEOUT)
        shutil.rmtree(STATE / pod, ignore_errors=True)

    def forget(self, c: Container) -> None:
        """Stop tracking ``c``: close() leaves its pod running; the next session's reap() removes
        it."""
        self.live.forget(c)

    def reap(self) -> int:
        """Remove the pods (and manifest folders) of sessions whose process is dead."""
        if shutil.which("podman") is None or os.geteuid() != 0:
            return 0
        r = _podman("pod", "ps", "--format", "json", "--filter", f"label={session.LABEL_OWNER}")
        n = 0
        with contextlib.suppress(ValueError):
            for pod in json.loads(r.stdout or "[]"):
                owner = (pod.get("Labels") or {}).get(session.LABEL_OWNER, "")
                ours = str(pod.get("Name", "")).startswith(session.NAME_PREFIX)
                if ours and not session.owner_alive(owner):
                    self.remove_pod(str(pod["Name"]))
                    n += 1
        return n

    def close(self) -> None:
        """Stop every pod this session still tracks (a failing podman leaves it to reap())."""
        self.live.stop_all(ContainerSecError, OSError, subprocess.SubprocessError)
