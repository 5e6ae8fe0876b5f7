"""Cgroups the nspawn adapter creates by hand when systemd is not PID 1 (v1 or v2).

nspawn's ``--property=`` needs systemd (and machined registration); without it, the nspawn
process joins a cgroup made here *before it execs* (``preexec_fn`` writes ``0`` to each
``cgroup.procs``), so nspawn, the container and everything it forks inherit the limits.
The adapter always creates the cgroup, limits or not: its ``cgroup.procs`` is also the
exhaustive list of the container's processes when it is stopped or reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "containersec"
CFS_PERIOD = 100_000  # microseconds
V1_CONTROLLERS = ("memory", "pids", "cpu")


def v1_mounts(mountinfo: str) -> dict[str, Path]:
    """Controller -> mount point of each cgroup v1 hierarchy we use (pure).

    Also ``systemd`` (name=systemd) and ``unified`` (hybrid's cgroup2): nspawn makes a
    ``payload`` child of its own cgroup there, which must be ours, not the root's.
    """
    out: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fstype, mnt = right.split()[0], Path(left.split()[4])
        if fstype == "cgroup2":
            out.setdefault("unified", mnt)
            continue
        if fstype != "cgroup":
            continue
        opts = set(right.split()[2].split(","))
        for ctrl in V1_CONTROLLERS:
            if ctrl in opts and ctrl not in out:
                out[ctrl] = mnt
        if "name=systemd" in opts:
            out.setdefault("systemd", mnt)
    return out


def limit_files(
    version: int, memory: int | None, pids: int | None, cpus: float | None
) -> list[tuple[str, str, str]]:
    """``(controller, file, value)`` to write for the limits (pure)."""
    out: list[tuple[str, str, str]] = []
    quota = round(cpus * CFS_PERIOD) if cpus is not None else None
    if version == 1:
        if memory is not None:
            out.append(("memory", "memory.limit_in_bytes", str(memory)))
        if pids is not None:
            out.append(("pids", "pids.max", str(pids)))
        if quota is not None:
            out.append(("cpu", "cpu.cfs_period_us", str(CFS_PERIOD)))
            out.append(("cpu", "cpu.cfs_quota_us", str(quota)))
    else:
        if memory is not None:
            out.append(("memory", "memory.max", str(memory)))
        if pids is not None:
            out.append(("pids", "pids.max", str(pids)))
        if quota is not None:
            out.append(("cpu", "cpu.max", f"{quota} {CFS_PERIOD}"))
    return out


def systemd_properties(memory: int | None, pids: int | None, cpus: float | None) -> list[str]:
    """``--property=`` arguments for when systemd is PID 1 (pure)."""
    out = []
    if memory is not None:
        out.append(f"--property=MemoryMax={memory}")
    if pids is not None:
        out.append(f"--property=TasksMax={pids}")
    if cpus is not None:
        out.append(f"--property=CPUQuota={round(cpus * 100)}%")
    return out


def plan(version: int, name: str) -> dict[str, Path]:
    """Controller -> cgroup directory for container ``name`` (v2: one for all)."""
    if version == 2:
        return dict.fromkeys(V1_CONTROLLERS, CGROUP_ROOT / PARENT / name)
    mounts = v1_mounts(Path("/proc/self/mountinfo").read_text())
    return {ctrl: mnt / PARENT / name for ctrl, mnt in mounts.items()}


def unique(dirs: dict[str, Path]) -> list[Path]:
    """The distinct directories of a :func:`plan` in controller order (v2: one for all)."""
    return list(dict.fromkeys(dirs.values()))


def create(
    version: int, dirs: dict[str, Path], memory: int | None, pids: int | None, cpus: float | None
) -> None:
    """Make the directories and write the limits; raises OSError (caller cleans up)."""
    if version == 2:
        for parent in (CGROUP_ROOT, CGROUP_ROOT / PARENT):
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
    for d in unique(dirs):
        d.parent.mkdir(exist_ok=True)
        d.mkdir()
    for ctrl, fname, value in limit_files(version, memory, pids, cpus):
        if ctrl not in dirs:
            raise OSError(f"no cgroup hierarchy with the {ctrl} controller is mounted")
        (dirs[ctrl] / fname).write_text(value)


def joiner(dirs: list[Path]) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the forked child into every directory (os calls only)."""
    paths = [str(d / "cgroup.procs") for d in dirs]

    def join() -> None:
        for p in paths:
            fd = os.open(p, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    return join


def _subdirs(d: Path) -> list[Path]:
    """``d`` and every cgroup below it (nspawn's ``payload``)."""
    return [Path(root) for root, _, _ in os.walk(d)] if d.is_dir() else []


def procs(dirs: list[Path]) -> set[int]:
    """The pids in ``dirs`` and every cgroup below them (host pids; unreadable files skipped)."""
    out: set[int] = set()
    for d in dirs:
        for sub in _subdirs(d):
            with contextlib.suppress(OSError, ValueError):
                out |= {int(x) for x in (sub / "cgroup.procs").read_text().split()}
    return out


def kill_and_remove(dirs: list[Path], wait: float = 5.0) -> bool:
    """SIGKILL every process in the cgroups, then remove them. True when all are gone."""
    deadline = time.monotonic() + wait
    while True:
        pids = procs(dirs)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        removed = True
        for d in dirs:
            for sub in sorted(_subdirs(d), key=lambda p: -len(p.parts)):
                try:
                    sub.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    removed = False
        if removed:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
