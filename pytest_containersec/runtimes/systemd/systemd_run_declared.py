"""Unit properties both ways: a ContainerSpec mapped to properties (the mapping is
described in systemd_run's docstring), and what a unit declares: ``systemctl show``
normalized into the keys every runtime's ``declared`` has, plus ``systemd-analyze
security`` (its exposure and per-setting verdicts; observe.analyze compares those with
the observed Facts). All pure.

systemd 252's ``systemd-analyze security --json=short UNIT`` is a list of
``{"set": bool, "name": "PrivateNetwork=", "json_field": "PrivateNetwork",
"description": ..., "exposure": "0.5" | null}`` and carries no overall score: that comes
from the text output's last line, ``→ Overall exposure level for UNIT: 3.7 OK 🙂``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from ...errors import UnsupportedSpec
from ...linux import caps
from ...model import AnalyzeSetting, Declared, SystemdAnalyze
from ...spec import DEFAULT_IMAGE, ContainerSpec, Volume, refuse_portable_profile
from ..base import PROBE_DIR
from ..oci.oci_fields import tmpfs_flags

NAME = "systemd-run"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NOT_PASSED_THROUGH = ("ExecStart", "RootDirectory", "RootImage", "MountImages", "ExtensionImages")
SHOW_PROPERTIES: tuple[str, ...] = (
    "Id", "MainPID", "ActiveState", "SubState", "Result", "ControlGroup", "User", "Group",
    "DynamicUser", "CapabilityBoundingSet", "AmbientCapabilities", "NoNewPrivileges",
    "SystemCallFilter", "SystemCallErrorNumber", "ProtectSystem", "ReadOnlyPaths",
    "MemoryMax", "TasksMax", "CPUQuotaPerSecUSec", "PrivateNetwork", "IPAddressDeny",
    "PrivateUsers", "BindPaths", "BindReadOnlyPaths", "ProtectHome", "PrivateTmp",
    "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules", "RestrictNamespaces",
)  # fmt: skip
_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)")
_TIMESPAN = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|min|h)")
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def pairs(value: object) -> list[tuple[str, str]]:
    """A normalized spec field of pairs (env, properties) as a list."""
    items = value.items() if isinstance(value, Mapping) else value
    assert isinstance(items, Iterable)
    return [(str(k), str(v)) for k, v in items]


def capability_set(spec: ContainerSpec) -> frozenset[str]:
    """What the bounding set keeps: Docker's arithmetic over systemd's default (all)."""
    add, drop = set(spec.cap_add), set(spec.cap_drop)
    if spec.privileged or "ALL" in add:
        return frozenset(caps.ALL_CAPS - caps.normalize_set(drop - {"ALL"}))
    if "ALL" in drop:
        return caps.normalize_set(add)
    return frozenset((caps.ALL_CAPS - drop) | add)


def limit_properties(spec: ContainerSpec) -> list[tuple[str, str]]:
    """no_new_privileges, read_only, memory, pids_limit and cpus as unit properties (the
    same in a transient unit and a portable service's drop-in)."""
    props: list[tuple[str, str]] = []
    if spec.no_new_privileges:
        props.append(("NoNewPrivileges", "yes"))
    if spec.read_only:
        props.append(("ProtectSystem", "strict"))
    if spec.memory is not None:
        props.append(("MemoryMax", str(spec.memory)))
    if spec.pids_limit is not None:
        props.append(("TasksMax", str(spec.pids_limit)))
    if spec.cpus is not None:
        props.append(("CPUQuota", f"{round(spec.cpus * 100)}%"))
    return props


def unit_properties(spec: ContainerSpec, host_systemd: bool) -> list[tuple[str, str]]:
    """Unit properties for ``spec`` (pure); ``spec.properties`` replace same-named ones."""
    if spec.image != DEFAULT_IMAGE:
        raise UnsupportedSpec(
            "image", NAME, "units run on the systemd instance's own root file system"
        )
    refuse_portable_profile(spec, NAME)
    props: list[tuple[str, str]] = [("Type", "exec")]
    root = spec.user is None or spec.user.split(":")[0] in ("0", "root")
    if spec.user is not None:
        user, _, group = spec.user.partition(":")
        props.append(("User", user))
        if group:
            props.append(("Group", group))
    if (spec.cap_add or spec.cap_drop) and not spec.privileged:
        keep = capability_set(spec)
        props.append(("CapabilityBoundingSet", " ".join(sorted(keep))))
        ambient = keep if "ALL" in spec.cap_add else caps.normalize_set(spec.cap_add) & keep
        if ambient and not root:
            props.append(("AmbientCapabilities", " ".join(sorted(ambient))))
    if spec.seccomp.startswith("/"):
        raise UnsupportedSpec(
            "seccomp", NAME, "systemd takes SystemCallFilter= lists (properties), not OCI profiles"
        )
    if spec.seccomp == "default" and not spec.privileged:
        props += [("SystemCallFilter", "@system-service"), ("SystemCallErrorNumber", "EPERM")]
    props += limit_properties(spec)
    if spec.userns == "auto":
        props.append(("PrivateUsers", "yes"))
    elif spec.userns not in (None, "host"):
        raise UnsupportedSpec(
            "userns", NAME, f"{spec.userns!r}: systemd has PrivateUsers=yes only (userns=auto)"
        )
    if spec.network == "none":
        props += [("PrivateNetwork", "yes"), ("IPAddressDeny", "any")]
    for v in spec.volumes:
        if not host_systemd:
            raise UnsupportedSpec(
                "volumes", NAME, "the systemd booted in nspawn cannot see host paths"
            )
        assert isinstance(v, Volume)
        key = "BindReadOnlyPaths" if v.read_only else "BindPaths"
        props.append((key, f"{v.source}:{v.target}"))
    for key, _ in pairs(spec.env):
        if not _ENV_NAME.match(key):
            raise UnsupportedSpec("env", NAME, f"{key!r} is not a name systemd-run accepts")
    props += more_properties(spec, host_systemd)
    extra = pairs(spec.properties)
    given = {k for k, _ in extra}
    bad = sorted(given & set(NOT_PASSED_THROUGH))
    if bad:
        raise UnsupportedSpec("properties", NAME, f"{', '.join(bad)}: the probe needs its own root")
    return [p for p in props if p[0] not in given] + extra


def more_properties(spec: ContainerSpec, host_systemd: bool) -> list[tuple[str, str]]:
    """The newer fields as unit properties; UnsupportedSpec for what a unit cannot do."""
    props: list[tuple[str, str]] = []
    if spec.group_add:
        props.append(("SupplementaryGroups", " ".join(map(str, spec.group_add))))
    for d in spec.device_list:
        if d.host != d.container:
            raise UnsupportedSpec("devices", NAME, f"{d}: a unit sees devices at their own path")
        props.append(("DeviceAllow", f"{d.host} {d.permissions}"))
    for ns in spec.namespaces_host:
        if not host_systemd:
            raise UnsupportedSpec(
                ns, NAME, f"units share the {ns} namespace of the systemd booted in nspawn, "
                "not the host's",
            )  # fmt: skip
    for u in spec.ulimit_list:
        soft, hard = (("infinity" if v < 0 else str(v)) for v in (u.soft, u.hard))
        props.append((f"Limit{u.name.upper()}", f"{soft}:{hard}"))
    if spec.sysctls:
        raise UnsupportedSpec("sysctls", NAME, "systemd has no per-unit sysctls")
    for t in spec.tmpfs_list:
        opts = [o for o in t.options if "=" in o] + tmpfs_flags(t.flags)
        props.append(("TemporaryFileSystem", f"{t.target}:{','.join(opts)}"))
    if spec.unmask and not host_systemd:
        raise UnsupportedSpec(
            "unmask", NAME, "the systemd booted in nspawn keeps nspawn's read-only /proc/sys"
        )
    if spec.gidmap is not None:
        raise UnsupportedSpec("gidmap", NAME, "systemd has PrivateUsers=yes only")
    if spec.apparmor not in (None, "unconfined"):
        props.append(("AppArmorProfile", spec.apparmor))
    if any(x != "disable" for x in spec.label):
        raise UnsupportedSpec("label", NAME, "SELinuxContext= takes a full context (properties)")
    return props


def run_argv(
    unit: str, props: list[tuple[str, str]], command: list[str], env: list[tuple[str, str]]
) -> list[str]:
    """The systemd-run command line (pure). ``$`` is doubled: systemd must not expand it."""
    argv = ["systemd-run", "--quiet", "--collect", f"--unit={unit}"]
    argv += [f"--setenv={k}={v}" for k, v in env]
    argv += [f"--property={k}={v}" for k, v in props]
    return [*argv, "--", *(a.replace("$", "$$") for a in command)]


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show`` output (KEY=VALUE lines) as a dict (pure)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _number(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def timespan_seconds(text: str) -> float | None:
    """``500ms``, ``1s 500ms``, ``1.500000s`` -> seconds; ``infinity`` or empty -> None."""
    if not text or text == "infinity":
        return None
    parts = _TIMESPAN.findall(text.replace(" ", ""))
    return sum(float(n) * _SECONDS[u] for n, u in parts) if parts else None


def cap_list(text: str) -> list[str]:
    """``cap_chown cap_kill`` (systemctl show's spelling) -> sorted CAP_* names."""
    return sorted({caps.normalize(w) for w in text.split()})


def _binds(text: str, read_only: bool) -> list[str]:
    out = []
    for entry in text.split():
        src, _, rest = entry.partition(":")
        dst = rest.split(":")[0] or src
        if dst == PROBE_DIR or dst.startswith(PROBE_DIR + "/"):
            continue
        out.append(f"{src.lstrip('-')}:{dst}{':ro' if read_only else ''}")
    return out


def parse_analyze(json_text: str, text: str) -> SystemdAnalyze:
    """``{"exposure": 3.7, "level": "OK", "settings": [...]}`` from both outputs (pure)."""
    entries = json.loads(json_text) if json_text.strip() else []
    if not isinstance(entries, list):
        raise ValueError("systemd-analyze security --json: expected a list")
    settings: list[AnalyzeSetting] = []
    for e in entries:
        exposure = e.get("exposure")
        settings.append(
            {
                "name": str(e.get("name", "")),
                "json_field": str(e.get("json_field", "")),
                "set": bool(e.get("set")),
                "exposure": None if exposure in (None, "") else float(exposure),
                "description": str(e.get("description", "")),
            }
        )
    m = _OVERALL.search(text)
    return {
        "exposure": float(m.group(1)) if m else None,
        "level": m.group(2) if m else None,
        "settings": settings,
    }


def declared_from_show(props: dict[str, str], analyze: SystemdAnalyze | None) -> Declared:
    """The unit's properties in docker.declared_from_inspect's keys (pure)."""
    user = props.get("User") or None
    if user and props.get("Group") and props["Group"] != user:
        user = f"{user}:{props['Group']}"
    bounding = cap_list(props.get("CapabilityBoundingSet", ""))
    quota = timespan_seconds(props.get("CPUQuotaPerSecUSec", ""))
    read_only = (
        props.get("ProtectSystem") == "strict" or "/" in props.get("ReadOnlyPaths", "").split()
    )
    return {
        "engine": "systemd",
        "unit": props.get("Id", ""),
        "user": user,
        "dynamic_user": props.get("DynamicUser") == "yes",
        "cap_add": cap_list(props.get("AmbientCapabilities", "")),
        "cap_drop": sorted(caps.ALL_CAPS - set(bounding)),
        "capabilities": bounding,
        "privileged": False,
        "seccomp": "unconfined" if props.get("SystemCallFilter", "") in ("", "~") else "custom",
        "no_new_privileges": props.get("NoNewPrivileges") == "yes",
        "read_only": read_only,
        "memory": _number(props.get("MemoryMax")),
        "cpus": round(quota, 4) if quota is not None else None,
        "pids_limit": _number(props.get("TasksMax")),
        "userns_mode": "auto" if props.get("PrivateUsers") == "yes" else "host",
        "network_mode": "none" if props.get("PrivateNetwork") == "yes" else "host",
        "binds": _binds(props.get("BindPaths", ""), False)
        + _binds(props.get("BindReadOnlyPaths", ""), True),
        "properties": {k: props[k] for k in SHOW_PROPERTIES if k in props},
        "systemd_analyze": analyze,
    }
