"""Masked and read-only kernel paths, as the engines mean it, decided from the host side.

runc and crun (Docker, Podman) hide kernel interfaces that are not namespaced: a *file*
gets ``/dev/null`` bind-mounted over it, a *directory* an empty read-only tmpfs
(``maskPath`` in runc's ``libcontainer/rootfs_linux.go``); a path that does not exist is
skipped. Their read-only paths are bind-mounted onto themselves and remounted read-only.
systemd-nspawn binds ``/run/systemd/inaccessible/reg`` (newer versions) or a deleted
temporary file over some files and makes ``/proc/sys`` and a few directories read-only.
Opening a masked ``/proc/kcore`` therefore *succeeds* (it is ``/dev/null``): a ``denied``
check cannot tell masking from exposure, this module can.

Each path of the standard lists gets one :class:`~.model.MaskedPath`, from
``/proc/<pid>/mountinfo`` (the mount that covers the path inside the container), the
host's own ``/proc`` and ``/sys`` (a path the host kernel lacks is ``absent``, never a
silent pass) and, for a path no mount decides, the probe's ``open()`` from inside (as the
workload's own user): a failure there means the workload cannot reach it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from ..model import AccessResult, MaskedPath
from .procfs import MountInfo

# The union of the engines' default masked paths: moby oci/defaults.go (asound, acpi,
# interrupts (Docker 25+), kcore, keys, latency_stats, timer_list, timer_stats,
# sched_debug, scsi, firmware, powercap) and containers-common pkg/config/default.go
# (Podman: the same plus /sys/dev/block and /sys/fs/selinux; asound read-only instead).
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/dev/block",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
    "/sys/fs/selinux",
)
# Read-only binds (the same in moby, containers-common and runc's spec example).
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
STANDARD_PATHS: tuple[str, ...] = MASKED_PATHS + READONLY_PATHS
# Where some engine's own notion of protecting the path is read-only (Podman makes
# /proc/asound read-only; everybody makes these five so): ``masked`` accepts read-only.
READONLY_SUFFICES: frozenset[str] = frozenset((*READONLY_PATHS, "/proc/asound"))

STATES = ("masked", "readonly", "exposed", "absent")
# how, by state:
#   masked:   dev-null (a bind of a null device), tmpfs (an empty tmpfs over a directory),
#             inaccessible (systemd's /run/systemd/inaccessible node), other-mount (another
#             file system's file or folder, e.g. nspawn's deleted temporary file),
#             no-kernel-fs (no procfs/sysfs is mounted where the path would be),
#             unreachable (no mount decides it and the probe's open() fails: errno kept)
#   readonly: read-only-bind (a read-only mount exactly at the path),
#             read-only-mount (the procfs/sysfs above it is read-only)
#   exposed:  writable-bind (a writable kernel-fs mount exactly at it), uncovered
#   absent:   host-absent (this host's kernel has no such path)
_NULL_FS = frozenset({"devtmpfs", "tmpfs"})


def kernel_fs(path: str) -> str:
    """The file system the kernel serves ``path`` from: ``proc`` or ``sysfs``."""
    return "proc" if path == "/proc" or path.startswith("/proc/") else "sysfs"


def _under(mountpoint: str, path: str) -> bool:
    return path == mountpoint or mountpoint == "/" or path.startswith(mountpoint + "/")


def covering(mountinfo: Iterable[MountInfo], path: str) -> MountInfo | None:
    """The mount whose contents a process sees at ``path``: the deepest visible mount at
    ``path`` or above it. A mount is hidden when another mount stacks on it at the same
    mount point, or when one of its parents is hidden; among mounts stacked on one mount
    point the one listed last wins."""
    mounts = list(mountinfo)
    by_id = {m.mount_id: m for m in mounts}
    over: dict[int, MountInfo] = {}  # mount id -> the mount stacked on it (the last listed)
    for m in mounts:
        parent = by_id.get(m.parent_id)
        if parent is not None and parent is not m and parent.mountpoint == m.mountpoint:
            over[parent.mount_id] = m

    def visible(m: MountInfo) -> bool:
        if m.mount_id in over:
            return False
        seen = {m.mount_id}
        cur = m
        while (parent := by_id.get(cur.parent_id)) is not None and parent.mount_id not in seen:
            if parent.mount_id in over and over[parent.mount_id] is not cur:
                return False  # a mount stacked on the parent hides the parent's children
            seen.add(parent.mount_id)
            cur = parent
        return True

    best: tuple[int, int] | None = None
    found: MountInfo | None = None
    for index, m in enumerate(mounts):
        if _under(m.mountpoint, path) and visible(m):
            key = (len(m.mountpoint.rstrip("/")), index)
            if best is None or key > best:
                best, found = key, m
    return found


def _read_only(m: MountInfo) -> bool:
    return "ro" in m.options or "ro" in m.super_options


def _source(m: MountInfo) -> str:
    return f"{m.fstype}:{m.root}"


def classify(mountinfo: Iterable[MountInfo], path: str, host_has: bool) -> MaskedPath:
    """The state of ``path`` from the container's mounts and whether the host has it
    (before any probe: see :func:`settle`)."""
    m = covering(mountinfo, path)
    if m is None:
        state = "masked" if host_has else "absent"
        return MaskedPath(state, "no-kernel-fs" if host_has else "host-absent")
    exact = m.mountpoint == path
    kfs = kernel_fs(path)
    if exact:
        base = m.root.rstrip("/").rsplit("/", 1)[-1]
        how = None
        if "/inaccessible/" in m.root + "/" and m.fstype != kfs:
            how = "inaccessible"
        elif base == "null" and m.fstype in _NULL_FS:
            how = "dev-null"
        elif m.fstype == "tmpfs" and m.root == "/":
            how = "tmpfs"
        elif m.fstype != kfs:
            how = "other-mount"
        if how is not None:
            return MaskedPath("masked", how, m.mountpoint, _source(m))
    if not host_has:
        return MaskedPath("absent", "host-absent", m.mountpoint, _source(m))
    if m.fstype != kfs:  # e.g. a tmpfs where /sys would be: the kernel's file is not here
        return MaskedPath("masked", "no-kernel-fs", m.mountpoint, _source(m))
    if exact:
        if _read_only(m):
            return MaskedPath("readonly", "read-only-bind", m.mountpoint, _source(m))
        return MaskedPath("exposed", "writable-bind", m.mountpoint, _source(m))
    if _read_only(m):
        return MaskedPath("readonly", "read-only-mount", m.mountpoint, _source(m))
    return MaskedPath("exposed", "uncovered", m.mountpoint, _source(m))


def host_has(path: str, root: str = "/") -> bool:
    """Whether this host's kernel has ``path`` (in the observer's own /proc and /sys)."""
    return os.path.lexists(os.path.join(root, path.lstrip("/")))


def assess(
    mountinfo: Iterable[MountInfo],
    exists: Callable[[str], bool] = host_has,
    paths: Iterable[str] = STANDARD_PATHS,
) -> dict[str, MaskedPath]:
    """Every standard path classified from the mounts and the host (no probe yet)."""
    mounts = tuple(mountinfo)
    return {p: classify(mounts, p, exists(p)) for p in paths}


def _needs_probe(m: MaskedPath) -> bool:
    return m.how in ("uncovered", "writable-bind", "read-only-mount")


def probe_keys(assessed: Mapping[str, MaskedPath]) -> tuple[str, ...]:
    """The access keys (``PATH:r``) the probe must try: paths that exist on the host and
    that no mount decides (an open from inside tells whether the workload reaches them)."""
    return tuple(f"{p}:r" for p, m in assessed.items() if _needs_probe(m))


def settle(
    assessed: Mapping[str, MaskedPath], access: Mapping[str, AccessResult]
) -> dict[str, MaskedPath]:
    """Fold in the probe's results: a path the workload cannot open is masked
    (``unreachable``, with the errno: ENOENT, EACCES from an LSM, EPERM, ...)."""
    out: dict[str, MaskedPath] = {}
    for p, m in assessed.items():
        r = access.get(f"{p}:r")
        if _needs_probe(m) and r is not None and not r.allowed:
            m = replace(m, state="masked", how="unreachable", errno=r.errno)
        out[p] = m
    return out


def describe(m: MaskedPath) -> str:
    """A short human text: ``masked (dev-null: tmpfs:/null at /proc/kcore)``."""
    where = ""
    if m.errno:
        where = f": open fails with {m.errno}"
    elif m.source and m.mount:
        where = f": {m.source} at {m.mount}"
    if m.how == "host-absent":
        return "absent on this kernel (the host has no such path)"
    return f"{m.state} ({m.how}{where})"
