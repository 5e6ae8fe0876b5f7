"""Podman: the pure spec -> podman-py create kwargs mapping, and inspect -> declared."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from ...errors import UnsupportedSpec
from ...model import Declared
from ...spec import ContainerSpec, Volume, refuse_portable_profile
from ...spec_types import ulimits
from ..base import PROBE_DIR
from ..oci import oci, oci_fields
from .podman_service import RootlessIds

CPU_PERIOD = 100_000  # microseconds; cpus -> quota (podman-py silently drops nano_cpus)
SECCOMP_ANNOTATION = "io.podman.annotations.seccomp"  # set like the podman CLI does
ALL_CAPS = 41


def _to_ns(host: int, count: int, own: int, sub: tuple[int, int]) -> int | None:
    """A host id range as an id of the rootless user's namespace (0 = the user itself)."""
    if host == own and count == 1:
        return 0
    start, n = sub
    if start <= host and host + count <= start + n:
        return 1 + host - start
    return None


def _idmaps(spec: ContainerSpec, runtime: str, ids: RootlessIds | None) -> dict[str, Any]:
    """``INSIDE:HOST:COUNT`` maps -> libpod IDMappingOptions (rootless: relative ids)."""
    out: dict[str, Any] = {"HostUIDMapping": False, "HostGIDMapping": False}
    for key, kind, own, sub, maps in (
        ("UIDMap", "uid", ids.uid if ids else 0, ids.subuid if ids else (0, 0), spec.uid_maps),
        ("GIDMap", "gid", ids.gid if ids else 0, ids.subgid if ids else (0, 0), spec.gid_maps),
    ):
        entries = []
        for inside, host, count in maps:
            outside: int | None = host
            if ids is not None:
                outside = _to_ns(host, count, own, sub)
                if outside is None:
                    raise UnsupportedSpec(
                        "gidmap" if kind == "gid" and spec.gidmap else "userns",
                        runtime,
                        f"host {kind}s {host}-{host + count - 1} are neither the rootless "
                        f"user's own {kind} {own} nor inside its sub{kind} range "
                        f"{sub[0]}-{sum(sub) - 1}",
                    )
            entries.append({"container_id": inside, "host_id": outside, "size": count})
        out[key] = entries
    return out


def conf_default_ulimits(paths: list[Path]) -> tuple[str, ...]:
    """``[containers] default_ulimits`` of the containers.conf files (the last one wins)."""
    found: tuple[str, ...] = ()
    for path in paths:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        value = (data.get("containers") or {}).get("default_ulimits")
        if isinstance(value, list):
            found = tuple(str(v) for v in value)
    return found


def conf_paths(home: str | None) -> list[Path]:
    """The containers.conf files Podman reads, in order (system, drop-ins, user's)."""
    paths = [Path("/usr/share/containers/containers.conf"), Path("/etc/containers/containers.conf")]
    paths += sorted(Path("/etc/containers/containers.conf.d").glob("*.conf"))
    if home:
        paths.append(Path(home, ".config/containers/containers.conf"))
        paths += sorted(Path(home, ".config/containers/containers.conf.d").glob("*.conf"))
    return paths


def create_kwargs(
    spec: ContainerSpec,
    runtime: str,
    rootless: RootlessIds | None = None,
    *,
    probe: str,
    default_ulimits: tuple[str, ...] = (),
) -> dict[str, Any]:
    """podman-py ``containers.create`` keyword arguments for ``spec`` (pure); ``probe``
    is the container's own probe folder on the host.

    ``rootless``: the user's ids when the engine is rootless (explicit userns maps name
    host ids; rootless Podman wants ids of the user's namespace, so they are translated).
    """
    kw: dict[str, Any] = {}
    entrypoint, command = oci.entrypoint_and_command(spec)
    if spec.properties:
        raise UnsupportedSpec("properties", runtime, "systemd unit properties: use systemd-run")
    refuse_portable_profile(spec, runtime)
    if entrypoint is not None:
        kw["entrypoint"] = entrypoint
    kw["command"] = command
    if spec.user is not None:
        kw["user"] = spec.user
    if spec.cap_add:
        kw["cap_add"] = ["ALL"] if len(spec.cap_add) >= ALL_CAPS else list(spec.cap_add)
    if spec.cap_drop:
        kw["cap_drop"] = ["ALL"] if len(spec.cap_drop) >= ALL_CAPS else list(spec.cap_drop)
    kw["privileged"] = spec.privileged
    if spec.seccomp != "default":
        if spec.seccomp != "unconfined":
            try:
                json.loads(Path(spec.seccomp).read_text())
            except (OSError, ValueError) as exc:
                raise UnsupportedSpec("seccomp", runtime, f"cannot read profile: {exc}") from None
        kw["seccomp_profile_path"] = spec.seccomp
        kw["annotations"] = {SECCOMP_ANNOTATION: spec.seccomp}
    if spec.no_new_privileges:
        kw["no_new_privileges"] = True
    kw["read_only"] = spec.read_only
    if spec.memory is not None:
        kw["mem_limit"] = spec.memory
    if spec.cpus is not None:
        kw["cpu_period"] = CPU_PERIOD
        kw["cpu_quota"] = round(spec.cpus * CPU_PERIOD)
    if spec.pids_limit is not None:
        kw["pids_limit"] = spec.pids_limit
    if spec.userns == "host":
        kw["userns_mode"] = "host"
    elif spec.userns == "auto":  # the API ignores nsmode auto without AutoUserNs
        kw["userns_mode"] = "auto"
        kw["idmappings"] = {"AutoUserNs": True}
    elif spec.userns == "keep-id":
        if rootless is None:
            raise UnsupportedSpec(
                "userns", runtime, "keep-id maps the invoking user; rootful Podman refuses it"
            )
        kw["userns_mode"] = "keep-id"
    elif spec.userns is not None:
        kw["userns_mode"] = "private"  # the API ignores idmappings without it
        kw["idmappings"] = _idmaps(spec, runtime, rootless)
    mounts = [_bind(probe, PROBE_DIR, True)]
    for v in spec.volumes:
        vol = v if isinstance(v, Volume) else Volume.parse(v)
        mounts.append(_bind(vol.source, vol.target, vol.read_only))
    kw["mounts"] = mounts
    kw["network_mode"] = spec.network
    if spec.env:
        kw["environment"] = dict(spec.env)
    extra = oci_fields.podman_fields(spec, runtime)
    kw["mounts"] += extra.pop("mounts", [])
    if "ulimits" in extra:  # given ulimits replace containers.conf's over the API: keep
        named = {u["Name"] for u in extra["ulimits"]}  # the engine's for the other names
        for u in ulimits(default_ulimits):
            if u.name not in named:
                extra["ulimits"].append({"Name": u.name, "Soft": u.soft, "Hard": u.hard})
    return {**kw, **extra}


def _bind(source: str, target: str, read_only: bool) -> dict[str, Any]:
    return {"type": "bind", "source": source, "target": target, "read_only": read_only}


def _bind_text(bind: str) -> str:
    """``/src:/dst:ro,rprivate,rbind`` -> ``/src:/dst:ro`` (the ContainerSpec spelling)."""
    src, _, rest = bind.partition(":")
    dst, _, opts = rest.partition(":")
    return f"{src}:{dst}" + (":ro" if "ro" in opts.split(",") else "")


def declared_from_inspect(
    attrs: dict[str, Any], rootless: bool, oci_config: dict[str, Any] | None = None
) -> Declared:
    """Normalize ``podman inspect`` into docker's declared keys (pure), plus ``rootless``."""
    declared = oci.declared_from_inspect(
        attrs, "podman", oci_config=oci_config, bind_text=_bind_text
    )
    return {**declared, "rootless": rootless}
