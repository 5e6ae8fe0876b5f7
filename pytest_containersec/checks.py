"""Pure checks: (Facts, expectation) -> list of Violations. No I/O, never raise on a finding."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import caps
from .model import AccessResult, Facts, MapEntry, Mount, map_id
from .spec import parse_size

SECCOMP_MODES = ("disabled", "strict", "filter")
# Host paths whose exposure inside a container hands over the host (or its engine).
SENSITIVE_HOST_PATHS = (
    "/",
    "/etc",
    "/root",
    "/home",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containers",
    "/var/lib/kubelet",
    "/var/log",
    "/usr",
    "/lib",
    "/bin",
    "/sbin",
)
# Files an engine bind-mounts into every container from its own per-container folder.
ENGINE_MANAGED_MOUNTS = (
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run/.containerenv",
    "/dev/shm",
    "/run/secrets",
)
ENGINE_STATE_MARKERS = ("/containers/", "/docker/", "/libpod/", "/containersec/")
# Harmless host device nodes rootless engines bind in (they cannot mknod) or use to mask.
SAFE_HOST_DEVICES = frozenset(
    {
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/console",
    }
)
PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "mqueue", "devpts"})
# Privileged mode's signature in capabilities: what Docker/Podman never grant by default.
PRIVILEGED_CAPS = frozenset(
    {
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_PTRACE",
        "CAP_SYS_BOOT",
        "CAP_MAC_ADMIN",
        "CAP_NET_ADMIN",
        "CAP_DAC_READ_SEARCH",
    }
)
CGROUP_V1_ROOTLESS_HINT = (
    "rootless {runtime} on cgroup v1 ignores resource limits (the kernel does not "
    "delegate v1 controllers to unprivileged users); use cgroup v2 with systemd "
    "delegation, or a rootful engine"
)


@dataclass(frozen=True)
class Violation:
    check: str  # family: "capabilities", "seccomp", "cgroup", "access", ...
    runtime: str
    expected: str
    observed: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"[{self.runtime}] {self.check}: expected {self.expected}, observed {self.observed}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


def _caps_text(names: Iterable[str]) -> str:
    items = sorted(names)
    return "{" + ", ".join(items) + "}" if items else "{} (none)"


def _size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit} ({n} bytes)"
    return f"{n} bytes"


def fmt_map(entries: Iterable[MapEntry]) -> str:
    parts = [f"{a}-{a + c - 1}->{b}-{b + c - 1}" for a, b, c in entries]
    return "[" + ", ".join(parts) + "]" if parts else "[] (unreadable)"


# -- identity -------------------------------------------------------------------------


def root_unprivileged(f: Facts) -> list[Violation]:
    """Container uid 0 must not be host uid 0 (and the process must not run as host root)."""
    host_root = map_id(f.uid_map, 0)
    out = []
    if host_root == 0:
        out.append(
            Violation(
                "root_unprivileged",
                f.runtime,
                "container uid 0 mapped to an unprivileged host uid",
                f"uid_map {fmt_map(f.uid_map)}: container root IS host root",
                "no user namespace: use podman-rootless, docker-userns, userns='auto', "
                "or nspawn --private-users",
            )
        )
    elif f.user.host_uid == 0:
        out.append(
            Violation(
                "root_unprivileged",
                f.runtime,
                "the process not running as host uid 0",
                f"host uid {f.user.host_uid}",
            )
        )
    return out


def uid_map(f: Facts, expected: Iterable[MapEntry]) -> list[Violation]:
    want = tuple((int(a), int(b), int(c)) for a, b, c in expected)
    if f.uid_map == want:
        return []
    return [Violation("uid_map", f.runtime, fmt_map(want), fmt_map(f.uid_map))]


def user(f: Facts, uid: int | None = None, gid: int | None = None) -> list[Violation]:
    out = []
    if uid is not None and f.user.uid != uid:
        out.append(Violation("user", f.runtime, f"uid {uid}", f"uid {f.user.uid}"))
    if gid is not None and f.user.gid != gid:
        out.append(Violation("user", f.runtime, f"gid {gid}", f"gid {f.user.gid}"))
    return out


# -- access ---------------------------------------------------------------------------


def _access(f: Facts, path: str, mode: str) -> AccessResult | None:
    return f.access.get(f"{path}:{mode}")


def probe_differs(f: Facts) -> Violation | None:
    """Access and operation results are attempts made by the probe exec. They speak for
    the main process only when the probe ran with its identity and confinement; when the
    main process changed itself (an entrypoint that drops to another user, a setuid
    binary), they do not, and no access verdict is given."""
    diffs = [m for m in f.mismatches if m.source == "inside"]
    if not diffs:
        return None
    what = "; ".join(f"{m.field}: main process {m.expected!r}, probe {m.observed!r}" for m in diffs)
    return Violation(
        "access", f.runtime, "the probe to run as the main process does", what,
        "set the spec's user (and capabilities) to what the main process runs as",
    )  # fmt: skip


def denied(f: Facts, path: str, mode: str = "r", errno: str | None = None) -> list[Violation]:
    """The access must fail (ENOENT counts: the path is not reachable); with ``errno``,
    it must fail with exactly that errno."""
    r = _access(f, path, mode)
    what = f"{path}:{mode}"
    if r is None:
        return [Violation("access", f.runtime, f"{what} denied", "not probed")]
    differs = probe_differs(f)
    if differs:
        return [differs]
    if r.allowed:
        hint = ""
        if f.user.uid == 0 and "CAP_DAC_OVERRIDE" in f.capabilities.effective:
            hint = "the process is root with CAP_DAC_OVERRIDE: run as a non-root user or drop it"
        return [Violation("access", f.runtime, f"{what} denied", "allowed", hint)]
    if errno is not None and r.errno != errno:
        return [
            Violation("access", f.runtime, f"{what} denied with {errno}", f"denied with {r.errno}")
        ]
    return []


def allowed(f: Facts, path: str, mode: str = "r") -> list[Violation]:
    r = _access(f, path, mode)
    what = f"{path}:{mode}"
    if r is None:
        return [Violation("access", f.runtime, f"{what} allowed", "not probed")]
    differs = probe_differs(f)
    if differs:
        return [differs]
    if not r.allowed:
        return [Violation("access", f.runtime, f"{what} allowed", f"denied with {r.errno}")]
    return []


def operation_denied(f: Facts, name: str) -> list[Violation]:
    r = f.operations.get(name)
    if r is None:
        return [Violation("operation", f.runtime, f"{name} denied", "not probed")]
    differs = probe_differs(f)
    if differs:
        return [differs]
    if r.allowed:
        return [Violation("operation", f.runtime, f"{name} denied", "allowed")]
    return []


# -- capabilities, seccomp, no_new_privs, LSM --------------------------------------------


def capabilities(
    f: Facts,
    effective: Iterable[str] | None = None,
    at_most: Iterable[str] | None = None,
    absent: Iterable[str] | None = None,
) -> list[Violation]:
    """``effective``: exactly this effective set. ``at_most``: effective is a subset.
    ``absent``: in no set at all (effective, permitted, inheritable, ambient, bounding),
    so the process cannot regain them through a setuid or file-capability binary."""
    out = []
    eff = frozenset(f.capabilities.effective)
    if effective is not None:
        want = caps.normalize_set(effective)
        if eff != want:
            missing, extra = want - eff, eff - want
            out.append(
                Violation(
                    "capabilities",
                    f.runtime,
                    f"effective {_caps_text(want)}",
                    f"effective {_caps_text(eff)} (extra {_caps_text(extra)}, "
                    f"missing {_caps_text(missing)})",
                    _caps_hint(f, extra),
                )
            )
    if at_most is not None:
        limit = caps.normalize_set(at_most)
        extra = eff - limit
        if extra:
            out.append(
                Violation(
                    "capabilities",
                    f.runtime,
                    f"effective within {_caps_text(limit)}",
                    f"extra {_caps_text(extra)}",
                    _caps_hint(f, extra),
                )
            )
    if absent is not None:
        banned = caps.normalize_set(absent)
        sets = {
            "effective": f.capabilities.effective,
            "permitted": f.capabilities.permitted,
            "inheritable": f.capabilities.inheritable,
            "ambient": f.capabilities.ambient,
            "bounding": f.capabilities.bounding,
        }
        found = {name: sorted(banned & set(v)) for name, v in sets.items()}
        found = {k: v for k, v in found.items() if v}
        if found:
            where = "; ".join(f"{k} {_caps_text(v)}" for k, v in found.items())
            out.append(
                Violation(
                    "capabilities",
                    f.runtime,
                    f"absent {_caps_text(banned)}",
                    where,
                    "drop them (cap_drop) so they leave the bounding set too",
                )
            )
    return out


def _caps_hint(f: Facts, extra: Iterable[str]) -> str:
    if not extra:
        return ""
    if f.user.uid != 0 and f.capabilities.ambient:
        return "ambient capabilities give a non-root user effective caps"
    return "drop them with cap_drop=['ALL'] and add back only what is needed"


def seccomp(f: Facts, mode: str) -> list[Violation]:
    if mode not in SECCOMP_MODES:
        raise ValueError(f"seccomp mode must be one of {', '.join(SECCOMP_MODES)}")
    if f.seccomp == mode:
        return []
    hint = ""
    if f.seccomp == "disabled":
        hint = "seccomp is off: privileged mode or seccomp=unconfined"
    return [Violation("seccomp", f.runtime, mode, f.seccomp, hint)]


def no_new_privs(f: Facts, expected: bool = True) -> list[Violation]:
    if f.no_new_privs == expected:
        return []
    return [
        Violation(
            "no_new_privs",
            f.runtime,
            str(expected),
            str(f.no_new_privs),
            "set no_new_privileges=True (docker/podman --security-opt no-new-privileges)"
            if expected
            else "",
        )
    ]


def lsm(f: Facts, label: str | None = None, confined: bool = True) -> list[Violation]:
    out = []
    if label is not None and f.lsm.label != label:
        out.append(Violation("lsm", f.runtime, f"label {label!r}", f"label {f.lsm.label!r}"))
    if confined and (f.lsm.name is None or f.lsm.label is None or "unconfined" in f.lsm.label):
        out.append(
            Violation(
                "lsm",
                f.runtime,
                "an LSM confinement label",
                f"{f.lsm.name or 'no LSM active'}, label {f.lsm.label!r}",
                "no AppArmor/SELinux profile is in effect" if f.lsm.name is None else "",
            )
        )
    return out


# -- resources --------------------------------------------------------------------------


def cgroup(
    f: Facts,
    memory: str | int | None = None,
    pids: int | None = None,
    cpus: float | None = None,
) -> list[Violation]:
    """Each given limit must be in effect and no looser than asked (a stricter one passes)."""
    out = []
    hint = (
        CGROUP_V1_ROOTLESS_HINT.format(runtime=f.runtime)
        if (f.engine_rootless and f.cgroup.version == 1)
        else ""
    )
    if memory is not None:
        want = parse_size(memory)
        got = f.cgroup.memory_max
        if got is None or got > want:
            out.append(
                Violation(
                    "cgroup",
                    f.runtime,
                    f"memory limit <= {_size(want)}",
                    f"memory limit {_size(got)}",
                    hint,
                )
            )
    if pids is not None:
        got_p = f.cgroup.pids_max
        if got_p is None or got_p > pids:
            out.append(
                Violation(
                    "cgroup",
                    f.runtime,
                    f"pids limit <= {pids}",
                    f"pids limit {got_p or 'unlimited'}",
                    hint,
                )
            )
    if cpus is not None:
        got_c = f.cgroup.cpu_max
        if got_c is None or got_c > cpus + 1e-6:
            out.append(
                Violation(
                    "cgroup",
                    f.runtime,
                    f"cpu limit <= {cpus:g} cores",
                    f"cpu limit {'unlimited' if got_c is None else f'{got_c:g} cores'}",
                    hint,
                )
            )
    return out


# -- file system and attack surface -------------------------------------------------------


def read_only_rootfs(f: Facts) -> list[Violation]:
    if f.rootfs_read_only:
        return []
    return [
        Violation(
            "read_only_rootfs",
            f.runtime,
            "read-only root file system",
            "writable",
            "set read_only=True (--read-only)",
        )
    ]


def privileged_caps(f: Facts) -> str | None:
    """Why the bounding set looks like privileged mode's, or None."""
    bnd = set(f.capabilities.bounding)
    if f.host_capabilities and set(f.host_capabilities) <= bnd:
        return "the bounding set holds every capability the host has"
    if bnd >= PRIVILEGED_CAPS:
        return f"the bounding set holds {_caps_text(PRIVILEGED_CAPS)}"
    return None


def privileged_signs(f: Facts) -> list[str]:
    """What in the observed state is the signature of privileged mode."""
    caps_sign = privileged_caps(f)
    signs = [caps_sign] if caps_sign else []
    if f.seccomp == "disabled":
        signs.append("seccomp is disabled")
    for key, what in (("write_sysfs", "/sys is writable"),):
        r = f.operations.get(key)
        if r is not None and r.allowed:
            signs.append(what)
    for key in ("/proc/sys/kernel/core_pattern:w", "/proc/sysrq-trigger:w"):
        r = f.access.get(key)
        if r is not None and r.allowed:
            signs.append(f"{key.rsplit(':', 1)[0]} is writable")
    mem = f.access.get("/dev/mem:r")
    if mem is not None and mem.allowed:
        signs.append("/dev/mem is readable (host devices exposed)")
    return signs


def not_privileged(f: Facts) -> list[Violation]:
    """Fails on privileged mode's capabilities or writable kernel interfaces / host devices;
    a disabled seccomp filter alone is not privileged mode (check it with ``seccomp``)."""
    signs = privileged_signs(f)
    if not [s for s in signs if s != "seccomp is disabled"]:
        return []
    hint = "drop --privileged; grant single capabilities instead"
    if map_id(f.uid_map, 0) not in (0, None):
        hint += " (a user namespace limits it to the container's own namespace)"
    return [
        Violation("not_privileged", f.runtime, "no privileged-mode signs", "; ".join(signs), hint)
    ]


def _is_engine_managed(m: Mount) -> bool:
    hp = m.host_path or ""
    if m.mountpoint in ENGINE_MANAGED_MOUNTS and any(s in hp for s in ENGINE_STATE_MARKERS):
        return True
    # systemd-nspawn: the host's os-release and its propagation folder under /run/host,
    # and the host's time zone file as /etc/localtime
    if m.mountpoint.startswith("/run/host/") and (
        hp in ("/usr/lib/os-release", "/etc/os-release") or hp.startswith("/run/systemd/nspawn/")
    ):
        return True
    return m.mountpoint == "/etc/localtime" and hp.startswith("/usr/share/zoneinfo/")


def sensitive_mounts(f: Facts) -> list[str]:
    """Mounts that expose the host: its root, engine sockets, sensitive host folders."""
    found = [f"host root at {p}" for p in f.host_root_mounts]
    found += [f"engine API socket at {s}" for s in f.engine_sockets]
    for m in f.mounts:
        hp = m.host_path
        if hp is None or hp == "/" or _is_engine_managed(m) or m.mountpoint in f.engine_sockets:
            continue
        if hp in SAFE_HOST_DEVICES:
            continue
        if m.fstype in PSEUDO_FS or m.mountpoint == "/":  # kernel views; the own rootfs
            continue
        for s in SENSITIVE_HOST_PATHS:
            if s != "/" and (hp == s or hp.startswith(s + "/")):
                found.append(f"host {hp} at {m.mountpoint}{' (ro)' if m.read_only else ''}")
                break
    return found


def no_sensitive_mounts(f: Facts) -> list[Violation]:
    found = sensitive_mounts(f)
    if not found:
        return []
    return [
        Violation(
            "no_sensitive_mounts",
            f.runtime,
            "no host root, engine socket or sensitive host folder mounted",
            "; ".join(found),
            "whoever reaches an engine socket or the host root owns the host",
        )
    ]


def no_mismatches(f: Facts) -> list[Violation]:
    return [
        Violation(
            "mismatch", f.runtime, f"{m.field} = {m.expected!r} ({m.source})", f"{m.observed!r}"
        )
        for m in f.mismatches
    ]


def namespaces_private(
    f: Facts, names: Iterable[str] = ("net", "pid", "ipc", "uts")
) -> list[Violation]:
    """These namespaces are the container's own, not the host's."""
    shared = [n for n in names if f.namespaces.get(n) == "host"]
    unknown = [n for n in names if n not in f.namespaces]
    out = []
    if shared:
        out.append(
            Violation(
                "namespaces",
                f.runtime,
                f"private {', '.join(names)}",
                f"shares the host's {', '.join(shared)}",
            )
        )
    if unknown:
        out.append(
            Violation("namespaces", f.runtime, f"private {', '.join(unknown)}", "not observed")
        )
    return out


def non_root(f: Facts) -> list[Violation]:
    """The main process does not run as uid 0 (as the container sees it)."""
    if f.user.uid != 0:
        return []
    return [
        Violation("non_root", f.runtime, "a non-root uid", "uid 0", "set user (e.g. user='1000')")
    ]


def limits_set(
    f: Facts, memory: bool = False, pids: bool = False, cpus: bool = False
) -> list[Violation]:
    """Some limit is in effect for each resource asked (any value)."""
    hint = (
        CGROUP_V1_ROOTLESS_HINT.format(runtime=f.runtime)
        if (f.engine_rootless and f.cgroup.version == 1)
        else ""
    )
    out = []
    for wanted, name, value in (
        (memory, "memory", f.cgroup.memory_max),
        (pids, "pids", f.cgroup.pids_max),
        (cpus, "cpu", f.cgroup.cpu_max),
    ):
        if wanted and value is None:
            out.append(Violation("cgroup", f.runtime, f"a {name} limit", "unlimited", hint))
    return out


def lsm_not_unconfined(f: Facts) -> list[Violation]:
    """Where an LSM is active, the process is not running unconfined under it."""
    if f.lsm.name is not None and (f.lsm.label is None or "unconfined" in f.lsm.label):
        return [
            Violation("lsm", f.runtime, f"a confining {f.lsm.name} label", f"label {f.lsm.label!r}")
        ]
    return []
