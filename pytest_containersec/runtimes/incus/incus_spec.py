"""Incus: the pure spec -> instance config mapping and the declared view of an instance.

Incus runs its containers on liblxc; what it has a config key for goes there, the rest
into ``raw.lxc`` (appended after Incus's own LXC config, so it overrides it). An instance
is created with ``--no-profiles`` (nothing from a profile: no network device whatever the
default profile says) and these devices: the root disk on the ``default`` pool, the probe
copy read-only at /.containersec, the init script's folder read-only at the agent's
run folder, and one disk per volume.

- image: the rootfs cache of the image (the one nspawn and LXC use), imported once as a
  local Incus image under ``containersec/<cache key>/<version>`` (no registry).
- command: ``raw.lxc lxc.init.cmd`` runs LXC's generated init script (see
  :mod:`..lxc.lxc_spec`), which resolves the command on PATH and execs it: the main
  process is the container's PID 1; empty -> the idle busybox sleep.
- The image config applies as on Docker: its ENTRYPOINT in front of a given command, its
  USER when the spec names none.
- user: docker's ``--user`` rules against the image's /etc files -> ``lxc.init.uid`` /
  ``lxc.init.gid`` (execs: ``incus exec --user/--group``); supplementary groups from
  /etc/group are UnsupportedSpec (nothing sets them for the main process).
- cap_add/cap_drop/privileged: Docker's arithmetic over Incus's default set, written as an
  explicit ``lxc.cap.keep`` (``lxc.cap.drop`` cleared first: LXC takes one or the other).
- privileged (Docker's meaning): every capability, no seccomp filter, AppArmor
  ``unconfined``, /proc, /sys and the cgroup tree read-write, no device rules; the user
  namespace stays (``userns="host"`` removes it: ``security.privileged``).
- seccomp: ``default`` = Incus's own filter; ``unconfined`` = ``security.syscalls.deny_default``
  and ``deny_compat`` off (no filter); a profile file is UnsupportedSpec (Incus takes
  LXC-format ``raw.seccomp`` only).
- no_new_privileges, read_only: ``lxc.no_new_privs = 1``, ``lxc.rootfs.options = ro``.
- memory/pids_limit/cpus: ``limits.memory`` (bytes), ``limits.processes``,
  ``limits.cpu.allowance = Qms/100ms`` (CFS quota; a quota finer than 1 ms is UnsupportedSpec).
- userns: default/``auto`` -> Incus's map (root's /etc/subuid range); ``host`` ->
  ``security.privileged`` (no user namespace); ``0:OUTSIDE:COUNT`` ->
  ``security.idmap.isolated`` + ``security.idmap.base``/``size``; ``keep-id`` and several
  ranges: UnsupportedSpec.
- network: ``none`` -> no nic (a namespace with loopback only); ``host``: UnsupportedSpec
  (Incus has no host-network container and refuses ``lxc.net.*`` in raw.lxc).
- volumes: disk devices (``readonly`` for ``:ro``); env: ``environment.*`` (the main
  process and every exec); properties: UnsupportedSpec.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ...errors import UnsupportedSpec
from ...linux import caps
from ...model import Declared, DeclaredSeccomp
from ...spec import CORE_FIELDS, ContainerSpec, Volume, refuse_unmapped
from ..base import PROBE_DIR
from ..lxc import lxc_spec
from ..nspawn import nspawn_agent as agent

NAME = "incus"
POOL = "default"
# Incus's own drops (its LXC config for every container); the rest of the set stays.
INCUS_DROPS = frozenset({"CAP_SYS_TIME", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
                         "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE"})  # fmt: skip
OWNER_KEY = "user.containersec.owner"
SESSION_KEY = "user.containersec.session"
PROBE_DEVICE = "containersec-probe"
RUN_DEVICE = "containersec-run"
CPU_PERIOD_MS = 100
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ALLOWANCE = re.compile(r"^(\d+)ms/(\d+)ms$")


def default_caps() -> frozenset[str]:
    """The bounding set Incus gives a container: everything but its own drops."""
    return caps.ALL_CAPS - INCUS_DROPS


def capability_set(spec: ContainerSpec) -> frozenset[str]:
    """Docker's TweakCapabilities arithmetic over Incus's default set."""
    return caps.tweak(default_caps(), spec.cap_add, spec.cap_drop, spec.privileged)


def image_alias(cache_key: str, version: str) -> str:
    """The local image alias of a rootfs cache entry: ``containersec/KEY/VERSION``, where
    VERSION is the first 12 hex digits of the sha256 of the entry's stamp or image id (so
    a re-exported image is a new alias; setup.d/90-incus.sh computes the same)."""
    return f"containersec/{cache_key}/{hashlib.sha256(version.encode()).hexdigest()[:12]}"


def metadata_yaml(architecture: str, created: int, image: str) -> str:
    """The ``metadata.yaml`` of a unified image tarball (pure; the strings JSON-quoted, which
    YAML reads as they are, whatever the image name holds)."""
    return (
        f"architecture: {json.dumps(architecture)}\ncreation_date: {created}\nproperties:\n"
        f"  description: {json.dumps(f'{image} exported by pytest-containersec')}\n"
        "  os: containersec\n  release: image\n"
    )


def _idmap(spec: ContainerSpec) -> dict[str, str]:
    if spec.userns in (None, "auto"):
        return {}
    if spec.userns == "host":
        return {"security.privileged": "true"}
    if spec.userns == "keep-id":
        raise UnsupportedSpec("userns", NAME, "'keep-id' is Podman's; Incus maps one range")
    maps = spec.uid_maps
    if len(maps) != 1 or maps[0][0] != 0:
        raise UnsupportedSpec(
            "userns", NAME, f"{spec.userns!r}: one range starting at container uid 0 is mapped"
        )
    _, outside, count = maps[0]
    return {
        "security.idmap.isolated": "true",
        "security.idmap.base": str(outside),
        "security.idmap.size": str(count),
    }


def _allowance(cpus: float) -> str:
    quota_us = round(cpus * CPU_PERIOD_MS * 1000)
    if quota_us <= 0 or quota_us % 1000:
        raise UnsupportedSpec(
            "cpus", NAME, f"{cpus}: limits.cpu.allowance takes whole milliseconds per 100 ms"
        )
    return f"{quota_us // 1000}ms/{CPU_PERIOD_MS}ms"


def raw_lxc(spec: ContainerSpec, ids: tuple[int, int] | None) -> list[str]:
    """The ``raw.lxc`` lines (pure)."""
    lines = ["lxc.cap.drop ="]
    keep = capability_set(spec)
    if keep != caps.ALL_CAPS:
        names = " ".join(sorted(c.removeprefix("CAP_").lower() for c in keep)) or "none"
        lines.append(f"lxc.cap.keep = {names}")
    if spec.privileged:
        lines += ["lxc.apparmor.profile = unconfined", "lxc.mount.auto =",
                  "lxc.mount.auto = proc:rw sys:rw cgroup:rw",
                  "lxc.cgroup2.devices.deny =", "lxc.cgroup2.devices.allow ="]  # fmt: skip
    if spec.no_new_privileges:
        lines.append("lxc.no_new_privs = 1")
    if spec.read_only:
        lines.append("lxc.rootfs.options = ro")
    if ids is not None:
        lines += [f"lxc.init.uid = {ids[0]}", f"lxc.init.gid = {ids[1]}"]
    lines.append("lxc.init.cmd = " + " ".join(lxc_spec.init_argv()))
    return lines


def instance_config(
    spec: ContainerSpec, *, owner: str, session: str, ids: tuple[int, int] | None,
    env: Mapping[str, str],
) -> dict[str, str]:  # fmt: skip
    """The instance's config keys (pure); refuses what Incus cannot express."""
    if spec.properties:
        raise UnsupportedSpec("properties", NAME, "systemd unit properties: use systemd-run")
    refuse_unmapped(spec, NAME, CORE_FIELDS)
    if spec.network != "none":
        raise UnsupportedSpec(
            "network", NAME,
            f"{spec.network!r}: an Incus container has a network namespace of its own "
            "(raw.lxc may not set lxc.net.*); only 'none' is mapped",
        )  # fmt: skip
    cfg: dict[str, str] = {OWNER_KEY: owner, SESSION_KEY: session, **_idmap(spec)}
    if spec.privileged or spec.seccomp == "unconfined":
        cfg["security.syscalls.deny_default"] = "false"
        cfg["security.syscalls.deny_compat"] = "false"
    elif spec.seccomp != "default":
        raise UnsupportedSpec(
            "seccomp", NAME,
            f"{spec.seccomp}: Incus builds its own filter (security.syscalls.*); a profile "
            "file is not mapped",
        )  # fmt: skip
    if isinstance(spec.memory, int):
        cfg["limits.memory"] = str(spec.memory)
    elif spec.memory is not None:
        raise UnsupportedSpec("memory", NAME, f"{spec.memory!r}: bytes are mapped")
    if spec.pids_limit is not None:
        cfg["limits.processes"] = str(spec.pids_limit)
    if spec.cpus is not None:
        cfg["limits.cpu.allowance"] = _allowance(spec.cpus)
    for key, value in env.items():
        if not _ENV_NAME.match(key) or "\n" in value:
            raise UnsupportedSpec("env", NAME, f"{key!r}: environment.* takes NAME=one line")
        cfg[f"environment.{key}"] = value
    cfg["raw.lxc"] = "\n".join(raw_lxc(spec, ids)) + "\n"
    return cfg


def devices(
    spec: ContainerSpec, *, probe_dir: str, run_dir: str, is_dir: Mapping[str, bool]
) -> dict[str, dict[str, str]]:
    """The instance's devices (pure); ``is_dir``: each volume source's kind."""
    out: dict[str, dict[str, str]] = {
        "root": {"type": "disk", "path": "/", "pool": POOL},
        PROBE_DEVICE: {"type": "disk", "source": probe_dir, "path": PROBE_DIR,
                       "readonly": "true"},
        RUN_DEVICE: {"type": "disk", "source": run_dir, "path": agent.RUN_DIR,
                     "readonly": "true"},
    }  # fmt: skip
    for i, vol in enumerate(spec.volumes):
        v = vol if isinstance(vol, Volume) else Volume.parse(vol)
        if v.source not in is_dir:
            raise UnsupportedSpec("volumes", NAME, f"{v.source}: no such file or folder")
        dev = {"type": "disk", "source": v.source, "path": v.target}
        if v.read_only:
            dev["readonly"] = "true"
        out[f"containersec-vol{i}"] = dev
    return out


def create_request(
    name: str, alias: str, config: Mapping[str, str], devs: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """The body of ``POST /1.0/instances``: the whole instance in one request, with no
    profile (pure)."""
    return {
        "name": name, "type": "container", "profiles": [],
        "source": {"type": "image", "alias": alias},
        "config": dict(config), "devices": {k: dict(v) for k, v in devs.items()},
    }  # fmt: skip


def _raw_lines(raw: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in raw.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip().lower(), []).append(value.strip())
    return out


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes", "on")


def declared_from_instance(instance: Mapping[str, Any], spec: ContainerSpec) -> Declared:
    """Normalize ``incus query /1.0/instances/NAME`` (its ``expanded_config`` and
    ``expanded_devices``: what ``incus config show --expanded`` prints) into the keys the
    Facts compare with (pure)."""
    cfg: dict[str, str] = {k: str(v) for k, v in (instance.get("expanded_config") or {}).items()}
    devs: dict[str, dict[str, str]] = dict(instance.get("expanded_devices") or {})
    raw = _raw_lines(cfg.get("raw.lxc", ""))

    def last(key: str) -> str | None:
        return raw[key][-1] if raw.get(key) else None

    keep = last("lxc.cap.keep")
    if keep is not None:
        kept = sorted(caps.normalize(c) for c in keep.split() if c != "none")
    elif "lxc.cap.drop" in raw and not last("lxc.cap.drop"):
        kept = sorted(caps.ALL_CAPS)  # Incus's drops cleared, nothing kept explicitly
    else:
        kept = sorted(default_caps())
    no_filter = not _truthy(cfg.get("security.syscalls.deny_default", "true")) and not _truthy(
        cfg.get("security.syscalls.deny_compat", "true")
    )
    custom = any(k.startswith("security.syscalls.") and k not in (
        "security.syscalls.deny_default", "security.syscalls.deny_compat") for k in cfg
    ) or "raw.seccomp" in cfg  # fmt: skip
    seccomp: DeclaredSeccomp = "custom" if custom else "unconfined" if no_filter else "default"
    memory = cfg.get("limits.memory")
    pids = cfg.get("limits.processes")
    cpus: float | None = None
    if m := _ALLOWANCE.match(cfg.get("limits.cpu.allowance", "")):
        cpus = int(m.group(1)) / int(m.group(2))
    if _truthy(cfg.get("security.privileged", "false")):
        userns = "host"
    elif _truthy(cfg.get("security.idmap.isolated", "false")) and "security.idmap.base" in cfg:
        userns = f"0:{cfg['security.idmap.base']}:{cfg.get('security.idmap.size', '65536')}"
    else:
        userns = "auto"
    binds = []
    for name, dev in sorted(devs.items()):
        if dev.get("type") != "disk" or name in (PROBE_DEVICE, RUN_DEVICE) or "source" not in dev:
            continue
        binds.append(
            f"{dev['source']}:{dev.get('path', '')}"
            + (":ro" if _truthy(dev.get("readonly")) else "")
        )
    nics = [n for n, d in devs.items() if d.get("type") == "nic"]
    return {
        "engine": NAME,
        "config": [f"{k}={v}" for k, v in sorted(cfg.items()) if not k.startswith("volatile.")],
        "user": spec.user if last("lxc.init.uid") is not None else None,
        "cap_add": sorted(spec.cap_add),
        "cap_drop": sorted(spec.cap_drop),
        "capabilities": kept,
        "privileged": spec.privileged,
        "seccomp": seccomp,
        "apparmor_profile": last("lxc.apparmor.profile"),
        "no_new_privileges": last("lxc.no_new_privs") == "1",
        "read_only": "ro" in (last("lxc.rootfs.options") or "").split(","),
        "memory": int(memory) if memory and memory.isdigit() else None,
        "cpus": cpus,
        "pids_limit": int(pids) if pids and pids.isdigit() else None,
        "userns_mode": userns,
        "network_mode": "none" if not nics else ",".join(sorted(nics)),
        "binds": binds,
    }
