"""A Podman quadlet ``.container`` file -> ContainerSpec (pure apart from reading it).

``[Container]`` keys map to spec fields (podman-systemd.unit(5)); the container runs in
its service's cgroup, so ``[Service]`` ``MemoryMax=``/``TasksMax=``/``CPUQuota=`` are its
limits. ``[Unit]``/``[Install]`` and the lifecycle of ``[Service]`` are ignored.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..spec import Origin
from .common import Loaded, boolean, build, integer
from .unitfile import SERVICE_IGNORED, Entry, ctx_of, env_words, parse
from .yamlfile import Ctx

# Every [Container] key is in exactly one table. MAPPED: _apply gives it a spec field.
MAPPED = (
    "Image", "Exec", "Entrypoint", "User", "Group", "AddCapability", "DropCapability",
    "NoNewPrivileges", "ReadOnly", "SeccompProfile", "SecurityLabelDisable",
    "SecurityLabelType", "Volume", "Tmpfs", "Network", "AddDevice", "Environment", "Ulimit",
    "Sysctl", "GroupAdd", "UserNS", "UIDMap", "GIDMap", "PidsLimit", "Unmask",
)  # fmt: skip
IGNORED = (
    "ContainerName", "Label", "Annotation", "PublishPort", "ExposeHostPort", "HealthCmd",
    "HealthInterval", "HealthRetries", "HealthStartPeriod", "HealthTimeout",
    "HealthOnFailure", "AutoUpdate", "Pull", "Notify", "LogDriver", "HostName",
    "Timezone", "WorkingDir", "StopTimeout", "DNS", "DNSSearch", "DNSOption", "AddHost",
    "ReadOnlyTmpfs",
)  # fmt: skip
UNSUPPORTED = {
    "PodmanArgs": "free-form podman arguments (write them as quadlet keys)",
    "Pod": "pods (run the container on its own)",
    "Secret": "secrets come from the podman store",
    "Mount": "--mount (use Volume= or Tmpfs=)",
    "RunInit": "an init process as PID 1",
    "ShmSize": "no spec field",
    "Mask": "extra masked paths have no spec field",
    "SecurityLabelLevel": "no spec field beyond label type/disable",
}
SERVICE_LIMITS = {"MemoryMax": "memory", "TasksMax": "pids_limit", "CPUQuota": "cpus"}


def load(path: str | Path) -> Loaded:
    """Read a quadlet ``.container`` file into a spec (network ``none`` unless ``Network=`` says
    otherwise); a key with no spec field, an unknown key or a missing ``Image=`` is a
    SourceError naming its line."""
    file = Path(path).resolve()
    entries = parse(file)
    if not any(e.section == "Container" for e in entries):
        raise Ctx(str(path), None, "[Container]").error("not a quadlet: no [Container] section")
    fields: dict[str, Any] = {"network": "none"}
    lines: dict[str, Ctx] = {}
    notes: list[str] = []
    lists: dict[str, list[Any]] = {}
    user: dict[str, str] = {}
    for e in entries:
        c = ctx_of(Path(path), e)
        if e.section in ("Unit", "Install"):
            continue
        if e.section == "Service":
            if e.key in SERVICE_LIMITS:
                field = SERVICE_LIMITS[e.key]
                fields[field] = _limit(c, e.key, e.value)
                lines[field] = c
            elif e.key in SERVICE_IGNORED:
                continue
            else:
                raise c.unsupported(f"[Service] {e.key}= (only the cgroup limits map)")
            continue
        if e.section != "Container":
            raise c.unsupported(f"section [{e.section}]")
        if e.key in UNSUPPORTED:
            raise c.unsupported(UNSUPPORTED[e.key])
        if e.key in IGNORED:
            continue
        if e.key not in MAPPED:
            raise c.unsupported(f"unknown or unsupported key {e.key}=")
        _apply(c, e, fields, lines, lists, user)
    if "User" in user or "Group" in user:
        if "User" not in user:
            raise Ctx(str(path), None, "[Container] Group").unsupported("Group= without User=")
        fields["user"] = user["User"] + (f":{user['Group']}" if "Group" in user else "")
    for field, values in lists.items():
        fields[field] = values
    if "image" not in fields:
        raise Ctx(str(path), None, "[Container] Image").error("the quadlet names no Image=")
    fields["origin"] = Origin("quadlet", str(file), file.name, line=lines["image"].line or 0)
    return Loaded(build(Ctx(str(path), None, "[Container]"), fields, lines), tuple(notes))


def _limit(c: Ctx, key: str, value: str) -> Any:
    if key == "CPUQuota":
        if not value.endswith("%"):
            raise c.error("expected a percentage like 50%")
        return float(value[:-1]) / 100
    if key == "TasksMax":
        return integer(c, value)
    return value.replace("K", "k").replace("M", "m").replace("G", "g").replace("T", "t")


def _apply(
    c: Ctx,
    e: Entry,
    fields: dict[str, Any],
    lines: dict[str, Ctx],
    lists: dict[str, list[Any]],
    user: dict[str, str],
) -> None:
    k, v = e.key, e.value

    def put(field: str, value: Any) -> None:
        fields[field] = value
        lines[field] = c

    def add(field: str, *values: Any) -> None:
        lists.setdefault(field, []).extend(values)
        lines[field] = c

    if k == "Image":
        put("image", v)
    elif k == "Exec":
        put("command", tuple(shlex.split(v)))
    elif k == "Entrypoint":
        put("entrypoint", tuple(shlex.split(v)))
    elif k in ("User", "Group"):
        user[k] = v
    elif k == "AddCapability":
        add("cap_add", *v.split())
    elif k == "DropCapability":
        add("cap_drop", *v.split())
    elif k in ("NoNewPrivileges", "ReadOnly"):
        put("no_new_privileges" if k == "NoNewPrivileges" else "read_only", boolean(c, v))
    elif k == "SeccompProfile":
        put("seccomp", v)
    elif k == "SecurityLabelDisable":
        if boolean(c, v):
            add("label", "disable")
    elif k == "SecurityLabelType":
        add("label", f"type:{v}")
    elif k == "Volume":
        if not v.startswith("/"):
            raise c.unsupported(f"volume {v!r}: named volumes (bind an absolute path)")
        add("volumes", v)
    elif k == "Tmpfs":
        add("tmpfs", v)
    elif k == "Network":
        if v not in ("none", "host"):
            raise c.unsupported(f"Network={v} (none or host)")
        put("network", v)
    elif k == "AddDevice":
        add("devices", v.lstrip("-"))
    elif k == "Environment":
        add("env", *env_words(c, v))
    elif k == "Ulimit":
        add("ulimits", *v.split())
    elif k == "Sysctl":
        add("sysctls", *v.split())
    elif k == "GroupAdd":
        add("group_add", *v.split())
    elif k == "UserNS":
        put("userns", v.partition(":")[0])
    elif k in ("UIDMap", "GIDMap"):
        maps = [m.lstrip("+") for m in v.split()]
        field = "userns" if k == "UIDMap" else "gidmap"
        prev = fields.get(field)
        put(field, ",".join(([prev] if prev else []) + maps))
    elif k == "PidsLimit":
        put("pids_limit", integer(c, v, signed=True))  # podman: -1 is unlimited
    elif k == "Unmask":
        if v != "ALL":
            raise c.unsupported(f"Unmask={v} (ALL only)")
        put("unmask", True)
    else:  # a MAPPED key without a branch here: refused, never dropped silently
        raise c.unsupported(f"{k}= is listed as mapped but has no mapping")
