"""The portable runtime's pure parts: the unit file the image carries, and a ContainerSpec
mapped to a drop-in of the attached unit.

``portablectl attach --profile=P`` gives the unit the profile's drop-in
(``10-profile.conf``: DynamicUser=, PrivateUsers=, CapabilityBoundingSet=,
SystemCallFilter=, ProtectSystem=strict, ... for ``default``, ``nonetwork`` and ``strict``;
almost nothing for ``trusted``) and ``20-portable.conf`` (RootDirectory= the image). The
spec's fields come on top, as ``50-containersec.conf`` (it sorts after both, so its
settings win; a list setting is first reset with an empty assignment where the field
replaces it). Every field is mapped or refused (``UnsupportedSpec``), never dropped:

- image: any local image (the rootfs nspawn's cache exports from Docker or Podman), a
  private copy per container with the unit file ``<name>.service`` (portablectl wants
  units named after the image), /etc/os-release, /etc/machine-id and mount points added.
- command/entrypoint: the unit's ExecStart (behind the agent, as systemd-run's);
  env: ``Environment=``; properties: passed through, replacing a mapped setting of the
  same name (RootDirectory=, RootImage=, ExecStart=, ... are refused: the probe needs them).
- user: ``User=``/``Group=`` (the profiles with DynamicUser= make a name dynamic unless the
  manager has it; a number is that uid). Without it: a dynamic user, or root (trusted).
- cap_add/cap_drop: Docker's arithmetic over the profile's bounding set, written as
  ``CapabilityBoundingSet=`` (reset) + the result; cap_add also as ``AmbientCapabilities=``
  for a non-root user. privileged: only with the ``trusted`` profile (which confines
  nothing); the others' DynamicUser=/PrivateUsers=/filters cannot all be undone.
- seccomp: ``default`` keeps the profile's filters; ``unconfined`` only with ``trusted``
  (the other profiles' SystemCallFilter=, SystemCallArchitectures=, RestrictNamespaces=,
  MemoryDenyWriteExecute= and DynamicUser='s RestrictSUIDSGID= are all seccomp filters);
  a profile path: UnsupportedSpec.
- no_new_privileges -> NoNewPrivileges=yes; read_only -> ProtectSystem=strict;
  memory/pids_limit/cpus -> MemoryMax=/TasksMax=/CPUQuota=; userns ``auto`` ->
  PrivateUsers=yes, ``host`` -> PrivateUsers=no (maps: UnsupportedSpec); network ``none``
  (the spec default) -> PrivateNetwork=yes + IPAddressDeny=any, ``host`` ->
  PrivateNetwork=no + IPAddressDeny= (reset); volumes -> BindPaths=/BindReadOnlyPaths= on
  a systemd host; group_add -> SupplementaryGroups=; ulimits -> Limit*=; tmpfs ->
  TemporaryFileSystem=; unmask -> ProtectKernelTunables=no + ProtectControlGroups=no on a
  systemd host; apparmor -> AppArmorProfile=; pid/ipc/uts ``host`` on a systemd host
  (units share them). The systemd booted in nspawn cannot see host paths nor give the
  host's namespaces: volumes, unmask and those are UnsupportedSpec there.
- devices, sysctls, gidmap, label: UnsupportedSpec.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ...errors import UnsupportedSpec
from ...linux import caps
from ...spec import PORTABLE_PROFILES, ContainerSpec, Volume, refuse_unmapped
from ..oci.oci_fields import tmpfs_flags
from . import systemd_run_declared as decl
from .systemd_run_declared import pairs

NAME = "portable"
PROFILES = PORTABLE_PROFILES
DROPIN_NAME = "50-containersec.conf"
# The agent (main, listener, one request, its command) and the probe's shell with a
# subshell and an applet: a unit whose TasksMax= leaves less cannot be observed.
MIN_TASKS = 16
MAPPED: tuple[str, ...] = (
    "command", "user", "cap_add", "cap_drop", "privileged", "seccomp", "no_new_privileges",
    "read_only", "memory", "cpus", "pids_limit", "userns", "volumes", "network", "env",
    "properties", "entrypoint", "group_add", "pid", "ipc", "uts", "ulimits", "tmpfs",
    "unmask", "apparmor", "portable_profile",
)  # fmt: skip
NOT_PASSED_THROUGH = (
    "ExecStart", "RootDirectory", "RootImage", "MountImages", "ExtensionImages",
    "ExtensionDirectories", "Type",
)  # fmt: skip
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SAFE_WORD = re.compile(r"^/[A-Za-z0-9_./-]+$")


# -- unit file syntax ------------------------------------------------------------------


def quote(word: str, expand: bool = True) -> str:
    """One word in unit file syntax, exactly as given: double-quoted with C escapes,
    ``%`` doubled (specifiers) and, where systemd expands variables (``expand``: ExecStart),
    ``$`` doubled."""
    out = []
    for ch in word:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif ch == "%":
            out.append("%%")
        elif ch == "$" and expand:
            out.append("$$")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def exec_line(argv: list[str]) -> str:
    """``ExecStart=`` for ``argv`` (pure). The first word must be a plain absolute path."""
    if not argv or not _SAFE_WORD.match(argv[0]):
        raise ValueError(f"the unit's first word must be a plain absolute path: {argv[:1]}")
    if any("\0" in a for a in argv):
        raise ValueError("an argument contains a NUL byte")
    return " ".join([argv[0], *(quote(a) for a in argv[1:])])


def unit_file(name: str, argv: list[str]) -> str:
    """The service unit the image carries (``<name>.service``)."""
    return (
        "[Unit]\n"
        f"Description=containersec portable service {name}\n\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={exec_line(argv)}\n"
    )


def render(props: Iterable[tuple[str, str]]) -> str:
    """A drop-in's text for ``(key, value)`` settings, in order."""
    lines = ["# containersec: the spec's fields (portable_spec.dropin)", "[Service]"]
    for key, value in props:
        if any(c in value for c in "\n\r\0"):
            raise ValueError(f"{key}: a value must be one line")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


# -- the profile's bounding set ----------------------------------------------------------


def profile_capabilities(text: str) -> frozenset[str]:
    """The bounding set a profile's drop-in leaves (pure): systemd's rules for
    ``CapabilityBoundingSet=`` (no line: every capability; the first list replaces the
    initial set, later lists are OR'ed, ``~`` lists AND-NOT'ed; an empty value resets to
    none, ``~`` alone to all)."""
    every = frozenset(caps.ALL_CAPS)
    current: frozenset[str] = every
    initial = True
    for key, value in _settings(text):
        if key != "CapabilityBoundingSet":
            continue
        invert = value.startswith("~")
        words = value[1:] if invert else value
        if not words.strip():
            current, initial = (every if invert else frozenset()), False
            continue
        named = frozenset(caps.normalize(w) for w in words.split() if w.upper() != "CAP_")
        value_set = every - named if invert else named
        if initial:
            current = value_set
        elif invert:
            current = current & value_set
        else:
            current = current | value_set
        initial = False
    return current


def _settings(text: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` settings of a unit file (continuation lines joined; comments and
    section headers skipped)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;["):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        key, sep, value = line.partition("=")
        if sep:
            out.append((key.strip(), value.strip()))
    return out


# -- the spec's drop-in ------------------------------------------------------------------


def is_root(spec: ContainerSpec) -> bool:
    """Whether the unit's main process is root: a root user, or no user on the trusted
    profile (the others run a dynamic user)."""
    if spec.user is None:
        return spec.portable_profile == "trusted"
    return spec.user.split(":")[0] in ("0", "root")


def bounding_set(spec: ContainerSpec, profile_caps: frozenset[str]) -> frozenset[str]:
    """Docker's arithmetic over the profile's bounding set."""
    add, drop = set(spec.cap_add), set(spec.cap_drop)
    if "ALL" in add:
        return frozenset(caps.ALL_CAPS - caps.normalize_set(drop - {"ALL"}))
    if "ALL" in drop:
        return caps.normalize_set(add)
    return frozenset((profile_caps - drop) | add)


def dropin(
    spec: ContainerSpec, profile_caps: frozenset[str], host_systemd: bool
) -> list[tuple[str, str]]:
    """The drop-in's settings for ``spec`` (pure); ``profile_caps``: the bounding set the
    profile leaves (needed only for cap_add/cap_drop)."""
    refuse_unmapped(spec, NAME, MAPPED)
    profile = spec.portable_profile
    trusted = profile == "trusted"
    props: list[tuple[str, str]] = []
    if spec.user is not None:
        user, _, group = spec.user.partition(":")
        props.append(("User", user))
        if group:
            props.append(("Group", group))
    if spec.privileged and not trusted:
        raise UnsupportedSpec(
            "privileged", NAME, f"the {profile} profile's DynamicUser=, PrivateUsers= and "
            "filters cannot all be undone; use portable_profile='trusted'",
        )  # fmt: skip
    if (spec.cap_add or spec.cap_drop) and not spec.privileged:
        keep = bounding_set(spec, profile_caps)
        props.append(("CapabilityBoundingSet", ""))
        if keep:
            props.append(("CapabilityBoundingSet", " ".join(sorted(keep))))
        ambient = keep if "ALL" in spec.cap_add else caps.normalize_set(spec.cap_add) & keep
        if ambient and not is_root(spec):
            props.append(("AmbientCapabilities", " ".join(sorted(ambient))))
    if spec.seccomp.startswith("/"):
        raise UnsupportedSpec(
            "seccomp", NAME, "systemd takes SystemCallFilter= lists (properties), not OCI profiles"
        )
    if spec.seccomp == "unconfined" and not trusted:
        raise UnsupportedSpec(
            "seccomp", NAME, f"the {profile} profile's SystemCallFilter=, "
            "SystemCallArchitectures=, RestrictNamespaces=, MemoryDenyWriteExecute= (and "
            "DynamicUser='s RestrictSUIDSGID=) are seccomp filters; use portable_profile='trusted'",
        )  # fmt: skip
    props += decl.limit_properties(spec)
    if spec.userns == "auto":
        props.append(("PrivateUsers", "yes"))
    elif spec.userns == "host":
        props.append(("PrivateUsers", "no"))
    elif spec.userns is not None:
        raise UnsupportedSpec(
            "userns", NAME, f"{spec.userns!r}: systemd has PrivateUsers=yes/no only (auto, host)"
        )
    if spec.network == "none":
        props += [("PrivateNetwork", "yes"), ("IPAddressDeny", "any")]
    else:
        props += [("PrivateNetwork", "no"), ("IPAddressDeny", "")]
    props += _host_fields(spec, host_systemd)
    for key, value in pairs(spec.env):
        if not _ENV_NAME.match(key):
            raise UnsupportedSpec("env", NAME, f"{key!r} is not a variable name systemd accepts")
        props.append(("Environment", quote(f"{key}={value}", expand=False)))
    if spec.group_add:
        props.append(("SupplementaryGroups", " ".join(map(str, spec.group_add))))
    for u in spec.ulimit_list:
        soft, hard = (("infinity" if v < 0 else str(v)) for v in (u.soft, u.hard))
        props.append((f"Limit{u.name.upper()}", f"{soft}:{hard}"))
    for t in spec.tmpfs_list:
        opts = [o for o in t.options if "=" in o] + tmpfs_flags(t.flags)
        props.append(("TemporaryFileSystem", f"{t.target}:{','.join(opts)}"))
    if spec.apparmor not in (None, "unconfined"):
        props.append(("AppArmorProfile", spec.apparmor))
    extra = pairs(spec.properties)
    given = {k for k, _ in extra}
    bad = sorted(given & set(NOT_PASSED_THROUGH))
    if bad:
        raise UnsupportedSpec(
            "properties", NAME, f"{', '.join(bad)}: set by the adapter (the probe needs them)"
        )
    return [p for p in props if p[0] not in given] + extra


def _host_fields(spec: ContainerSpec, host_systemd: bool) -> list[tuple[str, str]]:
    """What only a manager on the host's root (systemd as PID 1) can give."""
    where = "the systemd booted in nspawn"
    props: list[tuple[str, str]] = []
    for v in spec.volumes:
        if not host_systemd:
            raise UnsupportedSpec("volumes", NAME, f"{where} cannot see host paths")
        assert isinstance(v, Volume)
        key = "BindReadOnlyPaths" if v.read_only else "BindPaths"
        props.append((key, f"{v.source}:{v.target}"))
    for ns in spec.namespaces_host:
        if not host_systemd:
            raise UnsupportedSpec(ns, NAME, f"units share the {ns} namespace of {where}")
    if spec.unmask:
        if not host_systemd:
            raise UnsupportedSpec("unmask", NAME, f"{where} keeps nspawn's read-only /proc/sys")
        props += [("ProtectKernelTunables", "no"), ("ProtectControlGroups", "no")]
    return props


def tasks_problem(tasks_max: str) -> str | None:
    """Why a unit with this ``TasksMax`` (``systemctl show``) cannot be observed, or None."""
    if not tasks_max.isdigit() or int(tasks_max) >= MIN_TASKS:
        return None
    return (
        f"the unit's TasksMax={tasks_max} (the strict profile's is 4) leaves no room for the "
        f"probe's agent and shell; set pids_limit >= {MIN_TASKS} to observe it"
    )
