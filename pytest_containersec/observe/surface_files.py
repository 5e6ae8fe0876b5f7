"""The escalation surface of a container's file systems, read from the host.

Setuid/setgid files and files with capabilities (the ``security.capability`` xattr) are
found by walking ``/proc/<pid>/root`` from the host: nothing inside is executed, no
symlink is followed (every step is an ``openat(O_NOFOLLOW)`` relative to its parent), the
kernel's own file systems and the probe folder are not walked, and the walk is bounded
(entries, depth, time): an incomplete walk says so, and the checks give no pass on it.

``security.capability`` is parsed as the kernel stores it (``struct vfs_ns_cap_data``):
a little-endian ``magic_etc`` (revision in the top byte, bit 0 = effective), then
permitted/inheritable pairs (one for revision 1, two 32-bit halves for 2 and 3) and, for
revision 3, the ``rootid``: the host uid whose user namespace's root the capabilities are
for (read from the host, the kernel gives it in the host's ids).
"""

from __future__ import annotations

import os
import stat
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProbeParseError
from ..linux import caps, procfs
from ..model import FileCapability, MapEntry, SetuidFile, SurfaceScan, unmap_id

if TYPE_CHECKING:
    from ..model import Facts
    from .target import Target

PROBE_DIR = "/.containersec"
XATTR = "security.capability"
MAX_ENTRIES = 250_000
MAX_DEPTH = 64
MAX_SECONDS = 20.0
# Kernel and pseudo file systems: no image files there (nor setuid ones that count).
SKIP_FSTYPES = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "securityfs", "debugfs",
    "tracefs", "bpf", "fusectl", "configfs", "pstore", "binfmt_misc", "autofs",
    "hugetlbfs", "efivarfs", "selinuxfs", "nsfs", "rpc_pipefs",
})  # fmt: skip
_REVISIONS = {0x01000000: (1, 12), 0x02000000: (2, 20), 0x03000000: (3, 24)}


def parse_vfs_caps(
    data: bytes, source: str = XATTR
) -> tuple[int, bool, tuple[str, ...], tuple[str, ...], int | None]:
    """``(revision, effective, permitted, inheritable, rootid)`` of a security.capability
    value (pure); anything else is a ProbeParseError."""
    if len(data) < 4:
        raise ProbeParseError(source, f"{len(data)} bytes: too short for magic_etc")
    (magic,) = struct.unpack_from("<I", data)
    rev = _REVISIONS.get(magic & 0xFF000000)
    if rev is None:
        raise ProbeParseError(source, f"unknown revision 0x{magic & 0xFF000000:08x}")
    revision, size = rev
    if len(data) != size:
        raise ProbeParseError(source, f"revision {revision} is {size} bytes, got {len(data)}")
    if magic & 0x00FFFFFE:
        raise ProbeParseError(source, f"unknown flags 0x{magic & 0x00FFFFFF:06x}")
    effective = bool(magic & 1)
    if revision == 1:
        perm, inh = struct.unpack_from("<II", data, 4)
        rootid = None
    else:
        p0, i0, p1, i1 = struct.unpack_from("<IIII", data, 4)
        perm, inh = p0 | (p1 << 32), i0 | (i1 << 32)
        rootid = struct.unpack_from("<I", data, 20)[0] if revision == 3 else None
    return revision, effective, _names(perm), _names(inh), rootid


def _names(mask: int) -> tuple[str, ...]:
    return caps.decode_mask(f"{mask:016x}")


def _mounts(mountinfo: tuple[procfs.MountInfo, ...]) -> list[tuple[str, bool, bool]]:
    """(mount point, walk it, nosuid), deepest last; later mounts over earlier ones win."""
    out: dict[str, tuple[bool, bool]] = {}
    for mi in mountinfo:
        skip = (
            mi.fstype in SKIP_FSTYPES
            or mi.mountpoint == PROBE_DIR
            or (mi.mountpoint.startswith(PROBE_DIR + "/"))
        )
        out[mi.mountpoint] = (not skip, "nosuid" in mi.options)
    return sorted(((m, w, n) for m, (w, n) in out.items()), key=lambda t: len(t[0]))


def _mount_of(path: str, mounts: list[tuple[str, bool, bool]]) -> tuple[str, bool, bool]:
    best = ("/", True, False)
    for m in mounts:
        mp = m[0]
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            best = m
    return best


def scan(
    root: str,
    mountinfo: tuple[procfs.MountInfo, ...],
    uid_map: tuple[MapEntry, ...],
    gid_map: tuple[MapEntry, ...],
    *,
    max_entries: int = MAX_ENTRIES,
    max_seconds: float = MAX_SECONDS,
) -> tuple[tuple[SetuidFile, ...], tuple[FileCapability, ...], SurfaceScan]:
    """Walk ``root`` (``/proc/<pid>/root``) for setuid/setgid files and file capabilities."""
    mounts = _mounts(mountinfo)
    skipped = tuple(m for m, walk, _ in mounts if not walk)
    setuid: list[SetuidFile] = []
    fcaps: list[FileCapability] = []
    entries = 0
    reason = ""
    deadline = time.monotonic() + max_seconds

    def inside(idmap: tuple[MapEntry, ...], host: int) -> int:
        v = unmap_id(idmap, host)
        return 65534 if v is None else v

    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return (), (), SurfaceScan(0, False, skipped, f"cannot open {root}: {exc.strerror}")
    stack: list[tuple[int, str, int]] = [(top, "", 0)]
    try:
        while stack:
            fd, rel, depth = stack.pop()
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        entries += 1
                        if entries > max_entries:
                            reason = f"more than {max_entries} entries"
                            return _done(setuid, fcaps, entries, skipped, reason)
                        path = f"{rel}/{entry.name}"
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            _, walk, _ = _mount_of(path, mounts)
                            if not walk:
                                continue
                            if depth + 1 > MAX_DEPTH:
                                reason = reason or f"deeper than {MAX_DEPTH} folders at {path}"
                                continue
                            try:
                                sub = os.open(
                                    entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=fd,
                                )  # fmt: skip
                            except OSError:
                                continue
                            stack.append((sub, path, depth + 1))
                            continue
                        if not stat.S_ISREG(st.st_mode):
                            continue
                        nosuid = _mount_of(path, mounts)[2]
                        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                            setuid.append(SetuidFile(
                                path, stat.S_IMODE(st.st_mode), inside(uid_map, st.st_uid),
                                inside(gid_map, st.st_gid), bool(st.st_mode & stat.S_ISUID),
                                bool(st.st_mode & stat.S_ISGID), nosuid,
                            ))  # fmt: skip
                        fc = _file_caps(fd, entry.name, path, nosuid)
                        if fc is not None:
                            fcaps.append(fc)
                        if time.monotonic() > deadline:
                            reason = f"took longer than {max_seconds:g} s"
                            return _done(setuid, fcaps, entries, skipped, reason)
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return _done(setuid, fcaps, entries, skipped, reason)


def _done(
    setuid: list[SetuidFile],
    fcaps: list[FileCapability],
    entries: int,
    skipped: tuple[str, ...],
    reason: str,
) -> tuple[tuple[SetuidFile, ...], tuple[FileCapability, ...], SurfaceScan]:
    return (
        tuple(sorted(setuid, key=lambda s: s.path)),
        tuple(sorted(fcaps, key=lambda c: c.path)),
        SurfaceScan(entries, not reason, skipped, reason),
    )


def _file_caps(dir_fd: int, name: str, path: str, nosuid: bool) -> FileCapability | None:
    try:  # through the directory's fd: the name itself is not followed (it is a file)
        data = os.getxattr(f"/proc/self/fd/{dir_fd}/{name}", XATTR, follow_symlinks=False)
    except OSError:
        return None  # ENODATA: none; EOPNOTSUPP: a file system without xattrs
    try:
        revision, eff, perm, inh, rootid = parse_vfs_caps(data, f"{path}: {XATTR}")
    except ProbeParseError:
        return FileCapability(path, (), (), False, 0, None, nosuid)  # version 0: unparsed
    return FileCapability(path, perm, inh, eff, revision, rootid, nosuid)


def attach(
    facts: Facts,
    container: Target,
    mountinfo: tuple[procfs.MountInfo, ...],
    uid_map: tuple[MapEntry, ...],
    gid_map: tuple[MapEntry, ...],
    proc: Path = Path("/proc"),
) -> Facts:
    """Facts with the setuid files, file capabilities and the image config's USER."""
    root = str(proc / str(facts.host_pid) / "root")
    setuid, fcaps, how = scan(root, mountinfo, uid_map, gid_map)
    return replace(
        facts,
        setuid_files=setuid,
        file_capabilities=fcaps,
        surface_scan=how,
        image_user=container.image_user(),
    )
