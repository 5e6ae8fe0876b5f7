"""Cgroup limits in effect for a process: pure parsers of the limit files, and a reader.

Pure parsers take a file's text and return the limit (``None`` = unlimited) or raise
:class:`ProbeParseError`. :func:`read_limits` does the I/O, against ``root`` (a directory
standing in for ``/``) so that tests run it on a recorded tree.

How :func:`read_limits` decides, for each of memory, pids and cpu:

1. If a cgroup v1 hierarchy with that controller is mounted (host mountinfo), the process's
   v1 path for it (``/proc/<pid>/cgroup``) is used.
2. Else, if cgroup2 is mounted and lists the controller in its root ``cgroup.controllers``,
   the process's unified path (``0::/path``) is used.
3. Else the controller is not available, so it cannot enforce anything: that limit is
   ``None``.

The effective limit is the minimum over the process's cgroup and every ancestor up to the
mount's root (a parent's limit applies to its children too). A level without the limit file
(the root cgroup; a v2 cgroup whose parent does not enable the controller) sets no limit.
Limits set above a mount's root (a bind-mounted sub-hierarchy) cannot be seen and are not
reported. A missing cgroup directory or an unreadable file raises ``ProbeParseError``
naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ProbeParseError
from ..model import Cgroup
from .procfs import MountInfo, parse_mountinfo, parse_proc_cgroup, words

V1_UNLIMITED_FROM = 2**62  # v1 reports "unlimited" as PAGE_COUNTER_MAX * page size
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)\Z")
LIMITED = ("memory", "pids", "cpu")
# v1 super options that are not controllers (hierarchy names are kept: "name=systemd")
_NOT_CONTROLLERS = frozenset(
    {"rw", "ro", "none", "all", "noprefix", "xattr", "clone_children", "cpuset_v2_mode",
     "favordynmods"}
)  # fmt: skip


def _one_line(text: str, source: str) -> str:
    value = text.removesuffix("\n")
    if not value or "\n" in value or value != value.strip(" \t"):
        raise ProbeParseError(source, f"expected a single value, got {text!r}")
    return value


def _count(text: str, source: str, positive: bool = False) -> int:
    if not _DECIMAL.match(text):
        raise ProbeParseError(source, f"not a non-negative integer: {text!r}")
    value = int(text)
    if positive and value == 0:
        raise ProbeParseError(source, "must be positive, got 0")
    return value


# -- pure parsers of limit files -----------------------------------------------------------


def parse_v1_memory_limit(text: str, source: str = "memory.limit_in_bytes") -> int | None:
    """v1 bytes; the huge "unlimited" value (>= 2**62) is None."""
    value = _count(_one_line(text, source), source)
    return None if value >= V1_UNLIMITED_FROM else value


def parse_pids_max(text: str, source: str = "pids.max") -> int | None:
    """v1 and v2 ``pids.max``: ``max`` -> None, else the count."""
    value = _one_line(text, source)
    return None if value == "max" else _count(value, source)


def parse_v1_cpu(
    quota_text: str, period_text: str, source: str = "cpu.cfs_quota_us"
) -> float | None:
    """v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in cores; quota -1 -> None."""
    period = _count(_one_line(period_text, source), f"{source} (period)", positive=True)
    quota = _one_line(quota_text, source)
    if quota == "-1":
        return None
    return _count(quota, source, positive=True) / period


def parse_v2_memory_max(text: str, source: str = "memory.max") -> int | None:
    """v2 ``memory.max``: ``max`` -> None, else bytes."""
    value = _one_line(text, source)
    return None if value == "max" else _count(value, source)


def parse_v2_cpu_max(text: str, source: str = "cpu.max") -> float | None:
    """v2 ``cpu.max`` (``$MAX $PERIOD``): ``max 100000`` -> None, ``50000 100000`` -> 0.5."""
    parts = words(_one_line(text, source))
    if len(parts) != 2:
        raise ProbeParseError(source, f"expected '$MAX $PERIOD', got {text!r}")
    period = _count(parts[1], f"{source} (period)", positive=True)
    return None if parts[0] == "max" else _count(parts[0], source, positive=True) / period


# -- where the hierarchies are mounted -----------------------------------------------------


@dataclass(frozen=True)
class CgroupMount:
    """One mount of a cgroup hierarchy: where it is, and which cgroup it shows there."""

    mountpoint: str  # where it is mounted, e.g. /sys/fs/cgroup/memory
    root: str  # the cgroup shown at the mount point ("/" unless a sub-hierarchy is bound)


@dataclass(frozen=True)
class CgroupMounts:
    """Where each cgroup hierarchy is mounted: v1 per controller, and the unified (v2) one."""

    v1: dict[str, tuple[CgroupMount, ...]]  # controller (or "name=systemd") -> mounts
    v2: tuple[CgroupMount, ...]  # the unified hierarchy's mounts


def parse_cgroup_mounts(
    mountinfo: str | Sequence[MountInfo], source: str = "/proc/self/mountinfo"
) -> CgroupMounts:
    """Where each v1 controller and the unified hierarchy are mounted (text or parsed)."""
    mounts = parse_mountinfo(mountinfo, source) if isinstance(mountinfo, str) else mountinfo
    v1: dict[str, list[CgroupMount]] = {}
    v2: list[CgroupMount] = []
    for mi in mounts:
        cm = CgroupMount(mountpoint=mi.mountpoint, root=mi.root)
        if not mi.root.startswith("/"):
            continue  # not a cgroup directory (cannot happen for cgroupfs)
        if mi.fstype == "cgroup2":
            v2.append(cm)
        elif mi.fstype == "cgroup":
            for opt in mi.super_options:
                if opt not in _NOT_CONTROLLERS and not opt.startswith("release_agent="):
                    v1.setdefault(opt, []).append(cm)
    return CgroupMounts(v1={k: tuple(v) for k, v in v1.items()}, v2=tuple(v2))


def locate(mounts: Sequence[CgroupMount], path: str) -> tuple[CgroupMount, str] | None:
    """The mount showing cgroup ``path`` with the most ancestors, and the path under it."""
    best: tuple[CgroupMount, str] | None = None
    for m in mounts:
        root = m.root.rstrip("/")
        if path == m.root or path == root or path.startswith(root + "/"):
            rel = path[len(root) :].strip("/")
            if best is None or len(m.root) < len(best[0].root):
                best = (m, rel)
    return best


# -- the effective limits of a process -----------------------------------------------------


def _read_optional(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ProbeParseError(str(path), f"unreadable: {e.strerror or e}") from e


def _levels(root: Path, mount: CgroupMount, rel: str) -> list[Path]:
    """Directories from the process's cgroup up to the mount's root, leaf first."""
    parts = PurePosixPath(rel).parts if rel else ()
    if any(p in (".", "..") for p in rel.split("/")):
        raise ProbeParseError(rel, "cgroup path leaves the mount (another cgroup namespace?)")
    top = root / mount.mountpoint.lstrip("/")
    leaf = top.joinpath(*parts)
    if not leaf.is_dir():
        raise ProbeParseError(str(leaf), "cgroup directory missing (did the process exit?)")
    return [top.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


Reader = Callable[[Path], float | int | None]


def _minimum(dirs: list[Path], read: Reader) -> float | int | None:
    values = [v for v in (read(d) for d in dirs) if v is not None]
    return min(values) if values else None


def _v1_memory(d: Path) -> int | None:
    text = _read_optional(d / "memory.limit_in_bytes")
    return None if text is None else parse_v1_memory_limit(text, str(d / "memory.limit_in_bytes"))


def _pids(d: Path) -> int | None:
    text = _read_optional(d / "pids.max")
    return None if text is None else parse_pids_max(text, str(d / "pids.max"))


def _v1_cpu(d: Path) -> float | None:
    quota = _read_optional(d / "cpu.cfs_quota_us")
    if quota is None:
        return None
    period = _read_optional(d / "cpu.cfs_period_us")
    if period is None:
        raise ProbeParseError(str(d / "cpu.cfs_period_us"), "missing next to cpu.cfs_quota_us")
    return parse_v1_cpu(quota, period, str(d / "cpu.cfs_quota_us"))


def _v2_memory(d: Path) -> int | None:
    text = _read_optional(d / "memory.max")
    return None if text is None else parse_v2_memory_max(text, str(d / "memory.max"))


def _v2_cpu(d: Path) -> float | None:
    text = _read_optional(d / "cpu.max")
    return None if text is None else parse_v2_cpu_max(text, str(d / "cpu.max"))


_V1_READERS: dict[str, Reader] = {"memory": _v1_memory, "pids": _pids, "cpu": _v1_cpu}
_V2_READERS: dict[str, Reader] = {"memory": _v2_memory, "pids": _pids, "cpu": _v2_cpu}


def _read_required(path: Path) -> str:
    text = _read_optional(path)
    if text is None:
        raise ProbeParseError(str(path), "missing")
    return text


def read_limits(pid: int, proc_root: Path | None = None, root: Path = Path("/")) -> Cgroup:
    """The effective memory/pids/cpu limits of process ``pid`` (see the module docstring).

    ``root`` stands in for ``/`` (the host's mountinfo is ``root/proc/self/mountinfo``, the
    cgroup files are under ``root``); ``proc_root`` defaults to ``root/proc``.
    """
    proc = proc_root if proc_root is not None else root / "proc"
    info_path = proc / "self" / "mountinfo"
    mounts = parse_cgroup_mounts(_read_required(info_path), str(info_path))
    cg_path = proc / str(pid) / "cgroup"
    paths = parse_proc_cgroup(_read_required(cg_path), str(cg_path))

    unified: tuple[CgroupMount, str] | None = None
    v2_controllers: list[str] = []
    if mounts.v2 and "" in paths:
        unified = locate(mounts.v2, paths[""])
        if unified is None:
            raise ProbeParseError(str(cg_path), f"{paths['']} is under no cgroup2 mount")
        ctl_file = root / unified[0].mountpoint.lstrip("/") / "cgroup.controllers"
        v2_controllers = words(_read_required(ctl_file).strip("\n"))

    limits: dict[str, float | int | None] = {}
    where: dict[str, tuple[int, str]] = {}  # controller -> (version, cgroup path)
    for ctl in LIMITED:
        if ctl in mounts.v1:
            if ctl not in paths:
                raise ProbeParseError(str(cg_path), f"no {ctl} line, yet {ctl} is mounted")
            found = locate(mounts.v1[ctl], paths[ctl])
            if found is None:
                raise ProbeParseError(str(cg_path), f"{paths[ctl]} is under no {ctl} mount")
            dirs, version, read = _levels(root, *found), 1, _V1_READERS[ctl]
        elif unified is not None and ctl in v2_controllers:
            dirs, version, read = _levels(root, *unified), 2, _V2_READERS[ctl]
        else:
            limits[ctl] = None  # controller not available anywhere: it enforces nothing
            continue
        limits[ctl] = _minimum(dirs, read)
        where[ctl] = (version, paths[ctl] if version == 1 else paths[""])

    if not where and unified is None and not mounts.v1:
        raise ProbeParseError(str(info_path), "no cgroup hierarchy is mounted")
    used_v1 = any(v == 1 for v, _ in where.values())
    version = 2 if not used_v1 and unified is not None else 1
    if "memory" in where:
        path = where["memory"][1]
    elif version == 2 and "" in paths:
        path = paths[""]
    else:
        path = next((paths[c] for c in (*LIMITED, "name=systemd", "") if c in paths), "/")
    memory, pids, cpu = limits["memory"], limits["pids"], limits["cpu"]
    return Cgroup(
        version=version,
        path=path,
        memory_max=None if memory is None else int(memory),
        pids_max=None if pids is None else int(pids),
        cpu_max=None if cpu is None else float(cpu),
    )
