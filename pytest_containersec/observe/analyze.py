"""systemd-analyze security's per-setting verdicts against what is observed.

A unit's ``declared()["systemd_analyze"]`` (runtimes.systemd) lists each setting with
systemd's verdict (``set``: protected). The collector compares each with the Facts it
observed; a contradiction is a ``systemd-analyze`` mismatch. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..linux import caps
from ..model import Facts, Mismatch, MismatchSource

SOURCE: MismatchSource = "systemd-analyze"

Verdict = Callable[[Facts, str], bool | None]  # True: protected, False: exposed, None: unknown


def _allowed_means_exposed(key: str, operation: bool = False) -> Verdict:
    def verdict(f: Facts, _name: str) -> bool | None:
        r = (f.operations if operation else f.access).get(key)
        return False if r is not None and r.allowed else None

    return verdict


def _denied_with(key: str, errno: str) -> Verdict:
    def verdict(f: Facts, _name: str) -> bool | None:
        r = f.access.get(key)
        if r is None:
            return None
        return False if r.allowed else (True if r.errno == errno else None)

    return verdict


def _bounding(f: Facts, name: str) -> bool | None:
    # "~CAP_SYS_ADMIN" or a group: "~CAP_(CHOWN|FSETID|SETFCAP)"
    words = re.findall(r"[A-Z_]+", name.partition("~")[2].replace("CAP_", ""))
    wanted = {f"CAP_{w}" for w in words} & caps.ALL_CAPS
    return not (wanted & set(f.capabilities.bounding)) if wanted else None


def _syscalls(f: Facts, name: str) -> bool | None:
    if f.seccomp == "disabled":
        return False
    group = name.partition("@")[2]
    op = {"mount": "mount_tmpfs", "module": "load_module"}.get(group)
    r = f.operations.get(op) if op else None
    return False if r is not None and r.allowed else None


RULES: tuple[tuple[str, Verdict], ...] = (
    ("PrivateNetwork=", lambda f, _n: f.namespaces.get("net") == "private"
     if "net" in f.namespaces else None),
    ("NoNewPrivileges=", lambda f, _n: f.no_new_privs),
    ("ProtectSystem=", lambda f, _n: f.rootfs_read_only),
    ("User=/DynamicUser=", lambda f, _n: f.user.uid != 0),
    ("AmbientCapabilities=", lambda f, _n: not f.capabilities.ambient),
    ("CapabilityBoundingSet=", _bounding),
    ("SystemCallFilter=", _syscalls),
    ("RestrictNamespaces=~user", _allowed_means_exposed("unshare_user", operation=True)),
    ("PrivateDevices=", _denied_with("/dev/mem:r", "ENOENT")),
    ("ProtectKernelTunables=", _denied_with("/proc/sys/kernel/core_pattern:w", "EROFS")),
    ("ProtectKernelModules=", _allowed_means_exposed("load_module", operation=True)),
    ("ProtectKernelLogs=", _allowed_means_exposed("/dev/kmsg:r")),
)  # fmt: skip


def _rule(name: str) -> Verdict | None:
    for prefix, verdict in RULES:
        if name == prefix or (prefix.endswith("=") and name.startswith(prefix + "~")):
            return verdict
    return None


def mismatches(facts: Facts) -> list[Mismatch]:
    """Each setting whose systemd-analyze verdict the observed Facts contradict."""
    analyze = facts.declared.get("systemd_analyze")
    out: list[Mismatch] = []
    for s in (analyze.get("settings") if analyze else None) or []:
        verdict = _rule(s["name"])
        observed = verdict(facts, s["name"]) if verdict is not None else None
        if observed is not None and observed != s["set"]:
            out.append(
                Mismatch(
                    s["name"],
                    "protected" if s["set"] else "exposed",
                    "protected" if observed else "exposed",
                    SOURCE,
                )
            )
    return out
