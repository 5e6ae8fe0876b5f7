"""Pure checks: (Facts, expectation) -> list of Violations. No I/O, never raise on a finding."""

from __future__ import annotations

from collections.abc import Iterable

from ..linux import caps
from ..model import SECCOMP_MODES, AccessResult, Facts, map_id
from ..spec import parse_size
from .check_params import (
    AccessMode,
    AccessPath,
    CapNames,
    Errno,
    Operation,
    SeccompMode,
    Size,
    UidMap,
)
from .check_registry import check
from .surface import (
    ENGINE_MANAGED_MOUNTS,
    PRIVILEGED_CAPS,
    SAFE_HOST_DEVICES,
    SENSITIVE_HOST_PATHS,
    masked,
    namespaces_private,
    no_sensitive_mounts,
    not_privileged,
    privileged_caps,
    privileged_signs,
    readonly_path,
    sensitive_mounts,
)
from .verdict import Violation, caps_text, fmt_map
from .workload_checks import (
    exact_caps,
    groups,
    namespaces_host,
    no_file_capabilities,
    no_setuid_binaries,
    operation_allowed,
)

# Every check, including the attack-surface ones that live in surface.py.
__all__ = [
    "CGROUP_V1_ROOTLESS_HINT",
    "ENGINE_MANAGED_MOUNTS",
    "PRIVILEGED_CAPS",
    "SAFE_HOST_DEVICES",
    "SECCOMP_MODES",
    "SENSITIVE_HOST_PATHS",
    "Violation",
    "allowed",
    "capabilities",
    "caps_text",
    "cgroup",
    "denied",
    "fmt_map",
    "groups",
    "limits_set",
    "lsm",
    "lsm_not_unconfined",
    "masked",
    "namespaces_host",
    "namespaces_private",
    "no_file_capabilities",
    "no_mismatches",
    "no_new_privs",
    "no_sensitive_mounts",
    "no_setuid_binaries",
    "non_root",
    "not_privileged",
    "operation_allowed",
    "operation_denied",
    "privileged_caps",
    "privileged_signs",
    "probe_differs",
    "read_only_rootfs",
    "readonly_path",
    "root_unprivileged",
    "seccomp",
    "sensitive_mounts",
    "uid_map",
    "user",
]

CGROUP_V1_ROOTLESS_HINT = (
    "rootless {runtime} on cgroup v1 ignores resource limits (the kernel does not "
    "delegate v1 controllers to unprivileged users); use cgroup v2 with systemd "
    "delegation, or a rootful engine"
)


def _size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit} ({n} bytes)"
    return f"{n} bytes"


# -- identity -------------------------------------------------------------------------


@check("Container root must not be host root")
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


@check("The user-namespace map must be as expected")
def uid_map(f: Facts, expected: UidMap) -> list[Violation]:
    """The uid_map is exactly ``expected``: ``[(inside, outside, count), ...]``."""
    want = tuple((int(a), int(b), int(c)) for a, b, c in expected)
    if f.uid_map == want:
        return []
    return [Violation("uid_map", f.runtime, fmt_map(want), fmt_map(f.uid_map))]


@check("The process must run as the expected user")
def user(f: Facts, uid: int | None = None, gid: int | None = None) -> list[Violation]:
    """The main process runs as this uid and gid (as the container sees them)."""
    out = []
    if uid is not None and f.user.uid != uid:
        out.append(Violation("user", f.runtime, f"uid {uid}", f"uid {f.user.uid}"))
    if gid is not None and f.user.gid != gid:
        out.append(Violation("user", f.runtime, f"gid {gid}", f"gid {f.user.gid}"))
    return out


# -- access ---------------------------------------------------------------------------


def _access(f: Facts, path: str, mode: str) -> AccessResult | None:
    return f.access.get(f"{path}:{mode}")


def probe_differs(f: Facts, check: str = "access") -> Violation | None:
    """Access and operation results are attempts made by the probe exec. They speak for
    the main process only when the probe ran with its identity and confinement; when the
    main process changed itself (an entrypoint that drops to another user, a setuid
    binary), they do not, and no access verdict is given."""
    modified = f.probe_modified
    if modified is not None:
        return Violation(
            check, f.runtime, "an unmodified probe", f"the probe was modified from inside: "
            f"{modified}", "the container rewrote or covered its read-only /.containersec "
            "(root with CAP_SYS_ADMIN and no user namespace can); no access verdict is given",
        )  # fmt: skip
    diffs = [m for m in f.mismatches if m.source == "inside"]
    if not diffs:
        return None
    who = "main process"
    if f.identity is not None:
        who = f"process {f.identity.pid}" + (f" ({f.identity.comm})" if f.identity.comm else "")
    what = "; ".join(f"{m.field}: {who} {m.expected!r}, probe {m.observed!r}" for m in diffs)
    why = f.identity.unreproduced if f.identity is not None else ()
    hint = (
        "the probe could not take on this identity: " + "; ".join(why)
        if why
        else ("set the spec's user (and capabilities) to what the process runs as")
    )
    return Violation(
        check, f.runtime, f"the probe to run as the {who} does", what, hint
    )  # fmt: skip


@check("File access must be denied as expected", legacy=("access",), access=("path", "mode"))
def denied(
    f: Facts, path: AccessPath, mode: AccessMode = "r", errno: Errno | None = None
) -> list[Violation]:
    """Opening ``path`` for ``mode`` (r, w, x) fails as the workload's own identity (ENOENT
    counts: the path is not reachable); with ``errno`` (EACCES, EPERM, EROFS, ENOSYS, ...),
    it fails with exactly that errno."""
    differs = probe_differs(f, "denied")
    if differs:
        return [differs]
    r = _access(f, path, mode)
    what = f"{path}:{mode}"
    if r is None:
        return [Violation("denied", f.runtime, f"{what} denied", "not probed")]
    if r.allowed:
        hint = ""
        if f.user.uid == 0 and "CAP_DAC_OVERRIDE" in f.capabilities.effective:
            hint = "the process is root with CAP_DAC_OVERRIDE: run as a non-root user or drop it"
        return [Violation("denied", f.runtime, f"{what} denied", "allowed", hint)]
    if errno is not None and r.errno != errno:
        return [
            Violation("denied", f.runtime, f"{what} denied with {errno}", f"denied with {r.errno}")
        ]
    return []


@check("File access must be allowed as expected", legacy=("access",), access=("path", "mode"))
def allowed(f: Facts, path: AccessPath, mode: AccessMode = "r") -> list[Violation]:
    """Opening ``path`` for ``mode`` (r, w, x) succeeds as the workload's own identity."""
    differs = probe_differs(f, "allowed")
    if differs:
        return [differs]
    r = _access(f, path, mode)
    what = f"{path}:{mode}"
    if r is None:
        return [Violation("allowed", f.runtime, f"{what} allowed", "not probed")]
    if not r.allowed:
        return [Violation("allowed", f.runtime, f"{what} allowed", f"denied with {r.errno}")]
    return []


@check("Escape-surface operations must be denied", legacy=("operation", "access"))
def operation_denied(f: Facts, name: Operation) -> list[Violation]:
    """An escape-surface operation fails as the workload: mount_tmpfs, mknod_device,
    unshare_user, load_module or write_sysfs."""
    differs = probe_differs(f, "operation_denied")
    if differs:
        return [differs]
    r = f.operations.get(name)
    if r is None:
        return [Violation("operation_denied", f.runtime, f"{name} denied", "not probed")]
    if r.allowed:
        return [Violation("operation_denied", f.runtime, f"{name} denied", "allowed")]
    return []


# -- capabilities, seccomp, no_new_privs, LSM --------------------------------------------


@check("Capabilities must be limited as expected")
def capabilities(
    f: Facts,
    effective: CapNames | None = None,
    at_most: CapNames | None = None,
    absent: CapNames | None = None,
    bounding: CapNames | None = None,
    ambient: CapNames | None = None,
) -> list[Violation]:
    """``effective``: exactly this effective set. ``at_most``: effective is a subset.
    ``absent``: in no set at all (effective, permitted, inheritable, ambient, bounding),
    so the process cannot regain them through a setuid or file-capability binary.
    ``bounding``, ``ambient``: exactly this bounding / ambient set."""
    out = []
    if bounding is not None:
        out += exact_caps(f, "bounding", bounding)
    if ambient is not None:
        out += exact_caps(f, "ambient", ambient)
    eff = frozenset(f.capabilities.effective)
    if effective is not None:
        want = caps.normalize_set(effective)
        if eff != want:
            missing, extra = want - eff, eff - want
            out.append(
                Violation(
                    "capabilities",
                    f.runtime,
                    f"effective {caps_text(want)}",
                    f"effective {caps_text(eff)} (extra {caps_text(extra)}, "
                    f"missing {caps_text(missing)})",
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
                    f"effective within {caps_text(limit)}",
                    f"extra {caps_text(extra)}",
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
            where = "; ".join(f"{k} {caps_text(v)}" for k, v in found.items())
            out.append(
                Violation(
                    "capabilities",
                    f.runtime,
                    f"absent {caps_text(banned)}",
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


@check("A seccomp filter must be in effect")
def seccomp(f: Facts, mode: SeccompMode) -> list[Violation]:
    """The seccomp mode of the process is ``mode``: disabled, strict or filter."""
    if mode not in SECCOMP_MODES:
        raise ValueError(f"seccomp mode must be one of {', '.join(SECCOMP_MODES)}")
    if f.seccomp == mode:
        return []
    hint = ""
    if f.seccomp == "disabled":
        hint = "seccomp is off: privileged mode or seccomp=unconfined"
    return [Violation("seccomp", f.runtime, mode, f.seccomp, hint)]


@check("no_new_privs must be set")
def no_new_privs(f: Facts, expected: bool = True) -> list[Violation]:
    """no_new_privs is ``expected`` (set: setuid and file-capability binaries cannot raise
    privileges)."""
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


def label_unconfined(label: str | None) -> bool:
    """No label, an unconfined one (AppArmor's ``unconfined``, a profile in ``(unconfined)``
    mode such as ``runc (unconfined)``, SELinux's ``unconfined_t``), or an AppArmor profile
    in ``(complain)`` mode, which only logs what it would deny. An AppArmor stack
    (``P//&:NS:Q (enforce)``: Incus confines its containers with a host profile stacked with
    their own policy namespace's) is unconfined only when each of its profiles is."""
    if label is None or label.endswith(("(complain)", "(unconfined)")):
        return True
    if "//&" not in label:
        return "unconfined" in label
    text = label.rsplit(" (", 1)[0] if label.endswith(")") else label
    # a part ":NS:PROFILE" is PROFILE in the policy namespace NS
    parts = [p.split(":", 2)[2] if p.startswith(":") and p.count(":") >= 2 else p
             for p in text.split("//&")]  # fmt: skip
    return all(p == "unconfined" for p in parts)


@check("An LSM label must confine the process")
def lsm(f: Facts, label: str | None = None, confined: bool = True) -> list[Violation]:
    """An AppArmor/SELinux label confines the process (and equals ``label`` if given)."""
    out = []
    if label is not None and f.lsm.label != label:
        out.append(Violation("lsm", f.runtime, f"label {label!r}", f"label {f.lsm.label!r}"))
    if confined and (f.lsm.name is None or label_unconfined(f.lsm.label)):
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


def _limits_hint(f: Facts) -> str:
    """Why limits may be missing: rootless engines on cgroup v1 ignore them."""
    if f.engine_rootless and f.cgroup.version == 1:
        return CGROUP_V1_ROOTLESS_HINT.format(runtime=f.runtime)
    return ""


@check("Resource limits must be in effect")
def cgroup(
    f: Facts,
    memory: Size | None = None,
    pids: int | None = None,
    cpus: float | None = None,
) -> list[Violation]:
    """Each given limit is in effect (read from the host's cgroup files, parents included)
    and no looser than asked (a stricter one passes): memory as "64m" or bytes, pids, cpus
    in cores."""
    out = []
    hint = _limits_hint(f)
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


@check("The root file system must be read-only")
def read_only_rootfs(f: Facts) -> list[Violation]:
    """The container's root file system is mounted read-only."""
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


@check("What the engine declares must be what is in effect", legacy=("mismatch",))
def no_mismatches(f: Facts) -> list[Violation]:
    """What the engine declares equals what is observed, and the container's own view
    agrees with the host's (no declared, spec, inside or probe mismatch)."""
    return [
        Violation(
            "no_mismatches",
            f.runtime,
            f"{m.field} = {m.expected!r} ({m.source})",
            f"{m.observed!r}",
        )
        for m in f.mismatches
    ]


@check("The process must not run as root")
def non_root(f: Facts) -> list[Violation]:
    """The main process does not run as uid 0 (as the container sees it)."""
    if f.user.uid != 0:
        return []
    return [
        Violation("non_root", f.runtime, "a non-root uid", "uid 0", "set user (e.g. user='1000')")
    ]


@check("Memory, pids and CPU limits must be in effect", legacy=("cgroup",))
def limits_set(
    f: Facts, memory: bool = False, pids: bool = False, cpus: bool = False
) -> list[Violation]:
    """Some limit is in effect for each resource asked (any value)."""
    hint = _limits_hint(f)
    out = []
    for wanted, name, value in (
        (memory, "memory", f.cgroup.memory_max),
        (pids, "pids", f.cgroup.pids_max),
        (cpus, "cpu", f.cgroup.cpu_max),
    ):
        if wanted and value is None:
            out.append(Violation("limits_set", f.runtime, f"a {name} limit", "unlimited", hint))
    return out


@check("Where an LSM is active, the process must not be unconfined", legacy=("lsm",))
def lsm_not_unconfined(f: Facts) -> list[Violation]:
    """Where an LSM is active, the process is not running unconfined under it (see
    :func:`label_unconfined`)."""
    if f.lsm.name is not None and label_unconfined(f.lsm.label):
        return [
            Violation(
                "lsm_not_unconfined",
                f.runtime,
                f"a confining {f.lsm.name} label",
                f"label {f.lsm.label!r}",
            )
        ]
    return []
