"""Exposure score: 0.0 (fully confined) to 10.0 (host-equivalent), from observed Facts.

In the spirit of ``systemd-analyze security``: every observed exposure has a weight; the
score is the weighted share of exposure, scaled to 10. Three observations are
host-equivalent on their own and score 10.0: a writable engine API socket, the host's root
file system mounted writable, and privileged mode without a user namespace. Privileged
mode inside a user namespace still lands in the top band (at least 9.0). The bands are
systemd's: SAFE < 1.0 <= OK < 5.0 <= MEDIUM < 7.5 <= EXPOSED < 9.0 <= UNSAFE.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Facts, map_id
from .check_params import ExposureLimit
from .check_registry import check
from .checks import privileged_caps, sensitive_mounts
from .verdict import Violation

# capability -> weight when effective (half when only in the bounding set: a setuid or
# file-capability binary could still raise it, unless no_new_privs is set).
CAP_WEIGHTS: dict[str, float] = {
    "CAP_SYS_ADMIN": 10, "CAP_SYS_MODULE": 8, "CAP_SYS_RAWIO": 8, "CAP_SYS_PTRACE": 6,
    "CAP_DAC_READ_SEARCH": 6, "CAP_BPF": 5, "CAP_NET_ADMIN": 5, "CAP_SYS_BOOT": 4,
    "CAP_MAC_ADMIN": 4, "CAP_MAC_OVERRIDE": 4, "CAP_PERFMON": 3, "CAP_SYS_TIME": 3,
    "CAP_DAC_OVERRIDE": 3, "CAP_SETUID": 2, "CAP_SETGID": 2, "CAP_SETFCAP": 2,
    "CAP_FOWNER": 2, "CAP_NET_RAW": 2, "CAP_SYSLOG": 2, "CAP_SYS_CHROOT": 1,
    "CAP_MKNOD": 1, "CAP_CHOWN": 1, "CAP_SETPCAP": 1, "CAP_AUDIT_CONTROL": 1,
    "CAP_LINUX_IMMUTABLE": 1, "CAP_SYS_NICE": 1, "CAP_SYS_RESOURCE": 1,
}  # fmt: skip
OTHER_CAP_WEIGHT = 0.5

# (item, weight, what it means). Each item's exposure is 0..1, computed in `items()`.
WEIGHTS: tuple[tuple[str, float, str], ...] = (
    ("root_is_host_root", 20, "container uid 0 is host uid 0 (1.0 when the process runs as "
     "root, 0.5 as another user)"),
    ("capabilities", 15, "weighted share of capabilities (table above); halved in a user "
     "namespace"),
    ("seccomp_off", 10, "no seccomp filter"),
    ("no_new_privs_off", 2, "setuid binaries can raise privileges"),
    ("lsm_unconfined", 2, "no AppArmor/SELinux label confines the process"),
    ("rootfs_writable", 1, "the root file system is writable"),
    ("memory_unlimited", 1.5, "no memory limit in effect"),
    ("pids_unlimited", 1.5, "no pids limit in effect (fork bombs)"),
    ("cpu_unlimited", 0.5, "no CPU limit in effect"),
    ("host_network", 3, "shares the host's network namespace"),
    ("host_pid", 4, "shares the host's pid namespace"),
    ("host_ipc", 2, "shares the host's IPC namespace"),
    ("host_uts", 0.5, "shares the host's UTS namespace"),
    ("sensitive_mounts", 6, "a sensitive host folder is mounted (read-only counts half)"),
    ("proc_sys_writable", 5, "/proc/sys or /proc/sysrq-trigger is writable"),
    ("sysfs_writable", 5, "/sys is writable"),
    ("host_devices", 8, "/dev/mem or /dev/kmsg is readable"),
    ("mount_allowed", 6, "mount(2) succeeds"),
    ("module_load_allowed", 8, "the kernel accepts module loading from it"),
    ("mknod_allowed", 1, "device nodes can be created"),
    ("userns_allowed", 1, "new user namespaces can be created (kernel attack surface)"),
)  # fmt: skip
BANDS: tuple[tuple[float, str], ...] = (
    (9.0, "UNSAFE"), (7.5, "EXPOSED"), (5.0, "MEDIUM"), (1.0, "OK"), (0.0, "SAFE"),
)  # fmt: skip


@dataclass(frozen=True)
class Score:
    """An exposure score (0.0..10.0, one decimal), its band, and the exposures that made it."""

    value: float
    band: str
    items: dict[str, float]  # item -> exposure 0..1 (only the non-zero ones)
    reason: str = ""  # set when a host-equivalent finding decided the score

    def __str__(self) -> str:
        return f"{self.value:.1f} {self.band}"


def band(value: float) -> str:
    """The band of a score (``SAFE``, ``OK``, ``MEDIUM``, ``EXPOSED``, ``UNSAFE``; see BANDS)."""
    return next(name for limit, name in BANDS if value >= limit)


def _allowed(f: Facts, key: str, operation: bool = False) -> bool:
    """Whether the attempt succeeded; a container that modified its probe gave no
    trustworthy answer, so every attempt counts as allowed (exposed)."""
    if f.probe_modified is not None:
        return True
    r = (f.operations if operation else f.access).get(key)
    return r is not None and r.allowed


def items(f: Facts) -> dict[str, float]:
    """Exposure 0..1 of every weighted item."""
    host_root = map_id(f.uid_map, 0) == 0
    userns_factor = 1.0 if host_root else 0.5
    eff, bnd = set(f.capabilities.effective), set(f.capabilities.bounding)
    total_caps = sum(CAP_WEIGHTS.values())
    cap_exposure = 0.0
    for cap in eff | bnd:
        w = CAP_WEIGHTS.get(cap, OTHER_CAP_WEIGHT)
        cap_exposure += w if cap in eff else w * (0.25 if f.no_new_privs else 0.5)
    ns = f.namespaces
    sens = [s for s in sensitive_mounts(f) if not s.startswith(("host root", "engine API"))]
    found = {
        "root_is_host_root": (1.0 if f.user.host_uid == 0 else 0.5) if host_root else 0.0,
        "capabilities": min(1.0, cap_exposure / total_caps) * userns_factor,
        "seccomp_off": 1.0 if f.seccomp == "disabled" else 0.0,
        "no_new_privs_off": 0.0 if f.no_new_privs else 1.0,
        "lsm_unconfined": 1.0 if f.lsm.label in (None, "unconfined") else 0.0,
        "rootfs_writable": 0.0 if f.rootfs_read_only else 1.0,
        "memory_unlimited": 1.0 if f.cgroup.memory_max is None else 0.0,
        "pids_unlimited": 1.0 if f.cgroup.pids_max is None else 0.0,
        "cpu_unlimited": 1.0 if f.cgroup.cpu_max is None else 0.0,
        "host_network": 1.0 if ns.get("net") == "host" else 0.0,
        "host_pid": 1.0 if ns.get("pid") == "host" else 0.0,
        "host_ipc": 1.0 if ns.get("ipc") == "host" else 0.0,
        "host_uts": 1.0 if ns.get("uts") == "host" else 0.0,
        "sensitive_mounts": (0.5 if all(s.endswith("(ro)") for s in sens) else 1.0)
        if sens
        else 0.0,
        "proc_sys_writable": 1.0
        if _allowed(f, "/proc/sys/kernel/core_pattern:w") or _allowed(f, "/proc/sysrq-trigger:w")
        else 0.0,
        "sysfs_writable": 1.0 if _allowed(f, "write_sysfs", True) else 0.0,
        "host_devices": 1.0 if _allowed(f, "/dev/mem:r") or _allowed(f, "/dev/kmsg:r") else 0.0,
        "mount_allowed": 1.0 if _allowed(f, "mount_tmpfs", True) else 0.0,
        "module_load_allowed": 1.0 if _allowed(f, "load_module", True) else 0.0,
        "mknod_allowed": 1.0 if _allowed(f, "mknod_device", True) else 0.0,
        "userns_allowed": 1.0 if _allowed(f, "unshare_user", True) else 0.0,
    }
    return found


def score(f: Facts) -> Score:
    """The exposure score of ``f``: 10.0 with a ``reason`` for a host-equivalent finding, at
    least 9.0 for privileged mode inside a user namespace, else the weighted share of
    ``items(f)``."""
    exposures = items(f)
    nonzero = {k: round(v, 3) for k, v in exposures.items() if v}
    host_root = map_id(f.uid_map, 0) == 0
    writable_root = any(m.host_path == "/" and not m.read_only for m in f.mounts)
    if f.engine_sockets:
        return Score(10.0, band(10.0), nonzero, "an engine API socket is reachable")
    if writable_root:
        return Score(10.0, band(10.0), nonzero, "the host's root file system is mounted writable")
    privileged = privileged_caps(f) is not None and f.seccomp == "disabled"
    if privileged and host_root:
        return Score(10.0, band(10.0), nonzero, "privileged mode without a user namespace")
    weight = {name: w for name, w, _ in WEIGHTS}
    total = sum(weight.values())
    value = 10.0 * sum(weight[k] * v for k, v in exposures.items()) / total
    value = round(min(10.0, value), 1)
    reason = ""
    if privileged:
        value, reason = max(value, 9.0), "privileged mode (inside a user namespace)"
    return Score(value, band(value), nonzero, reason)


def weight_table_markdown() -> str:
    """The weight table as Markdown (README.md embeds this)."""
    rows = ["| item | weight | exposure when |", "|---|---|---|"]
    rows += [f"| `{n}` | {w:g} | {d} |" for n, w, d in WEIGHTS]
    return "\n".join(rows)


@check("The exposure score must stay under the limit", legacy=("exposure",))
def max_exposure(f: Facts, limit: ExposureLimit) -> list[Violation]:
    """The container's exposure score (0.0 fully confined .. 10.0 host-equivalent, from
    observed Facts only) is at most ``limit``."""
    s = score(f)
    if s.value <= float(limit):
        return []
    why = f" ({s.reason})" if s.reason else ""
    return [Violation("max_exposure", f.runtime, f"exposure <= {float(limit):.1f}", f"{s}{why}")]
