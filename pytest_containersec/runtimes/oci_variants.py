"""The OCI runtime as a dimension: ``ENGINE:OCI`` names (``podman:crun``, ``docker:runsc``).

Each variant is the engine's own adapter with the low-level runtime chosen per container
(Docker ``HostConfig.Runtime``, Podman ``--runtime``, ctr ``--runc-binary``), shown as a
column of its own. What a variant needs before it can run:

- the binary (``apt-get install crun``/``runsc``); Docker also needs it registered in
  the daemon (``runtimes`` in daemon.json; ``runc`` is built in);
- a host it accepts: crun refuses cgroup v1 "hybrid" hosts (this machine) — its refusal
  becomes RuntimeUnavailable naming why, never a crash;
- gVisor (``runsc``): the host's ``/proc/<pid>`` of the container is the sandbox's Sentry,
  not the workload, and ``/proc`` inside is emulated. Until Facts carry which side each
  field was read from, a runsc variant is unavailable with that reason: nothing of the
  Sentry is ever presented as the workload's.
"""

from __future__ import annotations

import re
import shutil

from ..errors import RuntimeUnavailable

ENGINES: tuple[str, ...] = ("docker", "podman", "podman-rootless", "containerd")
OCI_RUNTIMES: tuple[str, ...] = ("runc", "crun", "runsc")
VARIANT_NAMES: tuple[str, ...] = tuple(f"{e}:{o}" for e in ENGINES for o in OCI_RUNTIMES)
GVISOR_REASON = (
    "gVisor: the host's /proc/<pid> of the container is the sandbox's Sentry, not the "
    "workload, and /proc inside is emulated; Facts that say which side each field was "
    "read from are not implemented yet, so nothing is observed rather than the Sentry's "
    "credentials shown as the workload's"
)
# What an OCI runtime prints when it refuses this host (not the container's spec).
_HOST_REFUSALS = re.compile(
    r"(?:crun: )?cgroups in hybrid mode not supported[^\n]*|"
    r"(?:crun|runc|runsc): [^\n]*(?:not supported on this host|unsupported kernel)[^\n]*"
)


def split(name: str) -> tuple[str, str | None]:
    """``"podman:crun"`` -> ``("podman", "crun")``; a plain name -> ``(name, None)``."""
    engine, sep, oci = name.partition(":")
    return (engine, oci) if sep else (name, None)


def require_binary(name: str, oci: str) -> None:
    if (
        shutil.which(oci) is None
        and shutil.which(oci, path="/usr/sbin:/usr/bin:/sbin:/bin") is None
    ):
        raise RuntimeUnavailable(name, f"the OCI runtime {oci} is not installed",
                                 f"apt-get install {oci} (make setup)")  # fmt: skip
    if oci == "runsc":
        raise RuntimeUnavailable(name, GVISOR_REASON, "use a runc or crun variant meanwhile")


def host_refusal(name: str, oci: str | None, message: str) -> RuntimeUnavailable | None:
    """The RuntimeUnavailable for an engine error that is the OCI runtime refusing this
    host (e.g. crun on cgroup v1 hybrid), or None for any other error."""
    if oci is None:
        return None
    m = _HOST_REFUSALS.search(message)
    if m is None:
        return None
    hint = "use the runc variant here, or a host with a pure cgroup v2 hierarchy"
    return RuntimeUnavailable(name, f"{oci} refuses this host: {m.group(0).strip()}", hint)
