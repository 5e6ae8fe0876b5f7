"""systemd-nspawn: the pure spec -> argv mapping and the declared view of an argv.

How each ContainerSpec field reaches nspawn (nothing is dropped silently):

- image: rootfs cache exported once from Docker or Podman (``nspawn_image``), a private
  ``cp -a`` per container; ``--private-users=pick --private-users-ownership=map``.
- command: the main process (``host_pid``), exec'd by the agent script under
  ``--as-pid2`` (nspawn's stub init is PID 1 and reaps); empty -> an idle busybox sleep.
- user: nspawn's ``--user`` needs getent in the image, so the payload drops privileges
  itself (``setpriv --inh-caps=-all`` + ``nsenter -S UID -G GID``), resolved with
  ``docker run --user`` rules from the image's /etc/passwd and /etc/group: CapPrm/CapEff
  become empty, CapInh too, the bounding set stays. Supplementary groups from /etc/group
  cannot be set by busybox: UnsupportedSpec rather than a different process state.
- cap_add/cap_drop: Docker's arithmetic (``add ALL`` = all minus drops, ``drop ALL`` =
  only adds) over nspawn's default set, emitted as explicit ``--capability=`` and
  ``--drop-capability=`` lists (nspawn 252's own ``all`` loses CAP_NET_BIND_SERVICE in a
  user namespace, measured).
- privileged: mapped to what is security-relevant in ``docker --privileged``: every
  capability plus seccomp off (``SYSTEMD_SECCOMP=0``). nspawn still hides host devices
  and keeps /proc/sys and /sys read-only, and the user namespace stays as requested; the
  observed Facts show that, so the gap to Docker is a finding, not an error.
- seccomp: ``default`` = nspawn's filter; ``unconfined`` = ``SYSTEMD_SECCOMP=0`` in
  nspawn's environment (Seccomp: 0 measured); a profile path -> UnsupportedSpec (nspawn
  has only ``--system-call-filter=`` lists, not OCI profiles).
- no_new_privileges, read_only, network none, volumes, env: ``--no-new-privileges=yes``,
  ``--read-only``, ``--private-network``, ``--bind``/``--bind-ro``, ``--setenv``.
- memory/pids_limit/cpus: systemd PID 1 -> ``--register=yes --property=...`` (machined
  makes a scope); otherwise a cgroup made by hand that nspawn joins before exec.
- devices: ``--bind=HOST:CONTAINER`` (rwm only: no device cgroup rule is made); ulimits:
  ``--rlimit=RLIMIT_NAME=SOFT:HARD``; tmpfs: ``--tmpfs=PATH:OPTIONS`` with Docker's
  default noexec,nosuid,nodev unless loosened; entrypoint: the main process is
  entrypoint + command. UnsupportedSpec: group_add (busybox cannot set supplementary
  groups), pid/ipc/uts host (nspawn always unshares them), sysctls, unmask, a gidmap
  other than the uid map, an AppArmor profile, SELinux labels other than ``disable``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ...errors import UnsupportedSpec
from ...linux import caps
from ...model import Declared
from ...spec import ContainerSpec, Volume, parse_size, refuse_portable_profile
from ..base import PROBE_BUSYBOX, PROBE_DIR
from ..oci.oci import IDLE_COMMAND
from ..oci.oci_fields import tmpfs_flags
from . import nspawn_agent as agent
from . import nspawn_cgroup as cg

NAME = "nspawn"
NSPAWN = "systemd-nspawn"
NSPAWN_DEFAULT_CAPS = frozenset(caps.decode_mask("fdecabff"))  # nspawn 252, measured
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _memory(spec: ContainerSpec) -> int | None:
    return None if spec.memory is None else parse_size(spec.memory)


def _volumes(spec: ContainerSpec) -> list[Volume]:
    return [Volume.parse(v) if isinstance(v, str) else v for v in spec.volumes]


def _env(spec: ContainerSpec) -> list[tuple[str, str]]:
    env = spec.env
    return list(env.items()) if isinstance(env, Mapping) else [(k, v) for k, v in env]


def capability_set(spec: ContainerSpec) -> frozenset[str]:
    """The capabilities the container keeps: Docker's TweakCapabilities over nspawn's set."""
    return caps.tweak(NSPAWN_DEFAULT_CAPS, spec.cap_add, spec.cap_drop, spec.privileged)


def spec_args(spec: ContainerSpec, systemd: bool) -> tuple[list[str], dict[str, str]]:
    """nspawn options and environment for every spec field but image/command/user (pure)."""
    args: list[str] = []
    if spec.properties:
        raise UnsupportedSpec("properties", NAME, "systemd unit properties: use systemd-run")
    refuse_portable_profile(spec, NAME)
    env: dict[str, str] = {}
    keep = capability_set(spec)
    if spec.user is not None:  # the payload's user switch needs them; it drops them after
        keep |= agent.HELPER_CAPS
    # Both lists in full: nspawn's own default grows with options (--private-network adds
    # CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, measured), explicit drops always win.
    if keep:
        args.append("--capability=" + ",".join(sorted(keep)))
    if caps.ALL_CAPS - keep:
        args.append("--drop-capability=" + ",".join(sorted(caps.ALL_CAPS - keep)))
    if spec.seccomp.startswith("/"):
        raise UnsupportedSpec(
            "seccomp", NAME, "nspawn takes --system-call-filter= lists, not OCI seccomp profiles"
        )
    if spec.seccomp == "unconfined" or spec.privileged:
        env["SYSTEMD_SECCOMP"] = "0"
    if spec.no_new_privileges:
        args.append("--no-new-privileges=yes")
    if spec.read_only:
        args.append("--read-only")
    if systemd:
        args += cg.systemd_properties(_memory(spec), spec.pids_limit, spec.cpus)
    args += userns_args(spec)
    if spec.network == "none":
        args.append("--private-network")
    for v in _volumes(spec):
        if "\\" in v.source or "\\" in v.target:
            raise UnsupportedSpec("volumes", NAME, f"{v}: nspawn treats '\\' as an escape")
        args.append(f"--bind{'-ro' if v.read_only else ''}={v.source}:{v.target}")
    for key, value in _env(spec):
        if not _ENV_NAME.match(key):
            raise UnsupportedSpec("env", NAME, f"{key!r} is not a name nspawn --setenv accepts")
        args.append(f"--setenv={key}={value}")
    return args + more_args(spec), env


def more_args(spec: ContainerSpec) -> list[str]:
    """The newer fields: devices, ulimits, tmpfs; UnsupportedSpec for what nspawn lacks."""
    if spec.group_add:
        raise UnsupportedSpec(
            "group_add", NAME, "the payload's user switch (busybox) cannot set supplementary groups"
        )
    for ns in spec.namespaces_host:
        raise UnsupportedSpec(ns, NAME, f"nspawn always gives the container its own {ns} namespace")
    if spec.sysctls:
        raise UnsupportedSpec("sysctls", NAME, "nspawn has no per-container sysctl option")
    if spec.unmask:
        raise UnsupportedSpec("unmask", NAME, "nspawn cannot lift its read-only /proc/sys")
    if spec.gidmap is not None and spec.gid_maps != spec.uid_maps:
        raise UnsupportedSpec("gidmap", NAME, "nspawn maps uids and gids with one range")
    if spec.apparmor not in (None, "unconfined"):
        raise UnsupportedSpec("apparmor", NAME, "nspawn applies no AppArmor profile")
    if any(x not in ("disable",) for x in spec.label):
        raise UnsupportedSpec("label", NAME, "nspawn takes a full --selinux-context only")
    args: list[str] = []
    for d in spec.device_list:
        if d.permissions != "rwm":
            raise UnsupportedSpec(
                "devices", NAME, f"{d}: a bind mount exposes the node; no device cgroup rule"
            )
        args.append(f"--bind={d.host}:{d.container}")
    for u in spec.ulimit_list:
        soft, hard = (("infinity" if v < 0 else str(v)) for v in (u.soft, u.hard))
        args.append(f"--rlimit=RLIMIT_{u.name.upper()}={soft}:{hard}")
    for t in spec.tmpfs_list:
        opts = [o for o in t.options if "=" in o] + tmpfs_flags(t.flags)
        args.append(f"--tmpfs={t.target}:{','.join(opts)}")
    return args


def userns_args(spec: ContainerSpec) -> list[str]:
    """nspawn's ``--private-users`` for ``userns``: ``auto`` or None pick a free range (files
    mapped, not chowned), ``host`` shares the host's, one ``0:OUTSIDE:COUNT`` range is used as
    given; anything else is UnsupportedSpec."""
    if spec.userns in (None, "auto"):
        return ["--private-users=pick", "--private-users-ownership=map"]
    if spec.userns == "host":
        return ["--private-users=no"]
    maps = spec.uid_maps
    if len(maps) == 1 and maps[0][0] == 0:
        return [f"--private-users={maps[0][1]}:{maps[0][2]}", "--private-users-ownership=map"]
    raise UnsupportedSpec(
        "userns",
        NAME,
        f"{spec.userns!r}: nspawn maps one range starting at container uid 0 (0:OUTSIDE:COUNT)",
    )


def nspawn_argv(
    spec: ContainerSpec,
    options: list[str],
    *,
    name: str,
    rootfs: Path,
    run: Path,
    probe_dir: str,
    tools: Path | None,
    systemd: bool,
    extra_env: dict[str, str],
) -> list[str]:
    """The full command line (pure): fixed options, spec options, probe mounts, payload."""
    argv = [NSPAWN, "--quiet", "--console=pipe", "--as-pid2", f"--machine={name}"]
    argv += register_args(systemd)
    argv += [f"--directory={rootfs}"]
    argv += [f"--setenv={k}={v}" for k, v in extra_env.items() if _ENV_NAME.match(k)]
    argv += options  # after the image's env: a later --setenv wins
    idmap = ":idmap" if spec.userns != "host" else ""
    argv += [f"--bind-ro={probe_dir}:{PROBE_DIR}", f"--bind={run}:{agent.RUN_DIR}{idmap}"]
    if tools is not None:
        argv.append(f"--bind-ro={tools}:{agent.TOOLS_DIR}")
    main = list(spec.command) if spec.command else [PROBE_BUSYBOX, *IDLE_COMMAND]
    if spec.entrypoint is not None:  # the image's own entrypoint is not run by nspawn
        main = [*spec.entrypoint, *spec.command]
    return argv + agent.payload_argv(main)


def register_args(systemd: bool) -> list[str]:
    """Where systemd is PID 1, a scope of the container's own through machined (nspawn's
    default); else no machined: the caller's cgroup, in which the adapter made one."""
    return ["--register=yes"] if systemd else ["--register=no", "--keep-unit"]


def declared_from_argv(argv: list[str], env: dict[str, str], spec: ContainerSpec) -> Declared:
    """Normalize the nspawn argv into docker.declared_from_inspect's keys (pure)."""
    opts = argv[: argv.index(PROBE_BUSYBOX)] if PROBE_BUSYBOX in argv else argv

    def values(prefix: str) -> list[str]:
        return [a[len(prefix) :] for a in opts if a.startswith(prefix)]

    def csv(prefix: str) -> list[str]:
        return sorted(c for v in values(prefix) for c in v.split(",") if c)

    props = dict(p.split("=", 1) for p in values("--property="))
    users = values("--private-users=")
    userns = {"pick": "auto", "no": "host"}.get(users[-1], f"0:{users[-1]}") if users else "host"
    binds = [f"{v}" for v in values("--bind=") if not v.split(":")[1].startswith(agent.RUN_DIR)]
    binds += [f"{v}:ro" for v in values("--bind-ro=") if not v.split(":")[1].startswith(PROBE_DIR)]
    cpus = spec.cpus
    if "CPUQuota" in props:
        cpus = int(props["CPUQuota"].rstrip("%")) / 100
    return {
        "engine": NAME,
        "argv": list(argv),
        "user": spec.user,
        "cap_add": csv("--capability="),
        "cap_drop": csv("--drop-capability="),
        "capabilities": sorted(capability_set(spec)),
        "privileged": spec.privileged,
        "seccomp": "unconfined" if env.get("SYSTEMD_SECCOMP") == "0" else "default",
        "no_new_privileges": "--no-new-privileges=yes" in opts,
        "read_only": "--read-only" in opts,
        "memory": int(props["MemoryMax"]) if "MemoryMax" in props else _memory(spec),
        "cpus": cpus,
        "pids_limit": int(props["TasksMax"]) if "TasksMax" in props else spec.pids_limit,
        "userns_mode": userns,
        "network_mode": "none" if "--private-network" in opts else "host",
        "binds": binds,
    }
