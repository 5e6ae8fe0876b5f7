"""Runtime registry: names -> adapters (one instance per process, created on first use)."""

from __future__ import annotations

import threading

from ..errors import ContainerSecError
from .base import Availability, Container, ExecResult, Runtime

RUNTIME_NAMES: tuple[str, ...] = (
    "docker",
    "podman",
    "podman-rootless",
    "nspawn",
    "docker-userns",
    "docker-rootless",
    "systemd-run",
)
# Runtimes that run a deployment file themselves, not any ContainerSpec: selected only
# for specs read from such a file (other specs: UnsupportedSpec).
MANIFEST_RUNTIMES: tuple[str, ...] = ("podman-kube",)
ALL_RUNTIME_NAMES: tuple[str, ...] = RUNTIME_NAMES + MANIFEST_RUNTIMES

_instances: dict[str, Runtime] = {}
_lock = threading.Lock()


def _create(name: str) -> Runtime:
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
    if name == "podman-kube":
        from .podman_kube import PodmanKubeRuntime

        kube: Runtime = PodmanKubeRuntime()
        return kube
    raise ContainerSecError(
        f"unknown runtime {name!r}; known runtimes: {', '.join(ALL_RUNTIME_NAMES)}"
    )


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
    "ALL_RUNTIME_NAMES",
    "MANIFEST_RUNTIMES",
    "RUNTIME_NAMES",
    "Availability",
    "Container",
    "ExecResult",
    "Runtime",
    "close_all",
    "get_runtime",
]
