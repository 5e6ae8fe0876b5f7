"""Named profiles ``baseline`` and ``restricted``: the Kubernetes Pod Security Standards
levels and the container-runtime section (5.x) of the CIS Docker Benchmark, mapped onto
observed checks. Controls that cannot apply outside Kubernetes (or cannot be observed)
are listed with ``family=None`` and the reason, so the README table is complete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..linux.caps import ALL_CAPS


@dataclass(frozen=True)
class Control:
    """One control of a profile: its PSS/CIS id, the check that observes it and the check's
    value, or ``family=None`` and a note saying why it does not apply."""

    id: str  # "PSS baseline: Privileged Containers", "CIS 5.4", ...
    title: str
    family: str | None  # the policy check family, None when not applicable
    value: Any = True
    note: str = ""


# Kubernetes' baseline allow-list for added capabilities, plus CAP_NET_RAW: PSS only
# judges *added* capabilities, and Docker's runtime default set includes NET_RAW.
BASELINE_CAPS = [
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT", "CAP_NET_RAW",
]  # fmt: skip

BASELINE: tuple[Control, ...] = (
    Control("PSS-B HostProcess", "Windows HostProcess containers", None,
            note="Windows only; does not apply"),
    Control("PSS-B Host Namespaces / CIS 5.9 5.15 5.16", "host network, PID and IPC "
            "namespaces not shared", "namespaces_private", ["net", "pid", "ipc"]),
    Control("PSS-B Privileged / CIS 5.4", "no privileged containers", "not_privileged"),
    Control("PSS-B Capabilities / CIS 5.3", "no capabilities beyond the default set",
            "capabilities", {"at_most": BASELINE_CAPS}),
    Control("PSS-B HostPath Volumes / CIS 5.5 5.31", "no sensitive host folders, host root "
            "or engine sockets mounted", "no_sensitive_mounts",
            note="PSS forbids every hostPath; we flag the sensitive ones (see checks)"),
    Control("PSS-B Host Ports / CIS 5.8", "no host ports", None,
            note="Kubernetes hostPort; outside Kubernetes see host network namespace"),
    Control("PSS-B AppArmor / CIS 5.1", "AppArmor not overridden to unconfined",
            "lsm_not_unconfined", note="applies where an LSM is active on the host"),
    Control("PSS-B SELinux / CIS 5.2", "no custom SELinux user or role", None,
            note="SELinux options are declared in the pod spec; not observable as such"),
    Control("PSS-B /proc Mount Type", "/proc masked: sysrq-trigger not writable",
            "readonly_path", "/proc/sysrq-trigger",
            note="read-only bind or masked; absent on the host kernel: skipped, not passed"),
    Control("PSS-B /proc Mount Type (kcore)", "/proc/kcore masked", "masked", "/proc/kcore",
            note="runc's /dev/null bind counts; absent on the host kernel: skipped, "
            "not passed"),
    Control("PSS-B Seccomp / CIS 5.21", "seccomp not unconfined", "seccomp", "filter"),
    Control("PSS-B Sysctls", "no unsafe sysctls: /proc/sys read-only", "denied",
            {"path": "/proc/sys/kernel/core_pattern", "mode": "w"}),
    Control("CIS 5.17", "host devices not exposed: /dev/mem", "denied",
            {"path": "/dev/mem", "mode": "r"}),
    Control("CIS 5.20", "host UTS namespace not shared", "namespaces_private", ["uts"]),
    Control("CIS 5.6 / 5.7 / 5.13 / 5.14", "no sshd, privileged ports, host interface "
            "binding, restart policy", None, note="about the workload or the engine, "
            "not the confinement; out of scope"),
)  # fmt: skip

RESTRICTED: tuple[Control, ...] = (
    *BASELINE,
    Control("PSS-R Volume Types", "only ephemeral/projected volume types", None,
            note="Kubernetes volume types; does not apply"),
    Control("PSS-R Privilege Escalation / CIS 5.25", "no privilege escalation",
            "no_new_privs", True),
    Control("PSS-R Running as Non-root", "runs as a non-root user", "non_root"),
    Control("PSS-R Running as Non-root user", "runAsUser is not 0", "non_root",
            note="runAsNonRoot and runAsUser are both observed as the process uid; "
            "whether container root is host root is the separate root_unprivileged check"),
    Control("PSS-R Seccomp", "a seccomp filter is in effect", "seccomp", "filter"),
    Control("PSS-R Capabilities", "drop ALL; only NET_BIND_SERVICE may stay", "capabilities",
            {"absent": sorted(ALL_CAPS - {"CAP_NET_BIND_SERVICE"})}),
    Control("CIS 5.10 / 5.28 / 5.11", "memory, pids and CPU limits in effect", "limits_set",
            {"memory": True, "pids": True, "cpus": True}),
    Control("CIS 5.12", "read-only root file system", "read_only_rootfs"),
)  # fmt: skip

PROFILES: dict[str, tuple[Control, ...]] = {"baseline": BASELINE, "restricted": RESTRICTED}


def controls_markdown() -> str:
    """The control-by-control table of README.md."""
    rows = ["| profile | control | requirement | observed check |", "|---|---|---|---|"]
    seen: set[str] = set()
    for name, controls in PROFILES.items():
        for c in controls:
            if c.id in seen:
                continue
            seen.add(c.id)
            check = f"`{c.family}`" if c.family else "does not apply"
            if c.family and c.value is not True:
                check += (
                    f" `{c.value}`"
                    if not isinstance(c.value, dict) or len(str(c.value)) < 60
                    else ""
                )
            if c.note:
                check += f" ({c.note})"
            rows.append(f"| {name} | {c.id} | {c.title} | {check} |")
    return "\n".join(rows)
