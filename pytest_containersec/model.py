"""Facts: the public, frozen, JSON-able data model of what is in effect in a container."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict, TypeVar, cast, get_args

MapEntry = tuple[int, int, int]  # inside, outside (host), count

# /proc/<pid>/status's Seccomp: 0, 1, 2 (SECCOMP_MODE_DISABLED, _STRICT, _FILTER).
SeccompMode = Literal["disabled", "strict", "filter"]
SECCOMP_MODES: tuple[SeccompMode, ...] = get_args(SeccompMode)
# Where a Mismatch comes from: "declared" (the engine's config vs the host's view),
# "spec" (what the spec asked for vs the host's view, where the engine did not even
# declare it), "inside" (the probe's own view vs the host's), "probe" (the probe folder
# was modified), "systemd-analyze" (a unit's per-setting verdict vs the observation).
MismatchSource = Literal["declared", "spec", "inside", "probe", "systemd-analyze"]
MISMATCH_SOURCES: tuple[MismatchSource, ...] = get_args(MismatchSource)
# A declared seccomp profile: the engine's default, none, or one of the user's own.
DeclaredSeccomp = Literal["default", "unconfined", "custom"]
# The mismatch (source "probe") of a container that modified its own probe folder.
PROBE_MISMATCH_FIELD = "probe"
# Facts.sources values: the host's /proc of the workload itself (the default); the
# probe's own view inside a sandbox whose kernel is emulated (gVisor's Sentry answers
# /proc inside); the host's view of the sandbox as a whole (its Sentry process and
# cgroup); the engine's declaration matched with what is seen inside.
SOURCE_HOST = "host"
SOURCE_INSIDE_GVISOR = "inside(gvisor)"
SOURCE_HOST_SANDBOX = "host(sandbox)"
SOURCE_DECLARED_INSIDE = "declared+inside"


@dataclass(frozen=True)
class User:
    """The process's uid, gid and supplementary groups, inside the container and on the host."""

    uid: int  # as the container sees it
    gid: int
    host_uid: int  # as the host sees it (after the user-namespace map)
    host_gid: int
    groups: tuple[int, ...] = ()  # supplementary groups, as the container sees them


@dataclass(frozen=True)
class Capabilities:
    """The five capability sets of a process, as capability names (``CAP_SYS_ADMIN``, ...)."""

    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    bounding: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lsm:
    """The host's labelling security module and the process's label under it (None: none)."""

    name: str | None  # "apparmor", "selinux", "smack" or None when none is active
    label: str | None


@dataclass(frozen=True)
class Cgroup:
    """The container's cgroup and its memory, pids and CPU limits as read from the cgroup files."""

    version: int  # 1 or 2
    path: str  # the container's cgroup path (of the memory controller on v1)
    memory_max: int | None  # bytes; None = unlimited
    pids_max: int | None  # None = unlimited
    cpu_max: float | None  # cores; None = unlimited


@dataclass(frozen=True)
class Mount:
    """One mount of the container's mount namespace (from the host's /proc/<pid>/mountinfo)."""

    mountpoint: str
    fstype: str
    source: str
    root: str  # the path inside the source file system that is mounted here
    read_only: bool
    options: tuple[str, ...] = ()
    # The host path this mount shows, when its file system is also mounted on the host
    # (a bind mount of a host directory, file or socket); None for the container's own.
    host_path: str | None = None


@dataclass(frozen=True)
class AccessResult:
    """Whether an access or operation attempted by the probe succeeded, with the errno name when
    it failed."""

    allowed: bool
    errno: str | None = None  # "EACCES", "EPERM", "EROFS", "ENOSYS", ... when denied


@dataclass(frozen=True)
class MaskedPath:
    """How a kernel path the engines mask (or make read-only) is seen inside."""

    state: str  # "masked" | "readonly" | "exposed" | "absent" (the host kernel lacks it)
    how: str  # the mechanism: "dev-null", "tmpfs", "inaccessible", "read-only-bind", ...
    mount: str | None = None  # mount point of the mount that decides it
    source: str | None = None  # that mount's "fstype:root", e.g. "tmpfs:/null"
    errno: str | None = None  # the probe's open() from inside, when it failed


@dataclass(frozen=True)
class Mismatch:
    """A difference between two sources for one field; ``source`` says which two were compared."""

    field: str
    expected: Any  # declared by the engine, or seen from the host
    observed: Any  # observed from the host, or claimed from inside
    source: MismatchSource  # see MismatchSource


class AnalyzeSetting(TypedDict):
    """One setting of ``systemd-analyze security --json=short`` and systemd's verdict."""

    name: str  # "PrivateNetwork=", "CapabilityBoundingSet=~CAP_SYS_ADMIN", ...
    json_field: str
    set: bool  # systemd's verdict: True = protected
    exposure: float | None
    description: str


class SystemdAnalyze(TypedDict):
    """``systemd-analyze security`` of a unit: its overall exposure and each setting."""

    exposure: float | None  # 0.0 (safe) .. 10.0 (exposed); None when not printed
    level: str | None  # "OK", "MEDIUM", "EXPOSED", "UNSAFE", ...
    settings: list[AnalyzeSetting]


class Declared(TypedDict, total=False):
    """What an engine says it configured (``Container.declared()``; ``Facts.declared``).

    The normalized keys (first block) mean the same on every runtime; the collector
    compares them with what is observed (``observe.facts.declared_mismatches``) and
    ``observe.facts.requested`` gives a spec in the same shape. A runtime leaves out what
    it has no notion of. The other keys are engine-specific, shown as they are. Facts
    read from JSON keep keys not listed here."""

    # -- normalized: the same meaning on every runtime ----------------------------------
    engine: str  # "docker", "podman", "podman kube play", "nspawn", "lxc", "containerd",
    # "systemd" (systemd-run), "systemd-portabled"
    user: str | None  # USER, UID or UID:GID as configured; None: the image's (or root)
    cap_add: list[str]  # CAP_* names as the engine spells them ("ALL" in a spec)
    cap_drop: list[str]
    privileged: bool
    seccomp: DeclaredSeccomp
    no_new_privileges: bool
    read_only: bool  # the root file system
    memory: int | None  # bytes; None = no limit
    cpus: float | None  # a number of cores (1.5 = 150% of one CPU); None = no limit
    pids_limit: int | None  # None = no limit
    # Namespaces: "host" = the host's; "private"/"shareable" (Docker's ipc) = its own
    pid_mode: str | None
    ipc_mode: str | None
    uts_mode: str | None
    # "host" (systemd, nspawn, lxc, containerd) or None (docker, podman): no user
    # namespace of its own; "auto", "remap", "0:OUTSIDE:COUNT[,...]", ...: mapped
    userns_mode: str | None
    network_mode: str | None  # "none", "host", or the engine's network ("bridge", ...)
    group_add: list[str]  # supplementary groups: names or gids, as text
    tmpfs: list[str]  # mount points of tmpfs mounts
    binds: list[str]  # "SRC:DST" or "SRC:DST:ro" (the probe's own bind left out)
    capabilities: list[str]  # the bounding set it grants (runtimes that state one)
    apparmor_profile: str | None
    # -- docker and podman ------------------------------------------------------------
    devices: list[str]  # "HOST:CONTAINER:PERMISSIONS"
    ulimits: dict[str, str]  # name -> "SOFT:HARD"
    sysctls: dict[str, str]
    unmask: bool  # no masked or read-only kernel paths
    daemon_security_options: list[str]  # docker info's SecurityOptions
    oci_runtime: str | None  # runc, crun, runsc, ...
    rootless: bool  # podman: the engine runs rootless
    # -- systemd-nspawn and systemd units ----------------------------------------------
    argv: list[str]  # the systemd-nspawn / systemd-run command line
    cgroup_dirs: list[str]  # nspawn: the cgroup directories made for it
    unit: str  # systemd-run, portable: the unit's name
    dynamic_user: bool
    properties: dict[str, str]  # systemctl show: the unit's security properties
    systemd_analyze: SystemdAnalyze | None  # None when systemd-analyze gave nothing
    manager: str  # "host" or "booted" (the systemd booted in nspawn)
    # -- portable services ----------------------------------------------------------------
    portable_profile: str  # default, strict, nonetwork, trusted
    image: str  # the attached image's path (as the manager sees it)
    dropin: list[str]  # the drop-in's settings, "Key=value"
    # Facts fields the profile decides when the spec left them at their defaults ("spec"
    # mismatches are not reported for them): "rootfs_read_only", "seccomp"
    profile_decides: list[str]
    # -- lxc ----------------------------------------------------------------------------
    config: list[str]  # the container's config lines
    seccomp_profile: str | None  # lxc.seccomp.profile
    # -- containerd ---------------------------------------------------------------------
    runtime: str | None  # the runtime (shim) containerd stored, e.g. io.containerd.runc.v2
    masked_paths: list[str]  # the OCI spec's linux.maskedPaths
    cgroups_path: str | None  # the OCI spec's linux.cgroupsPath


@dataclass(frozen=True)
class ProcessRecord:
    """One process of the container, read from the host's /proc/<pid>/status."""

    pid: int  # as the container sees it (the last NSpid)
    host_pid: int
    comm: str
    cmdline: tuple[str, ...]
    user: User
    capabilities: Capabilities
    seccomp: SeccompMode
    no_new_privs: bool
    main: bool = False  # the container's main process


@dataclass(frozen=True)
class RLimit:
    """One resource limit of the process (/proc/<pid>/limits), soft and hard."""

    soft: int | None  # None = unlimited
    hard: int | None


@dataclass(frozen=True)
class SetuidFile:
    """A setuid or setgid file of the container's file systems (read from the host)."""

    path: str
    mode: int  # st_mode & 0o7777
    uid: int  # owner as the container sees it (65534 when unmapped)
    gid: int
    setuid: bool
    setgid: bool
    nosuid: bool = False  # on a nosuid mount: the bits do nothing


@dataclass(frozen=True)
class FileCapability:
    """A file with a ``security.capability`` xattr (file capabilities)."""

    path: str
    permitted: tuple[str, ...]
    inheritable: tuple[str, ...]
    effective: bool  # the effective bit: permitted caps become effective at exec
    version: int  # VFS caps revision 1, 2 or 3 (0: a value that does not parse)
    rootid: int | None = None  # v3: the host uid whose namespace root the caps are for
    nosuid: bool = False  # on a nosuid mount: the kernel ignores file capabilities there


@dataclass(frozen=True)
class SurfaceScan:
    """How the container's file systems were walked for setuid files and capabilities."""

    entries: int  # directory entries looked at
    complete: bool  # False: a limit (entries, depth, time) stopped the walk
    skipped: tuple[str, ...] = ()  # mount points not walked (proc, sysfs, the probe, ...)
    reason: str = ""  # why the walk is incomplete


@dataclass(frozen=True)
class ProbeIdentity:
    """Whose identity the probe's access and operation attempts were made with."""

    pid: int  # the process the verdicts are for, as the container sees it
    host_pid: int
    comm: str
    # "exec": the engine's exec already had its credentials; "setpriv": the probe took
    # them with setpriv; "none": they could not be (see ``unreproduced``)
    method: str
    setpriv: tuple[str, ...] = ()  # the setpriv options used
    unreproduced: tuple[str, ...] = ()  # each part that could not be reproduced, and why


@dataclass(frozen=True, repr=False)
class Facts:
    """What was observed to be in effect for one container: its main process's identity,
    capabilities, seccomp, LSM, cgroup, mounts and namespaces, the probe's access and operation
    results, and every mismatch with what was declared. Frozen; round-trips through
    ``to_json()`` and ``from_json()``."""

    runtime: str
    engine_rootless: bool
    host_pid: int
    user: User
    uid_map: tuple[MapEntry, ...]
    gid_map: tuple[MapEntry, ...]
    capabilities: Capabilities
    seccomp: SeccompMode
    no_new_privs: bool
    lsm: Lsm
    cgroup: Cgroup
    rootfs_read_only: bool
    mounts: tuple[Mount, ...]
    access: dict[str, AccessResult] = field(default_factory=dict)
    operations: dict[str, AccessResult] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)  # ns -> "private" | "host"
    engine_sockets: tuple[str, ...] = ()
    host_root_mounts: tuple[str, ...] = ()
    declared: Declared = field(default_factory=Declared)
    mismatches: tuple[Mismatch, ...] = ()
    # The observer's own bounding set: the most any engine on this host could grant.
    host_capabilities: tuple[str, ...] = ()
    # The engines' masked and read-only kernel paths (masking.STANDARD_PATHS) -> state.
    masked: dict[str, MaskedPath] = field(default_factory=dict)
    # Which side each field was read from, where it is not the host's /proc/<pid> of the
    # workload (every field of every runtime but a sandboxed one): e.g. gVisor's
    # ``{"user": "inside(gvisor)", "cgroup": "host(sandbox)", ...}`` (see SOURCE_*).
    sources: dict[str, str] = field(default_factory=dict)
    # Every process of the container, and whose identity the probe took.
    processes: tuple[ProcessRecord, ...] = ()
    identity: ProbeIdentity | None = None
    # The process's resource limits (/proc/<pid>/limits: "nofile", "nproc", ...).
    rlimits: dict[str, RLimit] = field(default_factory=dict)
    oom_score_adj: int | None = None
    # The escalation surface of the container's file systems (None: not scanned).
    setuid_files: tuple[SetuidFile, ...] | None = None
    file_capabilities: tuple[FileCapability, ...] | None = None
    surface_scan: SurfaceScan | None = None
    # The image config's USER ("" when it sets none; None when the runtime has no image config).
    image_user: str | None = None

    def __repr__(self) -> str:
        """``<Facts docker host_pid=1234>``: an assertion's explanation then shows the field
        it read, not the whole snapshot (``to_json()`` has every field)."""
        return f"<Facts {self.runtime} host_pid={self.host_pid}>"

    # -- derived views ---------------------------------------------------------------

    @property
    def probe_modified(self) -> str | None:
        """What the container changed in its probe folder, or None: then no access or
        operation result exists and none may be trusted."""
        for m in self.mismatches:
            if m.source == "probe":
                return str(m.observed)
        return None

    def source_of(self, name: str) -> str:
        """Where field ``name`` (``"user"``, ``"cgroup"``, ...) was read: ``"host"`` (the
        host's /proc and cgroup files of the workload itself) unless ``sources`` says
        otherwise."""
        return self.sources.get(name.split(".", 1)[0], SOURCE_HOST)

    def host_uid_of(self, inside: int) -> int | None:
        """The host uid that container uid ``inside`` is, or None if unmapped."""
        return map_id(self.uid_map, inside)

    # -- JSON --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON's shape: tuples become lists, nested dataclasses become dicts."""
        d = asdict(self)
        d["uid_map"] = [list(m) for m in self.uid_map]
        d["user"]["groups"] = list(self.user.groups)
        d["gid_map"] = [list(m) for m in self.gid_map]
        for name in (
            "mounts",
            "engine_sockets",
            "host_root_mounts",
            "mismatches",
            "host_capabilities",
        ):
            d[name] = list(d[name])
        for m in d["mounts"]:
            m["options"] = list(m["options"])
        for k, v in d["capabilities"].items():
            d["capabilities"][k] = list(v)
        for name in ("processes", "identity", "setuid_files", "file_capabilities", "surface_scan"):
            d[name] = _lists(d[name])
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """The facts as JSON with sorted keys; a value JSON cannot hold (in ``declared``) is
        written as its ``str()``."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Facts:
        """The inverse of ``to_dict()``; keys added after the first release may be absent (older
        reports) and take their defaults."""
        return cls(
            runtime=d["runtime"],
            engine_rootless=bool(d["engine_rootless"]),
            host_pid=int(d["host_pid"]),
            user=User(**{**d["user"], "groups": tuple(d["user"].get("groups", ()))}),
            uid_map=tuple((int(a), int(b), int(c)) for a, b, c in d["uid_map"]),
            gid_map=tuple((int(a), int(b), int(c)) for a, b, c in d["gid_map"]),
            capabilities=Capabilities(**{k: tuple(v) for k, v in d["capabilities"].items()}),
            seccomp=one_of(d["seccomp"], SECCOMP_MODES, "seccomp"),
            no_new_privs=bool(d["no_new_privs"]),
            lsm=Lsm(**d["lsm"]),
            cgroup=Cgroup(**d["cgroup"]),
            rootfs_read_only=bool(d["rootfs_read_only"]),
            mounts=tuple(Mount(**{**m, "options": tuple(m["options"])}) for m in d["mounts"]),
            access={k: AccessResult(**v) for k, v in d.get("access", {}).items()},
            operations={k: AccessResult(**v) for k, v in d.get("operations", {}).items()},
            namespaces=dict(d.get("namespaces", {})),
            engine_sockets=tuple(d.get("engine_sockets", ())),
            host_root_mounts=tuple(d.get("host_root_mounts", ())),
            # every key kept as written (JSON of other versions may carry keys Declared
            # does not list); the values are shown, not compared again
            declared=cast(Declared, dict(d.get("declared", {}))),
            mismatches=tuple(_mismatch(m) for m in d.get("mismatches", ())),
            host_capabilities=tuple(d.get("host_capabilities", ())),
            masked={k: MaskedPath(**v) for k, v in d.get("masked", {}).items()},
            sources={str(k): str(v) for k, v in d.get("sources", {}).items()},
            processes=tuple(_process(p) for p in d.get("processes", ())),
            identity=_identity(d.get("identity")),
            rlimits={k: RLimit(**v) for k, v in (d.get("rlimits") or {}).items()},
            oom_score_adj=d.get("oom_score_adj"),
            setuid_files=None
            if d.get("setuid_files") is None
            else tuple(SetuidFile(**x) for x in d["setuid_files"]),
            file_capabilities=None
            if d.get("file_capabilities") is None
            else tuple(
                FileCapability(
                    **{
                        **x,
                        "permitted": tuple(x["permitted"]),
                        "inheritable": tuple(x["inheritable"]),
                    }
                )
                for x in d["file_capabilities"]
            ),
            surface_scan=None
            if d.get("surface_scan") is None
            else SurfaceScan(
                **{**d["surface_scan"], "skipped": tuple(d["surface_scan"]["skipped"])}
            ),
            image_user=d.get("image_user"),
        )

    @classmethod
    def from_json(cls, text: str) -> Facts:
        """The inverse of ``to_json()`` (see ``from_dict()``)."""
        return cls.from_dict(json.loads(text))


def _lists(x: Any) -> Any:
    """Tuples to lists, all the way down (JSON's shape)."""
    if isinstance(x, tuple | list):
        return [_lists(v) for v in x]
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    return x


_T = TypeVar("_T", bound=str)


def one_of(value: object, allowed: tuple[_T, ...], what: str) -> _T:
    """``value`` as a member of the closed set ``allowed`` (a Literal's values read from
    JSON or text); ValueError naming ``what`` and the allowed values otherwise."""
    for item in allowed:
        if value == item:
            return item
    raise ValueError(f"{what}: unknown value {value!r} (expected one of {', '.join(allowed)})")


def _mismatch(d: dict[str, Any]) -> Mismatch:
    return Mismatch(**{**d, "source": one_of(d.get("source"), MISMATCH_SOURCES, "mismatch source")})


def _process(d: dict[str, Any]) -> ProcessRecord:
    return ProcessRecord(
        **{
            **d,
            "cmdline": tuple(d["cmdline"]),
            "seccomp": one_of(d["seccomp"], SECCOMP_MODES, "processes[].seccomp"),
            "user": User(**{**d["user"], "groups": tuple(d["user"].get("groups", ()))}),
            "capabilities": Capabilities(**{k: tuple(v) for k, v in d["capabilities"].items()}),
        }
    )


def _identity(d: dict[str, Any] | None) -> ProbeIdentity | None:
    if d is None:
        return None
    return ProbeIdentity(
        **{
            **d,
            "setpriv": tuple(d.get("setpriv", ())),
            "unreproduced": tuple(d.get("unreproduced", ())),
        }
    )


def map_id(idmap: tuple[MapEntry, ...], inside: int) -> int | None:
    """Translate an id through a uid_map/gid_map (inside -> outside)."""
    for start, outside, count in idmap:
        if start <= inside < start + count:
            return outside + (inside - start)
    return None


def unmap_id(idmap: tuple[MapEntry, ...], outside: int) -> int | None:
    """Translate an id back (outside -> inside)."""
    for start, out, count in idmap:
        if out <= outside < out + count:
            return start + (outside - out)
    return None
