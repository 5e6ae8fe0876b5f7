"""Facts: the public, frozen, JSON-able data model of what is in effect in a container."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MapEntry = tuple[int, int, int]  # inside, outside (host), count
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
    # "declared" (engine config vs host), "spec" (asked for vs host), "inside" (the probe's
    # own view vs host), "systemd-analyze", or "probe" (the probe folder was modified)
    source: str


@dataclass(frozen=True)
class ProcessRecord:
    """One process of the container, read from the host's /proc/<pid>/status."""

    pid: int  # as the container sees it (the last NSpid)
    host_pid: int
    comm: str
    cmdline: tuple[str, ...]
    user: User
    capabilities: Capabilities
    seccomp: str
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
    seccomp: str  # "disabled" | "strict" | "filter"
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
    declared: dict[str, Any] = field(default_factory=dict)
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
            seccomp=d["seccomp"],
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
            declared=dict(d.get("declared", {})),
            mismatches=tuple(Mismatch(**m) for m in d.get("mismatches", ())),
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


def _process(d: dict[str, Any]) -> ProcessRecord:
    return ProcessRecord(
        **{
            **d,
            "cmdline": tuple(d["cmdline"]),
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
