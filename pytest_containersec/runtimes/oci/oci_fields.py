"""The Docker and Podman mapping of the spec fields beyond the original set (pure):
entrypoint, group_add, devices, pid/ipc/uts, ulimits, sysctls, tmpfs, unmask, gidmap,
apparmor, label. ``host_config`` and ``create_kwargs`` merge these into their kwargs."""

from __future__ import annotations

from typing import Any

from ...errors import UnsupportedSpec
from ...spec import ContainerSpec

# HostConfig keys docker-py has no keyword for (set by DockerRuntime on the raw request)
HOST_CONFIG_EXTRA = "host_config_extra"
# Mount options by target that podman-py cannot pass (set by PodmanRuntime on the request)
MOUNT_OPTIONS = "mount_options"
# Docker's and Podman's --tmpfs defaults: a tmpfs gets these unless the spec loosens them
TMPFS_DEFAULT_FLAGS = ("noexec", "nosuid", "nodev")
_LOOSER = {"noexec": "exec", "nosuid": "suid", "nodev": "dev"}


def tmpfs_flags(flags: tuple[str, ...]) -> list[str]:
    """The mount flags a tmpfs gets: the given ones plus the defaults not loosened."""
    out = [f for f in flags if f not in ("rw", *_LOOSER.values())]
    out += [d for d in TMPFS_DEFAULT_FLAGS if d not in flags and _LOOSER[d] not in flags]
    return sorted(set(out))


def _ulimits(spec: ContainerSpec) -> list[dict[str, Any]]:
    return [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in spec.ulimit_list]


def docker_fields(spec: ContainerSpec, runtime: str) -> dict[str, Any]:
    """docker-py ``containers.create`` kwargs; ``security_opt`` entries to append."""
    kw: dict[str, Any] = {}
    if spec.gidmap is not None:
        raise UnsupportedSpec("gidmap", runtime, "Docker maps ids per daemon, not per container")
    if spec.group_add:
        kw["group_add"] = list(spec.group_add)
    if spec.devices:
        kw["devices"] = [str(d) for d in spec.device_list]
    for ns in spec.namespaces_host:
        kw[f"{ns}_mode"] = "host"
    if spec.ulimits:
        kw["ulimits"] = _ulimits(spec)
    if spec.sysctls:
        kw["sysctls"] = dict(spec.sysctl_pairs)
    if spec.tmpfs:
        kw["tmpfs"] = {t.target: ",".join(t.options) for t in spec.tmpfs_list}
    opts: list[str] = []
    if spec.unmask:  # the docker CLI turns systempaths=unconfined into these (the API has
        kw[HOST_CONFIG_EXTRA] = {"MaskedPaths": [], "ReadonlyPaths": []}  # no such option)
    if spec.apparmor is not None:
        opts.append(f"apparmor={spec.apparmor}")
    opts += [f"label={x}" for x in spec.label]
    if opts:
        kw["security_opt"] = opts
    return kw


def podman_fields(spec: ContainerSpec, runtime: str) -> dict[str, Any]:
    """podman-py ``containers.create`` kwargs; ``mounts`` entries to append."""
    kw: dict[str, Any] = {}
    if spec.group_add:
        kw["group_add"] = list(spec.group_add)
    if spec.devices:
        kw["devices"] = [str(d) for d in spec.device_list]
    for ns in spec.namespaces_host:
        kw[f"{ns}_mode"] = "host"
    if spec.ulimits:
        kw["ulimits"] = _ulimits(spec)
    if spec.sysctls:
        kw["sysctls"] = dict(spec.sysctl_pairs)
    mounts = []
    options: dict[str, list[str]] = {}
    for t in spec.tmpfs_list:
        m: dict[str, Any] = {"type": "tmpfs", "source": "tmpfs", "target": t.target}
        mounts.append(m)
        # podman-py's mount dict passes size, mode and ro only: the options go on the
        # rendered request (PodmanRuntime), with Docker's noexec/nosuid/nodev defaults
        options[t.target] = [o for o in t.options if "=" in o] + tmpfs_flags(t.flags)
    if mounts:
        kw["mounts"] = mounts
        kw[MOUNT_OPTIONS] = options
    if spec.unmask:
        kw["unmasked_paths"] = ["ALL"]
    if spec.apparmor is not None:
        raise UnsupportedSpec(
            "apparmor", runtime, "podman-py has no AppArmor profile option (the CLI's "
            "--security-opt apparmor=)",
        )  # fmt: skip
    if spec.label:
        kw["security_opt"] = list(spec.label)  # podman-py sends these as selinux_opts
    return kw
