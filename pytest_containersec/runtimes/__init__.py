"""The runtime registry: every runtime by name, one adapter instance per process.

Three sources, one list: the built-ins below, the runtimes other packages ship through the
``pytest_containersec.runtimes`` entry-point group (``NAME = "package.module:factory"``,
a zero-argument callable returning a ``Runtime``), and, inside pytest, the
``pytest_containersec_runtime_factories`` hook on top (``fixtures.ContainersecState``).
The plugin, the CLI, policy validation, ``--help`` and ``containersec runtimes`` read
:func:`known_names` / :func:`get_runtime`; an unknown name is ``UnknownRuntime``.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import UnknownRuntime
from .oci import oci_variants as _variants

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

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
# Engines that exist on some hosts only (Incus: Debian trixie and later): any ContainerSpec,
# but selected only when named, so that a host without them runs (and its generic
# per-runtime tests parametrise over) RUNTIME_NAMES alone.
OPTIONAL_NAMES: tuple[str, ...] = ("incus",)

# The OCI runtime as a dimension (``podman:crun``, ``docker:runsc``): see oci_variants.
VARIANT_NAMES: tuple[str, ...] = _variants.VARIANT_NAMES
# Every built-in name a user may select; known_names() adds the installed packages' ones.
KNOWN_NAMES: tuple[str, ...] = RUNTIME_NAMES + OPTIONAL_NAMES + MANIFEST_RUNTIMES + VARIANT_NAMES

ENTRY_POINT_GROUP = "pytest_containersec.runtimes"
# What a runtime name may look like: a comma separates names in --containersec-runtime,
# a colon an engine from its OCI runtime.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$"
_NAME = re.compile(NAME_PATTERN)

RuntimeKind = Literal["engine", "optional", "manifest", "variant"]
RuntimeFactory = Callable[[], "Runtime"]


@dataclass(frozen=True)
class RuntimeEntry:
    """One registered runtime: its name, how to make its adapter, and where it comes from.

    ``kind``: ``engine`` runs any ContainerSpec (selected by default), ``optional`` too
    (selected only when named: a host-specific engine), ``manifest`` only
    specs read from a deployment file (podman-kube), ``variant`` an ENGINE:OCI pair
    (selected only when named)."""

    name: str
    factory: RuntimeFactory
    kind: RuntimeKind = "engine"
    origin: str = "built-in"


_instances: dict[str, Runtime] = {}
_lock = threading.Lock()
_installed: dict[str, RuntimeEntry] | None = None


def _create(name: str) -> Runtime:
    if name in VARIANT_NAMES:
        return _create_variant(name)
    if name == "docker":
        from .docker.docker import DockerRuntime

        return DockerRuntime()
    if name in ("podman", "podman-rootless"):
        from .podman.podman import PodmanRuntime

        podman: Runtime = PodmanRuntime(rootless=name == "podman-rootless")
        return podman
    if name == "nspawn":
        from .nspawn.nspawn import NspawnRuntime

        nspawn: Runtime = NspawnRuntime()
        return nspawn
    if name in ("docker-userns", "docker-rootless"):  # the Docker adapter, on a daemon of its own
        from .docker.docker import DockerRuntime
        from .docker.docker_daemons import DockerDaemon

        return DockerRuntime(name, daemon=DockerDaemon(name))
    if name == "systemd-run":
        from .systemd.systemd_run import SystemdRunRuntime

        systemd_run: Runtime = SystemdRunRuntime()
        return systemd_run
    if name == "lxc":
        from .lxc.lxc import LxcRuntime

        lxc: Runtime = LxcRuntime()
        return lxc
    if name == "containerd":
        from .containerd.containerd import ContainerdRuntime

        containerd: Runtime = ContainerdRuntime()
        return containerd
    if name == "portable":
        from .systemd.portable import PortableRuntime

        portable: Runtime = PortableRuntime()
        return portable
    if name == "incus":
        from .incus.incus import IncusRuntime

        incus: Runtime = IncusRuntime()
        return incus
    if name == "podman-kube":
        from .podman.podman_kube import PodmanKubeRuntime

        kube: Runtime = PodmanKubeRuntime()
        return kube
    raise UnknownRuntime([name], known_names())


def _create_variant(name: str) -> Runtime:
    engine, oci = _variants.split(name)
    if engine == "docker":
        from .docker.docker import DockerRuntime

        return DockerRuntime(name, oci_runtime=oci)
    if engine in ("podman", "podman-rootless"):
        from .podman.podman import PodmanRuntime

        podman: Runtime = PodmanRuntime(engine == "podman-rootless", oci_runtime=oci, name=name)
        return podman
    from .containerd.containerd import ContainerdRuntime

    containerd: Runtime = ContainerdRuntime(name, runc_binary=oci)
    return containerd


def _builtin(name: str, kind: RuntimeKind) -> RuntimeEntry:
    return RuntimeEntry(name, lambda: _create(name), kind)


BUILTINS: dict[str, RuntimeEntry] = {
    **{n: _builtin(n, "engine") for n in RUNTIME_NAMES},
    **{n: _builtin(n, "optional") for n in OPTIONAL_NAMES},
    **{n: _builtin(n, "manifest") for n in MANIFEST_RUNTIMES},
    **{n: _builtin(n, "variant") for n in VARIANT_NAMES},
}


def _entry_point_factory(ep: EntryPoint) -> RuntimeFactory:
    def make() -> Runtime:
        from .base import Runtime

        made: Any = ep.load()()
        if not isinstance(made, Runtime) or made.name != ep.name:
            raise TypeError(
                f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) must give a "
                f"Runtime named {ep.name!r}, not {made!r}"
            )
        return made

    return make


def _discover() -> dict[str, RuntimeEntry]:
    """The runtimes installed packages declare in the entry-point group (nothing imported)."""
    from importlib.metadata import entry_points

    found: dict[str, RuntimeEntry] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", None) or "an installed package"
        where = f"entry point {ep.name} = {ep.value} of {dist}"
        problem = (
            "the name is a built-in runtime's" if ep.name in BUILTINS
            else f"the name does not match {NAME_PATTERN}" if not _NAME.match(ep.name)
            else f"another package already registers it ({found[ep.name].origin})"
            if ep.name in found
            else ""
        )  # fmt: skip
        if problem:
            warnings.warn(f"containersec: ignored {where}: {problem}", RuntimeWarning, 2)
            continue
        found[ep.name] = RuntimeEntry(ep.name, _entry_point_factory(ep), "engine", where)
    return found


def registry(refresh: bool = False) -> dict[str, RuntimeEntry]:
    """Every runtime by name: the built-ins, then the installed packages' (discovered once
    per process; ``refresh=True`` looks again)."""
    global _installed
    with _lock:
        if _installed is None or refresh:
            _installed = _discover()
        return {**BUILTINS, **_installed}


def known_names(refresh: bool = False) -> tuple[str, ...]:
    """Every name a user may select: policies, ``--containersec-runtime``, the CLI."""
    return tuple(registry(refresh))


def default_names(kube: bool = False) -> tuple[str, ...]:
    """What runs when nobody names runtimes: every engine (built-in or installed), plus the
    manifest runtimes for a spec read from a Kubernetes manifest; no ENGINE:OCI variant."""
    kinds = ("engine", "manifest") if kube else ("engine",)
    return tuple(n for n, e in registry().items() if e.kind in kinds)


def check_names(names: Iterable[str], known: Iterable[str] | None = None) -> None:
    """Raise ``UnknownRuntime`` (a usage error) for any name not in ``known`` (default: the
    registry)."""
    names = list(names)
    if known is None and all(n in BUILTINS for n in names):
        return  # no need to scan the installed packages (~40 ms of a CLI run)
    known = tuple(known_names() if known is None else known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownRuntime(unknown, known)


def get_runtime(name: str) -> Runtime:
    """The process-wide adapter for ``name`` (cheap: engines are contacted lazily)."""
    # A built-in is never an entry point's (those are ignored): no scan for it.
    entry = BUILTINS.get(name) or registry().get(name)
    if entry is None:
        raise UnknownRuntime([name], known_names())
    with _lock:
        if name not in _instances:
            _instances[name] = entry.factory()
        return _instances[name]


def close_all() -> None:
    """Stop every container and service this process started, on every runtime used."""
    with _lock:
        runtimes = list(_instances.values())
        _instances.clear()
    for rt in runtimes:
        rt.close()


def __getattr__(name: str) -> Any:
    # The adapter contract is imported when first asked for, so that reading the registry
    # (pytest's --help, option parsing) does not load it.
    if name in ("Availability", "Container", "ExecResult", "Runtime"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "KNOWN_NAMES",
    "MANIFEST_RUNTIMES",
    "OPTIONAL_NAMES",
    "RUNTIME_NAMES",
    "VARIANT_NAMES",
    "Availability",
    "Container",
    "ExecResult",
    "Runtime",
    "RuntimeEntry",
    "check_names",
    "close_all",
    "default_names",
    "get_runtime",
    "known_names",
    "registry",
]
