"""The OCI runtime as a dimension: ``ENGINE:OCI`` names (``podman:crun``, ``docker:runsc``).

Each variant is the engine's own adapter with the low-level runtime chosen per container
(Docker ``HostConfig.Runtime``, Podman ``--runtime``, ctr ``--runc-binary``), shown as a
column of its own. What a variant needs before it can run:

- the binary (``apt-get install crun``/``runsc``); Docker also needs it registered in
  the daemon (``runtimes`` in daemon.json; ``runc`` is built in);
- a host it accepts: crun refuses cgroup v1 "hybrid" hosts (this machine) — its refusal
  becomes RuntimeUnavailable naming why, never a crash;
- gVisor (``runsc``): the host's ``/proc/<pid>`` of the container is the sandbox's Sentry,
  not the workload, and ``/proc`` inside is emulated. Its containers are marked
  ``sandbox = "gvisor"`` and their Facts say which side each field was read from
  (facts_sandbox); nothing of the Sentry is presented as the workload's. runsc is
  registered with ``--network=none`` (Docker's daemon.json ``runtimeArgs``, Podman's
  ``--runtime-flag``): with its own netstack it refuses a network namespace it takes for
  the host's (measured with Docker 20.10's ``--network none``), so ``network="host"``
  is UnsupportedSpec. containerd needs gVisor's shim ``containerd-shim-runsc-v1``, which
  Debian's runsc package does not ship.
"""

from __future__ import annotations

import re
import shutil

from ...errors import RuntimeUnavailable, UnsupportedSpec

ENGINES: tuple[str, ...] = ("docker", "podman", "podman-rootless", "containerd")
OCI_RUNTIMES: tuple[str, ...] = ("runc", "crun", "runsc")
VARIANT_NAMES: tuple[str, ...] = tuple(f"{e}:{o}" for e in ENGINES for o in OCI_RUNTIMES)
GVISOR = "runsc"
# runsc's own flags wherever the engine lets us pass them (see the module docstring).
GVISOR_FLAGS: tuple[str, ...] = ("--network=none",)
GVISOR_SHIM = "containerd-shim-runsc-v1"
# What an OCI runtime prints when it refuses this host (not the container's spec), and
# what to do instead.
_CGROUP_V2_HINT = "use the runc variant here, or a host with a pure cgroup v2 hierarchy"
_ROOTLESS_RUNSC_HINT = (
    "rootless runsc cannot create its sandbox's cgroups here (cgroup v1, or systemd's "
    "cgroup driver as the user); use the rootful podman:runsc or docker:runsc, or "
    "podman-rootless:runc"
)
_HOST_REFUSALS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?:crun: )?cgroups in hybrid mode not supported[^\n]*"), _CGROUP_V2_HINT),
    (
        re.compile(
            r"(?:crun|runc|runsc): [^\n]*(?:not supported on this host|unsupported kernel)[^\n]*"
        ),
        _CGROUP_V2_HINT,
    ),
    # rootless runsc on cgroup v1: the user may not create the sandbox's cgroups
    (
        re.compile(r"runsc: creating container: cannot set up cgroup[^\n]*permission denied"),
        _ROOTLESS_RUNSC_HINT,
    ),
    # rootless runsc on cgroup v2 with systemd (trixie, Podman 5): the systemd cgroup driver
    # as the user is refused
    (
        re.compile(r"runsc: creating container: systemd error: permission denied[^\n]*", re.I),
        _ROOTLESS_RUNSC_HINT,
    ),
)


def split(name: str) -> tuple[str, str | None]:
    """``"podman:crun"`` -> ``("podman", "crun")``; a plain name -> ``(name, None)``."""
    engine, sep, oci = name.partition(":")
    return (engine, oci) if sep else (name, None)


def require_binary(name: str, oci: str) -> None:
    """Raise RuntimeUnavailable, with the install fix, when the OCI runtime ``oci`` is not
    installed, or for containerd with runsc when gVisor's shim is missing."""
    if _which(oci) is None:
        raise RuntimeUnavailable(name, f"the OCI runtime {oci} is not installed",
                                 f"apt-get install {oci} (make setup)")  # fmt: skip
    if oci == GVISOR and name.split(":", 1)[0] == "containerd" and _which(GVISOR_SHIM) is None:
        raise RuntimeUnavailable(
            name, f"containerd runs gVisor through its shim {GVISOR_SHIM}, which is not "
            "installed (Debian's runsc package does not ship it)",
            f"install gVisor's release build with {GVISOR_SHIM} (gvisor.dev), or use "
            "docker:runsc / podman:runsc",
        )  # fmt: skip


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin:/bin")


def sandbox_of(oci: str | None) -> str | None:
    """The Container.sandbox of containers run by ``oci`` ("gvisor" for runsc)."""
    return "gvisor" if oci == GVISOR else None


def check_network(name: str, oci: str | None, network: str) -> None:
    """runsc is run with ``--network=none``: a spec that asks for the host's network
    cannot be expressed (UnsupportedSpec), rather than silently getting none."""
    if oci == GVISOR and network != "none":
        raise UnsupportedSpec(
            "network", name, f"{network!r}: runsc runs here with --network=none (its own "
            "netstack refuses the engine's network namespace); use the runc variant",
        )  # fmt: skip


def host_refusal(name: str, oci: str | None, message: str) -> RuntimeUnavailable | None:
    """The RuntimeUnavailable for an engine error that is the OCI runtime refusing this
    host (e.g. crun on cgroup v1 hybrid), or None for any other error."""
    if oci is None:
        return None
    for pattern, hint in _HOST_REFUSALS:
        m = pattern.search(message)
        if m is not None:
            return RuntimeUnavailable(name, f"{oci} refuses this host: {m.group(0).strip()}", hint)
    return None
