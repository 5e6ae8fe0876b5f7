"""systemd unit files (and Podman's quadlet ``.container`` files, which are unit files):
a line-numbered parser, and a unit's ``[Service]`` sandboxing -> systemd-run properties.

A unit file: ``[Section]`` headers, ``Key=Value`` lines (repeatable), ``#``/``;``
comments, a trailing backslash continues a line. The ``[Service]`` sandboxing settings
pass through as unit properties, ``ExecStart=`` is the command, ``Environment=`` the
environment; lifecycle settings are ignored; anything else is an error naming the line.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..spec import ContainerSpec, Origin
from .common import Loaded
from .yamlfile import Ctx


@dataclass(frozen=True)
class Entry:
    """One ``Key=Value`` line of a unit file, with its section and its first line number."""

    section: str
    key: str
    value: str
    line: int


def parse(path: Path) -> list[Entry]:
    """Every ``Key=Value`` of a unit file with its section and line."""
    p = str(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise Ctx(p, None, "file").error(exc.strerror or str(exc)) from None
    out: list[Entry] = []
    section = ""
    i = 0
    while i < len(lines):
        start, text = i + 1, lines[i].strip()
        i += 1
        while text.endswith("\\") and i < len(lines):
            text = text[:-1] + " " + lines[i].strip()
            i += 1
        if not text or text[0] in "#;":
            continue
        if text.startswith("[") and text.endswith("]"):
            section = text[1:-1]
            continue
        key, sep, value = text.partition("=")
        if not sep or not section:
            where = Ctx(p, start, section or "file")
            raise where.error(f"expected Key=Value in a [Section]: {text!r}")
        out.append(Entry(section, key.strip(), value.strip(), start))
    return out


def ctx_of(path: Path, e: Entry) -> Ctx:
    """The error context of an entry: ``[Section] Key`` at its line."""
    return Ctx(str(path), e.line, f"[{e.section}] {e.key}")


def env_words(c: Ctx, value: str) -> list[tuple[str, str]]:
    """``Environment=A=1 "B=two words"`` -> pairs."""
    out = []
    for w in shlex.split(value):
        k, sep, v = w.partition("=")
        if not sep:
            raise c.error(f"expected KEY=VALUE, got {w!r}")
        out.append((k, v))
    return out


# [Service] settings passed to systemd-run as properties (systemd.exec, systemd.resource-control)
SANDBOXING = frozenset((
    "User", "Group", "DynamicUser", "SupplementaryGroups", "UMask", "NoNewPrivileges",
    "SecureBits", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem",
    "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateNetwork", "PrivateUsers",
    "PrivateIPC", "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "ProtectProc", "ProcSubset", "RestrictNamespaces", "RestrictRealtime",
    "RestrictSUIDSGID", "RestrictAddressFamilies", "LockPersonality",
    "MemoryDenyWriteExecute", "SystemCallFilter", "SystemCallErrorNumber",
    "SystemCallArchitectures", "SystemCallLog", "ReadOnlyPaths", "ReadWritePaths",
    "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "BindPaths",
    "BindReadOnlyPaths", "KeyringMode", "RemoveIPC", "DevicePolicy", "DeviceAllow",
    "IPAddressDeny", "IPAddressAllow", "MemoryMax", "MemoryHigh", "MemorySwapMax",
    "TasksMax", "CPUQuota", "CPUWeight", "LimitNOFILE", "LimitNPROC", "LimitCORE",
    "LimitAS", "LimitCPU", "LimitDATA", "LimitFSIZE", "LimitLOCKS", "LimitMEMLOCK",
    "LimitMSGQUEUE", "LimitNICE", "LimitRSS", "LimitRTPRIO", "LimitRTTIME",
    "LimitSIGPENDING", "LimitSTACK", "AppArmorProfile", "SELinuxContext",
    "SmackProcessLabel", "StateDirectory", "RuntimeDirectory", "CacheDirectory",
    "LogsDirectory", "ConfigurationDirectory",
))  # fmt: skip
SERVICE_IGNORED = frozenset((
    "Type", "Restart", "RestartSec", "TimeoutSec", "TimeoutStartSec", "TimeoutStopSec",
    "ExecReload", "ExecStop", "ExecStopPost", "PIDFile", "KillMode", "KillSignal",
    "SendSIGKILL", "RemainAfterExit", "NotifyAccess", "WatchdogSec", "StandardOutput",
    "StandardError", "StandardInput", "SyslogIdentifier", "WorkingDirectory",
    "SuccessExitStatus", "RestartPreventExitStatus", "StartLimitBurst",
    "StartLimitIntervalSec", "Nice", "OOMScoreAdjust", "Slice", "Delegate", "BusName",
    "FileDescriptorStoreMax", "GuessMainPID",
))  # fmt: skip
UNSUPPORTED = {
    "ExecStartPre": "commands before the main one run with other settings",
    "ExecStartPost": "commands after the main one run with other settings",
    "RootDirectory": "the probe needs its own root file system",
    "RootImage": "the probe needs its own root file system",
    "EnvironmentFile": "read the variables into Environment=",
}


def load(path: str | Path) -> Loaded:
    """A unit file's ``[Service]`` -> a spec for the ``systemd-run`` runtime."""
    file = Path(path).resolve()
    entries = parse(file)
    services = [e for e in entries if e.section == "Service"]
    if not services:
        raise Ctx(str(path), None, "[Service]").error("the unit has no [Service] section")
    props: list[tuple[str, str]] = []
    env: list[tuple[str, str]] = []
    command: tuple[str, ...] = ()
    notes: list[str] = []
    for e in entries:
        c = ctx_of(Path(path), e)
        if e.section in ("Unit", "Install"):
            continue  # description, ordering and enablement: not confinement
        if e.section != "Service":
            raise c.unsupported(f"section [{e.section}]")
        if e.key == "ExecStart":
            command = exec_start(c, e.value)
        elif e.key == "Environment":
            env += env_words(c, e.value)
        elif e.key in SANDBOXING:
            props.append((e.key, e.value))
        elif e.key in SERVICE_IGNORED:
            notes.append(f"{c.path}:{c.line}: {e.key}= ignored (lifecycle, not confinement)")
        elif e.key in UNSUPPORTED:
            raise c.unsupported(UNSUPPORTED[e.key])
        else:
            raise c.unsupported(f"unknown or unsupported [Service] setting {e.key}=")
    try:
        spec = ContainerSpec(
            command=command, env=env, properties=props, origin=Origin("unit", str(file), file.name)
        )
    except ValueError as exc:
        raise Ctx(str(path), None, "[Service]").error(str(exc)) from None
    return Loaded(spec, tuple(notes))


def exec_start(c: Ctx, value: str) -> tuple[str, ...]:
    """``ExecStart=`` as an argv; the ``-`` and ``:`` prefixes are dropped, the ``+``, ``!``
    and ``@`` prefixes and ``%`` specifiers are refused (SourceError)."""
    prefix = ""
    while value[:1] in ("-", "@", ":", "+", "!"):
        prefix, value = prefix + value[0], value[1:]
    if set(prefix) & set("+!@"):
        raise c.unsupported(f"ExecStart prefix {prefix!r} (runs with other privileges)")
    if "%" in value:
        raise c.unsupported("specifiers (%) in ExecStart")
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise c.error(str(exc)) from None
