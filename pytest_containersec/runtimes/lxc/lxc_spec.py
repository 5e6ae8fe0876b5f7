"""LXC: the pure spec -> container config mapping and the declared view of a config.

The config starts from what LXC's own templates give an unprivileged container
(``lxc.include`` of ``common.conf`` and, with an idmap, ``userns.conf``: common.seccomp,
the default mounts, in a user namespace the full capability set), then each spec field:

- image: the image's rootfs (exported once, like nspawn's cache), a private copy per
  container mounted with ``lxc.rootfs.options = idmap=container`` (no chown of the tree).
- command: ``lxc.init.cmd`` runs a generated script that resolves the command on PATH and
  ``exec``s it, so the main process is the container's PID 1 (``host_pid``); the image's
  ENTRYPOINT stays in front of it, as on Docker; empty -> an idle busybox sleep.
- user (or the image's USER when the spec names none, as on Docker): docker's ``--user``
  rules against the image's /etc files -> ``lxc.init.uid`` /
  ``lxc.init.gid`` (execs: ``lxc-attach -u/-g``). LXC 5 sets no supplementary groups, so
  a user with groups in /etc/group is UnsupportedSpec rather than a different state.
- cap_add/cap_drop: Docker's arithmetic over LXC's default set, written as an explicit
  ``lxc.cap.keep`` list (``lxc.cap.drop`` cleared; ``keep = none`` for nothing).
- privileged: every capability, no seccomp profile, AppArmor ``unconfined``, /proc, /sys
  and the cgroup tree mounted read-write, no device rules; the user namespace stays.
- seccomp: ``default`` = LXC's ``common.seccomp``; ``unconfined`` = no profile; a path to
  an LXC-format profile (first line ``1`` or ``2``) is used as is; an OCI JSON profile is
  UnsupportedSpec (LXC has its own format).
- no_new_privileges, read_only: ``lxc.no_new_privs = 1``, ``lxc.rootfs.options ... ro``.
- memory/pids_limit/cpus: ``lxc.cgroup.memory.limit_in_bytes`` / ``pids.max`` /
  ``cpu.cfs_quota_us`` + ``cpu.cfs_period_us`` on cgroup v1, ``lxc.cgroup2.memory.max`` /
  ``pids.max`` / ``cpu.max`` on v2.
- userns: default and ``auto`` -> root's first /etc/subuid and /etc/subgid range (LXC
  maps through newuidmap, which insists on them); ``0:OUTSIDE:COUNT`` -> that range when
  root's subordinate ranges hold it; ``host`` -> no idmap (a privileged LXC container:
  container root is host root); ``keep-id`` -> UnsupportedSpec.
- network: ``none`` -> ``lxc.net.0.type = empty`` (a private namespace with loopback);
  ``host`` -> ``lxc.net.0.type = none`` (LXC's ``none`` means the host's namespace); in a
  user namespace the kernel then refuses a fresh sysfs, so /sys is the host's, bound
  read-only (as runc does).
- volumes: ``lxc.mount.entry = SRC DST none bind[,ro],create=dir|file 0 0``.
- env: ``lxc.environment`` (and ``lxc-attach -v`` for execs); properties: UnsupportedSpec.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from ...errors import UnsupportedSpec
from ...linux import caps
from ...model import Declared, DeclaredSeccomp
from ...spec import CORE_FIELDS, ContainerSpec, Volume, refuse_unmapped
from ..base import PROBE_BUSYBOX, PROBE_DIR
from ..nspawn import nspawn_agent as agent
from ..oci.oci import IDLE_COMMAND

NAME = "lxc"
LXC_CONFIG = Path("/usr/share/lxc/config")
SECCOMP_DEFAULT = str(LXC_CONFIG / "common.seccomp")
# common.conf's drops, which userns.conf clears again ("a full set of capabilities in
# user namespaces")
COMMON_DROPS = frozenset({"CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_SYS_TIME",
                          "CAP_SYS_MODULE", "CAP_SYS_RAWIO"})  # fmt: skip
INIT_SCRIPT = f"{agent.RUN_DIR}/init"
CPU_PERIOD = 100000
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IdMap = tuple[int, int, int]


def default_caps(idmapped: bool) -> frozenset[str]:
    """LXC's default set: everything in a user namespace, common.conf's drops without."""
    return caps.ALL_CAPS if idmapped else caps.ALL_CAPS - COMMON_DROPS


def capability_set(spec: ContainerSpec, idmapped: bool) -> frozenset[str]:
    """Docker's TweakCapabilities arithmetic over LXC's default set."""
    return caps.tweak(default_caps(idmapped), spec.cap_add, spec.cap_drop, spec.privileged)


def parse_subids(text: str, user: str = "root") -> list[tuple[int, int]]:
    """Every ``(start, count)`` of ``user`` in an /etc/subuid or /etc/subgid text."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == user and parts[1].isdigit() and parts[2].isdigit():
            out.append((int(parts[1]), int(parts[2])))
    return out


def idmap_for(
    spec: ContainerSpec, subuids: list[tuple[int, int]], subgids: list[tuple[int, int]]
) -> IdMap | None:
    """The container's ``(0, OUTSIDE, COUNT)`` map, or None for ``userns="host"`` (pure).

    LXC writes the maps with newuidmap/newgidmap, which refuse a range that root's
    /etc/subuid and /etc/subgid do not hold: such a request is UnsupportedSpec with the fix.
    """
    if spec.userns == "host":
        return None
    if spec.userns == "keep-id":
        raise UnsupportedSpec("userns", NAME, "'keep-id' is Podman's; LXC maps ranges only")
    if spec.userns in (None, "auto"):
        common = [r for r in subuids if r in subgids]
        if not common:
            raise UnsupportedSpec(
                "userns", NAME,
                "root has no range in both /etc/subuid and /etc/subgid (newuidmap needs one); "
                "run the project setup (make setup) or add e.g. root:231072:65536 to both",
            )  # fmt: skip
        return (0, common[0][0], common[0][1])
    maps = spec.uid_maps
    if len(maps) != 1 or maps[0][0] != 0:
        raise UnsupportedSpec(
            "userns", NAME, f"{spec.userns!r}: one range starting at container uid 0 is mapped"
        )
    _, outside, count = maps[0]
    for ranges, path in ((subuids, "/etc/subuid"), (subgids, "/etc/subgid")):
        if not any(start <= outside and outside + count <= start + n for start, n in ranges):
            raise UnsupportedSpec(
                "userns", NAME,
                f"{spec.userns!r}: {outside}..{outside + count - 1} is not within root's "
                f"ranges in {path} (newuidmap refuses it); add root:{outside}:{count} to "
                "/etc/subuid and /etc/subgid to allow it",
            )  # fmt: skip
    return maps[0]


def seccomp_profile(spec: ContainerSpec) -> str:
    """The ``lxc.seccomp.profile`` value ('' for none)."""
    if spec.privileged or spec.seccomp == "unconfined":
        return ""
    if spec.seccomp == "default":
        return SECCOMP_DEFAULT
    try:
        with open(spec.seccomp, "rb") as f:
            first = f.readline(64).strip()
    except OSError as exc:
        raise UnsupportedSpec("seccomp", NAME, f"cannot read profile: {exc}") from None
    if first not in (b"1", b"2"):
        raise UnsupportedSpec(
            "seccomp", NAME,
            f"{spec.seccomp}: not an LXC seccomp policy (version 1 or 2 on its first line); "
            "LXC does not read OCI JSON profiles",
        )  # fmt: skip
    return spec.seccomp


def _mount_path(field: str, path: str) -> str:
    if any(c.isspace() for c in path) or "\\" in path:
        raise UnsupportedSpec(field, NAME, f"{path!r}: lxc.mount.entry is fstab-format")
    return path


def limit_lines(spec: ContainerSpec, cgroup_version: int) -> list[str]:
    """The cgroup limit settings for this host's hierarchy (pure)."""
    out: list[str] = []
    memory = spec.memory if isinstance(spec.memory, int) else None
    if cgroup_version == 2:
        if memory is not None:
            out.append(f"lxc.cgroup2.memory.max = {memory}")
        if spec.pids_limit is not None:
            out.append(f"lxc.cgroup2.pids.max = {spec.pids_limit}")
        if spec.cpus is not None:
            out.append(f"lxc.cgroup2.cpu.max = {round(spec.cpus * CPU_PERIOD)} {CPU_PERIOD}")
        return out
    if memory is not None:
        out.append(f"lxc.cgroup.memory.limit_in_bytes = {memory}")
    if spec.pids_limit is not None:
        out.append(f"lxc.cgroup.pids.max = {spec.pids_limit}")
    if spec.cpus is not None:
        out.append(f"lxc.cgroup.cpu.cfs_period_us = {CPU_PERIOD}")
        out.append(f"lxc.cgroup.cpu.cfs_quota_us = {round(spec.cpus * CPU_PERIOD)}")
    return out


def config_lines(
    spec: ContainerSpec,
    *,
    name: str,
    rootfs: Path,
    probe_dir: Path,
    run_dir: Path,
    log: Path,
    idmap: IdMap | None,
    cgroup_version: int,
    ids: tuple[int, int] | None,
    env: dict[str, str],
    apparmor: bool,
) -> list[str]:
    """The container's whole config file (pure). ``ids``: the resolved (uid, gid)."""
    if spec.properties:
        raise UnsupportedSpec("properties", NAME, "systemd unit properties: use systemd-run")
    refuse_unmapped(spec, NAME, CORE_FIELDS)  # not the newer fields yet
    lines = [f"lxc.include = {LXC_CONFIG / 'common.conf'}"]
    if idmap is not None:
        _, outside, count = idmap
        lines.append(f"lxc.include = {LXC_CONFIG / 'userns.conf'}")
        lines += [f"lxc.idmap = {kind} 0 {outside} {count}" for kind in ("u", "g")]
    options = ["idmap=container"] if idmap is not None else []
    if spec.read_only:
        options.append("ro")
    lines += [f"lxc.rootfs.path = dir:{_mount_path('image', str(rootfs))}"]
    if options:
        lines.append(f"lxc.rootfs.options = {','.join(options)}")
    lines += [f"lxc.uts.name = {name}", f"lxc.console.logfile = {_mount_path('image', str(log))}"]
    lines.append(f"lxc.net.0.type = {'empty' if spec.network == 'none' else 'none'}")
    keep = capability_set(spec, idmap is not None)
    lines.append("lxc.cap.drop =")
    if keep != caps.ALL_CAPS:
        names = " ".join(sorted(c.removeprefix("CAP_").lower() for c in keep)) or "none"
        lines.append(f"lxc.cap.keep = {names}")
    lines.append(f"lxc.seccomp.profile = {seccomp_profile(spec)}")
    if idmap is not None and spec.network == "host":
        # The kernel refuses a new sysfs in a user namespace that does not own the network
        # namespace: bind the host's /sys read-only instead (what runc does then).
        proc_sys = "proc:rw" if spec.privileged else "proc:mixed"
        lines += ["lxc.mount.auto =", f"lxc.mount.auto = {proc_sys} cgroup:mixed",
                  "lxc.mount.entry = /sys sys none rbind,ro,create=dir 0 0"]  # fmt: skip
    elif spec.privileged:
        lines += ["lxc.mount.auto =", "lxc.mount.auto = proc:rw sys:rw cgroup:rw"]
        for tree in ("cgroup", "cgroup2"):
            lines += [f"lxc.{tree}.devices.deny =", f"lxc.{tree}.devices.allow ="]
    if spec.privileged and apparmor:
        lines.append("lxc.apparmor.profile = unconfined")
    if spec.no_new_privileges:
        lines.append("lxc.no_new_privs = 1")
    lines += limit_lines(spec, cgroup_version)
    if ids is not None:
        lines += [f"lxc.init.uid = {ids[0]}", f"lxc.init.gid = {ids[1]}"]
    for key, value in env.items():
        if not _ENV_NAME.match(key) or "\n" in value:
            raise UnsupportedSpec("env", NAME, f"{key!r}: lxc.environment takes NAME=one line")
        lines.append(f"lxc.environment = {key}={value}")
    lines.append(f"lxc.mount.entry = {probe_dir} {PROBE_DIR[1:]} none bind,ro,create=dir 0 0")
    lines.append(f"lxc.mount.entry = {run_dir} {agent.RUN_DIR[1:]} none bind,ro,create=dir 0 0")
    for vol in spec.volumes:
        v = vol if isinstance(vol, Volume) else Volume.parse(vol)
        kind = "dir" if os.path.isdir(v.source) else "file"
        src, dst = _mount_path("volumes", v.source), _mount_path("volumes", v.target)
        opts = f"bind{',ro' if v.read_only else ''},create={kind}"
        lines.append(f"lxc.mount.entry = {src} {dst.lstrip('/')} none {opts} 0 0")
    lines.append("lxc.init.cmd = " + " ".join(init_argv()))
    return lines


def init_argv() -> list[str]:
    """``lxc.init.cmd``: the generated script under the probe's busybox shell."""
    return [PROBE_BUSYBOX, "sh", INIT_SCRIPT]


def init_script(spec: ContainerSpec) -> str:
    """What ``lxc.init.cmd`` runs: resolve the command on PATH, then become it."""
    main = list(spec.command) if spec.command else [PROBE_BUSYBOX, *IDLE_COMMAND]
    words = " ".join(shlex.quote(a) for a in main)
    return (
        "set -f\n" + agent.SH_RESOLVE + f"set -- {words}\n"
        'resolve "$1" || { notfound "$1" >&2; exit 127; }\n'
        'shift; exec "$r" "$@"\n'
    )


def declared_from_config(lines: list[str], spec: ContainerSpec) -> Declared:
    """Normalize a container config into the keys the Facts compare with (pure)."""
    cfg: dict[str, list[str]] = {}
    for line in lines:
        key, _, value = line.partition("=")
        cfg.setdefault(key.strip(), []).append(value.strip())

    def last(key: str) -> str | None:
        return cfg[key][-1] if cfg.get(key) else None

    keep = last("lxc.cap.keep")
    idmaps = [v.split() for v in cfg.get("lxc.idmap", [])]
    uidmap = next((m for m in idmaps if m[0] == "u"), None)
    if keep is None:
        kept = sorted(caps.ALL_CAPS)
    else:
        kept = sorted(caps.normalize(c) for c in keep.split() if c != "none")
    memory = last("lxc.cgroup.memory.limit_in_bytes") or last("lxc.cgroup2.memory.max")
    pids = last("lxc.cgroup.pids.max") or last("lxc.cgroup2.pids.max")
    cpus: float | None = None
    if (quota := last("lxc.cgroup.cpu.cfs_quota_us")) is not None:
        cpus = int(quota) / int(last("lxc.cgroup.cpu.cfs_period_us") or CPU_PERIOD)
    elif (cpu_max := last("lxc.cgroup2.cpu.max")) is not None:
        q, _, p = cpu_max.partition(" ")
        cpus = int(q) / int(p or CPU_PERIOD)
    profile = last("lxc.seccomp.profile")
    seccomp: DeclaredSeccomp = (
        "unconfined" if not profile else "default" if profile == SECCOMP_DEFAULT else "custom"
    )
    binds = []
    for entry in cfg.get("lxc.mount.entry", []):
        src, dst, _, opts, *_ = entry.split()
        if dst in (PROBE_DIR[1:], agent.RUN_DIR[1:]) or "bind" not in opts.split(","):
            continue
        binds.append(f"{src}:/{dst}" + (":ro" if "ro" in opts.split(",") else ""))
    init_uid = last("lxc.init.uid")
    return {
        "engine": NAME,
        "config": list(lines),
        "user": spec.user if init_uid is not None else None,
        "cap_add": sorted(spec.cap_add),
        "cap_drop": sorted(spec.cap_drop),
        "capabilities": kept,
        "privileged": spec.privileged,
        "seccomp": seccomp,
        "seccomp_profile": profile or None,
        "apparmor_profile": last("lxc.apparmor.profile"),
        "no_new_privileges": last("lxc.no_new_privs") == "1",
        "read_only": "ro" in (last("lxc.rootfs.options") or "").split(","),
        "memory": int(memory) if memory else None,
        "cpus": cpus,
        "pids_limit": int(pids) if pids else None,
        "userns_mode": f"0:{uidmap[2]}:{uidmap[3]}" if uidmap else "host",
        "network_mode": "none" if last("lxc.net.0.type") == "empty" else "host",
        "binds": binds,
    }


_ENDED = re.compile(r"Child <\d+> ended on error \((\d+)\)")


def log_outcome(log: str) -> tuple[int | None, list[str]]:
    """From an lxc-start log: the init's exit status (LXC logs non-zero ones at INFO) and
    the ERROR lines without their location prefix (pure)."""
    status = None
    errors = []
    for line in log.splitlines():
        if m := _ENDED.search(line):
            status = int(m.group(1))
        elif " ERROR " in line:
            errors.append(line.split(" - ", 2)[-1].strip())
    return status, errors
