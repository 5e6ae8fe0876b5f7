"""Runtime registry: names -> adapters (one instance per process, created on first use)."""

from __future__ import annotations

import threading

from ..errors import UnknownRuntime
from . import oci_variants as _variants
from .base import Availability, Container, ExecResult, Runtime

RUNTIME_NAMES: tuple[str, ...] = (
    "docker",
    "podman",
    "podman-rootless",
    "nspawn",
    "docker-userns",
    "docker-rootless",
    "systemd-run",
    "lxc",
    "containerd",
    "portable",
)
# Runtimes that run a deployment file themselves, not any ContainerSpec: selected only
# for specs read from such a file (other specs: UnsupportedSpec).
MANIFEST_RUNTIMES: tuple[str, ...] = ("podman-kube",)

# The OCI runtime as a dimension (``podman:crun``, ``docker:runsc``): see oci_variants.
VARIANT_NAMES: tuple[str, ...] = _variants.VARIANT_NAMES
# Every name a user may select (policies, --containersec-runtime, the CLI).
KNOWN_NAMES: tuple[str, ...] = RUNTIME_NAMES + MANIFEST_RUNTIMES + VARIANT_NAMES

_instances: dict[str, Runtime] = {}
_lock = threading.Lock()


def _create(name: str) -> Runtime:
    if name in VARIANT_NAMES:
        return _create_variant(name)
    if name == "docker":
        from .docker import DockerRuntime

        return DockerRuntime()
    if name in ("podman", "podman-rootless"):
        from .podman import PodmanRuntime

        podman: Runtime = PodmanRuntime(rootless=name == "podman-rootless")
        return podman
    if name == "nspawn":
        from .nspawn import NspawnRuntime

        nspawn: Runtime = NspawnRuntime()
        return nspawn
    if name in ("docker-userns", "docker-rootless"):  # the Docker adapter, on a daemon of its own
        from .docker import DockerRuntime
        from .docker_daemons import DockerDaemon

        return DockerRuntime(name, daemon=DockerDaemon(name))
    if name == "systemd-run":
        from .systemd_run import SystemdRunRuntime

        systemd_run: Runtime = SystemdRunRuntime()
        return systemd_run
    if name == "lxc":
        from .lxc import LxcRuntime

        lxc: Runtime = LxcRuntime()
        return lxc
    if name == "containerd":
        from .containerd import ContainerdRuntime

        containerd: Runtime = ContainerdRuntime()
        return containerd
    if name == "portable":
        from .portable import PortableRuntime

        portable: Runtime = PortableRuntime()
        return portable
    if name == "podman-kube":
        from .podman_kube import PodmanKubeRuntime

        kube: Runtime = PodmanKubeRuntime()
        return kube
    raise UnknownRuntime([name], KNOWN_NAMES)


def _create_variant(name: str) -> Runtime:
    engine, oci = _variants.split(name)
    if engine == "docker":
        from .docker import DockerRuntime

        return DockerRuntime(name, oci_runtime=oci)
    if engine in ("podman", "podman-rootless"):
        from .podman import PodmanRuntime

        podman: Runtime = PodmanRuntime(engine == "podman-rootless", oci_runtime=oci, name=name)
        return podman
    from .containerd import ContainerdRuntime

    containerd: Runtime = ContainerdRuntime(name, runc_binary=oci)
    return containerd


def get_runtime(name: str) -> Runtime:
    """The process-wide adapter for ``name`` (cheap: engines are contacted lazily)."""
    with _lock:
        if name not in _instances:
            _instances[name] = _create(name)
        return _instances[name]


def close_all() -> None:
    """Stop every container and service this process started, on every runtime used."""
    with _lock:
        runtimes = list(_instances.values())
        _instances.clear()
    for rt in runtimes:
        rt.close()


__all__ = [
    "KNOWN_NAMES",
    "MANIFEST_RUNTIMES",
    "RUNTIME_NAMES",
    "VARIANT_NAMES",
    "Availability",
    "Container",
    "ExecResult",
    "Runtime",
    "close_all",
    "get_runtime",
]
