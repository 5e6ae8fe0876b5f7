"""containerd through ``ctr``: the pure spec -> ``ctr run`` argv mapping, the declared view.

ctr's defaults are containerd's own (``oci.WithDefaultSpec``, what every client starts
from): Docker's 14 capabilities, runc's masked and read-only paths, **no_new_privs on**
and **no seccomp filter** unless asked. Each spec field:

- image: imported into containerd's store from the local Docker (or Podman) store with
  ``docker save | ctr images import`` (never pulled); ``image`` is its ``docker.io/`` name.
- command: the task's argv, behind the image's ENTRYPOINT as on Docker (the adapter puts
  it there: ctr's own ``run IMAGE ID ARGS`` replaces it); empty -> an idle busybox sleep.
- user: none -> the image's USER, which ctr applies itself (``oci.WithImageConfig``).
  ctr 1.6's ``run`` has no ``--user``: for a given user the payload drops to it with
  util-linux ``setpriv`` (bind-mounted with its loader, as for nspawn), resolved with
  docker's rules from the image's /etc files; execs go through the same prefix, so they
  match the main process (``ctr task exec --user`` would keep the capabilities).
- cap_add/cap_drop: Docker's arithmetic over containerd's default set, written as explicit
  ``--cap-drop``/``--cap-add`` lists; privileged: ``--privileged``.
- seccomp: ``default`` -> ``--seccomp`` (containerd's default profile, the same as
  Docker's); ``unconfined`` -> none (ctr's own default); a path -> ``--seccomp-profile``.
- no_new_privileges: always on (containerd's default); read_only: ``--read-only``.
- memory/cpus: ``--memory-limit``/``--cpus``; pids_limit: ctr has no flag, so the
  adapter creates the task's cgroup (``--cgroup``) with ``pids.max`` already written
  (runc keeps a limit its spec does not set) and declares it.
- userns: ``0:OUTSIDE:COUNT`` -> ``--uidmap``/``--gidmap`` (the image's files stay owned
  by host root); ``host`` or none -> no user namespace; ``auto``/``keep-id`` unsupported.
- network: ``none`` -> containerd's default (a private namespace, no CNI: loopback only);
  ``host`` -> ``--net-host``. volumes: ``--mount type=bind,...,options=rbind:ro|rw``.
- env: ``--env``; properties: UnsupportedSpec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import UnsupportedSpec
from ...linux import caps
from ...model import Declared
from ...spec import CORE_FIELDS, ContainerSpec, Volume, refuse_unmapped
from ..base import PROBE_BUSYBOX, PROBE_DIR
from ..nspawn import nspawn_agent as agent
from ..oci.oci import IDLE_COMMAND

NAME = "containerd"
NAMESPACE = "containersec"
CGROUP_PARENT = "containersec.containerd"
CONTAINERD_DEFAULT_CAPS = caps.DOCKER_DEFAULT_CAPS  # containerd/oci/spec.go defaultUnixCaps


def image_ref(image: str) -> str:
    """Docker's short name as containerd stores it (``docker.io/library/x:latest``)."""
    name, tag = image, "latest"
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    if "@" in image:
        name, tag = image, ""
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return f"{name}:{tag}" if tag else name


def capability_set(spec: ContainerSpec) -> frozenset[str]:
    """The capabilities the task keeps: Docker's TweakCapabilities over containerd's default set
    (Docker's 14)."""
    return caps.tweak(CONTAINERD_DEFAULT_CAPS, spec.cap_add, spec.cap_drop, spec.privileged)


def run_argv(
    spec: ContainerSpec,
    *,
    name: str,
    log: Path,
    pid_file: Path,
    probe_dir: Path,
    tools: Path | None,
    prefix: list[str],
    labels: dict[str, str],
    runc_binary: str | None = None,
) -> list[str]:
    """``ctr run`` options and payload, after ``ctr --address A -n NS`` (pure)."""
    if spec.properties:
        raise UnsupportedSpec("properties", NAME, "systemd unit properties: use systemd-run")
    refuse_unmapped(spec, NAME, CORE_FIELDS)  # not the newer fields yet
    argv = ["run", "-d", f"--log-uri=file://{log}", f"--pid-file={pid_file}",
            f"--cgroup=/{CGROUP_PARENT}/{name}"]  # fmt: skip
    argv += [f"--label={k}={v}" for k, v in sorted(labels.items())]
    if runc_binary == "runsc":  # gVisor has a shim of its own (oci_variants.GVISOR_SHIM)
        argv.append("--runtime=io.containerd.runsc.v1")
    elif runc_binary:
        argv.append(f"--runc-binary={runc_binary}")
    if spec.privileged:
        argv.append("--privileged")
    else:
        keep = capability_set(spec)
        if spec.user is not None:
            keep |= agent.HELPER_CAPS  # setpriv needs them; it drops them after the switch
        argv += [f"--cap-drop={c}" for c in sorted(CONTAINERD_DEFAULT_CAPS - keep)]
        argv += [f"--cap-add={c}" for c in sorted(keep - CONTAINERD_DEFAULT_CAPS)]
    if spec.seccomp == "default" and not spec.privileged:
        argv.append("--seccomp")
    elif spec.seccomp not in ("default", "unconfined"):
        if not Path(spec.seccomp).is_file():
            raise UnsupportedSpec("seccomp", NAME, f"cannot read profile {spec.seccomp}")
        argv += ["--seccomp", f"--seccomp-profile={spec.seccomp}"]
    if spec.read_only:
        argv.append("--read-only")
    if isinstance(spec.memory, int):
        argv.append(f"--memory-limit={spec.memory}")
    if spec.cpus is not None:
        argv.append(f"--cpus={spec.cpus:g}")
    userns = userns_args(spec)
    argv += userns
    if spec.network == "host":
        argv.append("--net-host")
    mounts = [(str(probe_dir), PROBE_DIR, True)]
    if tools is not None:
        mounts.append((str(tools), agent.TOOLS_DIR, True))
    for vol in spec.volumes:
        v = vol if isinstance(vol, Volume) else Volume.parse(vol)
        mounts.append((v.source, v.target, v.read_only))
    for src, dst, ro in mounts:
        if "," in src or "," in dst or "=" in src or "=" in dst:
            raise UnsupportedSpec("volumes", NAME, f"{src}:{dst}: ctr --mount splits on , and =")
        locked = locked_flags(src) if userns else []
        opts = ["rbind", "ro" if ro or "ro" in locked else "rw", *(f for f in locked if f != "ro")]
        argv.append(f"--mount=type=bind,src={src},dst={dst},options={':'.join(opts)}")
    argv += [f"--env={k}={v}" for k, v in dict(spec.env).items()]
    main = list(spec.command) if spec.command else [PROBE_BUSYBOX, *IDLE_COMMAND]
    return [*argv, image_ref(spec.image), name, *prefix, *main]


# statvfs flag -> mount option: the flags a user namespace may not clear on a bind mount
LOCKED_FLAGS = ((os.ST_RDONLY, "ro"), (os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev"),
                (os.ST_NOEXEC, "noexec"),
                (os.ST_NOATIME, "noatime"), (os.ST_NODIRATIME, "nodiratime"),
                (os.ST_RELATIME, "relatime"))  # fmt: skip


def locked_flags(source: str) -> list[str]:
    """The source mount's flags that runc's remount inside a user namespace must keep
    (the kernel locks them: EPERM otherwise), as Docker and Podman add them; ``ctr`` does
    not, so a read-only volume from a nosuid,nodev /tmp would not start."""
    try:
        flags = os.statvfs(source).f_flag
    except OSError:
        return []  # ctr names the missing source itself
    return [name for bit, name in LOCKED_FLAGS if flags & bit]


def userns_args(spec: ContainerSpec) -> list[str]:
    """``--uidmap``/``--gidmap`` (the same ranges for both) for explicit ``0:OUTSIDE:COUNT`` maps;
    [] for ``host`` or none; UnsupportedSpec for ``auto`` and ``keep-id``."""
    if spec.userns in (None, "host"):
        return []
    maps = spec.uid_maps
    if not maps:
        raise UnsupportedSpec(
            "userns", NAME, f"{spec.userns!r}: ctr maps explicit ranges only (0:OUTSIDE:COUNT)"
        )
    return [a for m in maps for a in (f"--uidmap={m[0]}:{m[1]}:{m[2]}",
                                      f"--gidmap={m[0]}:{m[1]}:{m[2]}")]  # fmt: skip


def declared_from_info(
    info: dict[str, Any], spec: ContainerSpec, pids_limit: int | None
) -> Declared:
    """Normalize ``ctr containers info`` (the OCI spec containerd stored) (pure)."""
    oci = info.get("Spec") or {}
    proc, linux = oci.get("process") or {}, oci.get("linux") or {}
    res = linux.get("resources") or {}
    cpu = res.get("cpu") or {}
    quota, period = cpu.get("quota") or 0, cpu.get("period") or 0
    bounding = set((proc.get("capabilities") or {}).get("bounding") or [])
    uidmaps = linux.get("uidMappings") or []
    nets = [n for n in linux.get("namespaces") or [] if n.get("type") == "network"]
    binds = []
    for m in oci.get("mounts") or []:
        if m.get("type") != "bind" or m.get("destination") in (PROBE_DIR, agent.TOOLS_DIR):
            continue
        if not str(m.get("source", "")).startswith("/") or "rbind" not in m.get("options", []):
            continue
        ro = "ro" in (m.get("options") or [])
        binds.append(f"{m['source']}:{m['destination']}" + (":ro" if ro else ""))
    return {
        "engine": NAME,
        "user": spec.user,
        "cap_add": sorted(bounding - CONTAINERD_DEFAULT_CAPS),
        "cap_drop": sorted(CONTAINERD_DEFAULT_CAPS - bounding),
        "capabilities": sorted(bounding - (agent.HELPER_CAPS if spec.user else set())),
        "privileged": spec.privileged,
        "seccomp": "default" if linux.get("seccomp") else "unconfined",
        "no_new_privileges": bool(proc.get("noNewPrivileges")),
        "read_only": bool((oci.get("root") or {}).get("readonly")),
        "memory": (res.get("memory") or {}).get("limit") or None,
        "cpus": quota / period if quota > 0 and period > 0 else None,
        "pids_limit": pids_limit,
        "userns_mode": ",".join(f"{m['containerID']}:{m['hostID']}:{m['size']}" for m in uidmaps)
        or "host",
        "network_mode": "none" if nets else "host",
        "binds": binds,
        "runtime": (info.get("Runtime") or {}).get("Name"),
        "masked_paths": list(linux.get("maskedPaths") or []),
        "cgroups_path": linux.get("cgroupsPath"),
    }
