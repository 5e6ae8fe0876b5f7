"""The container's processes, read from the host's /proc: who runs, with which identity,
and which one a snapshot is about (``Container.facts(process=...)``).

Also the per-process files the Facts carry beside the status: ``/proc/<pid>/limits``
(resource limits) and ``/proc/<pid>/oom_score_adj``. Parsers are pure and strict; the
readers below them are the only I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import ProbeParseError, SpecError
from ..model import MapEntry, ProcessRecord, RLimit, User, unmap_id
from . import procfs

# A process is chosen by its pid inside the container, its name (comm), or a predicate.
ProcessSelector = int | str | Callable[[ProcessRecord], bool]

MAX_PROCESSES = 4096  # processes listed at most (a fork bomb must not stall a snapshot)
MAX_CMDLINE = 4096  # bytes of a command line kept

# /proc/<pid>/limits row names -> the RLIMIT_* short names (prlimit(1), docker --ulimit)
LIMIT_NAMES: dict[str, str] = {
    "Max cpu time": "cpu",
    "Max file size": "fsize",
    "Max data size": "data",
    "Max stack size": "stack",
    "Max core file size": "core",
    "Max resident set": "rss",
    "Max processes": "nproc",
    "Max open files": "nofile",
    "Max locked memory": "memlock",
    "Max address space": "as",
    "Max file locks": "locks",
    "Max pending signals": "sigpending",
    "Max msgqueue size": "msgqueue",
    "Max nice priority": "nice",
    "Max realtime priority": "rtprio",
    "Max realtime timeout": "rttime",
}
_LIMIT_VALUE = re.compile(r"(unlimited|0|[1-9][0-9]*)\Z")


# -- pure parsers ------------------------------------------------------------------------


def parse_limits(text: str, source: str = "/proc/<pid>/limits") -> dict[str, RLimit]:
    """``/proc/<pid>/limits`` -> {"nofile": RLimit(soft, hard), ...}; None = unlimited.

    The kernel prints ``%-25s %-20s %-20s %-10s``: the name is the first 25 columns (it
    has spaces), then soft, hard and an optional unit. Every known row is required once."""
    rows = procfs.lines(text)
    if not rows or not rows[0].startswith("Limit"):
        raise ProbeParseError(source, "missing the 'Limit Soft Limit Hard Limit Units' header")
    out: dict[str, RLimit] = {}
    for n, line in enumerate(rows[1:], 2):
        name = line[:25].rstrip()
        key = LIMIT_NAMES.get(name)
        if key is None:
            raise ProbeParseError(source, f"line {n}: unknown limit {name!r}")
        if key in out:
            raise ProbeParseError(source, f"line {n}: duplicate {name!r}")
        parts = procfs.words(line[25:])
        if len(parts) not in (2, 3) or not all(_LIMIT_VALUE.match(p) for p in parts[:2]):
            raise ProbeParseError(source, f"line {n}: expected soft and hard limits: {line!r}")
        soft, hard = (None if p == "unlimited" else int(p) for p in parts[:2])
        out[key] = RLimit(soft, hard)
    missing = sorted(set(LIMIT_NAMES.values()) - set(out))
    if missing:
        raise ProbeParseError(source, f"missing limit(s): {', '.join(missing)}")
    return out


def parse_oom_score_adj(text: str, source: str = "/proc/<pid>/oom_score_adj") -> int:
    """An integer in -1000..1000."""
    value = text.strip()
    if not re.fullmatch(r"-?(0|[1-9][0-9]{0,3})", value) or not -1000 <= int(value) <= 1000:
        raise ProbeParseError(source, f"not an oom_score_adj in -1000..1000: {text!r}")
    return int(value)


def parse_comm(text: str) -> str:
    """/proc/<pid>/comm without its newline (the kernel cuts names to 15 bytes)."""
    return text.rstrip("\n")


def record(
    status: procfs.Status,
    comm: str,
    cmdline: tuple[str, ...],
    uid_map: tuple[MapEntry, ...],
    gid_map: tuple[MapEntry, ...],
    main: bool = False,
) -> ProcessRecord:
    """One process as the container sees it (ids mapped back through the maps; pure)."""

    def inside(idmap: tuple[MapEntry, ...], host: int) -> int:
        v = unmap_id(idmap, host)
        return 65534 if v is None else v

    return ProcessRecord(
        pid=status.nspid[-1],
        host_pid=status.nspid[0],
        comm=comm,
        cmdline=cmdline,
        user=User(
            uid=inside(uid_map, status.uid[1]),
            gid=inside(gid_map, status.gid[1]),
            host_uid=status.uid[1],
            host_gid=status.gid[1],
            groups=tuple(inside(gid_map, g) for g in status.groups),
        ),
        capabilities=status.capabilities(),
        seccomp=status.seccomp,
        no_new_privs=status.no_new_privs,
        main=main,
    )


def select(processes: tuple[ProcessRecord, ...], selector: ProcessSelector) -> ProcessRecord:
    """The process ``selector`` names: a pid inside the container, a comm, or a predicate.

    Several matches are fine when they share one identity (same ids, groups, capability
    sets, seccomp mode and no_new_privs: the verdicts would be the same), and the lowest
    pid is taken; otherwise a SpecError lists them, so a verdict never silently speaks for
    another identity than the one meant."""
    if isinstance(selector, bool):
        raise SpecError("process", selector, "expected a pid, a process name or a predicate")
    if isinstance(selector, int):
        found = [p for p in processes if p.pid == selector]
        what = f"pid {selector}"
    elif isinstance(selector, str):
        found = [p for p in processes if p.comm == selector]
        what = f"name {selector!r}"
    elif callable(selector):
        found = [p for p in processes if selector(p)]
        what = "the predicate"
    else:
        raise SpecError("process", selector, "expected a pid, a process name or a predicate")
    listing = ", ".join(_describe(p) for p in processes[:20])
    if not found:
        raise SpecError(
            "process", selector, f"no process matches {what}; the container has: {listing}"
        )
    identities = {_identity_key(p) for p in found}
    if len(identities) > 1:
        which = ", ".join(_describe(p) for p in found[:20])
        raise SpecError(
            "process", selector,
            f"{what} matches processes with different identities ({which}); pass a pid "
            "or a predicate that picks one identity",
        )  # fmt: skip
    return min(found, key=lambda p: p.pid)


def _identity_key(p: ProcessRecord) -> tuple[object, ...]:
    return (p.user, p.capabilities, p.seccomp, p.no_new_privs)


def _describe(p: ProcessRecord) -> str:
    return f"pid {p.pid} {p.comm} (uid {p.user.uid})"


# -- host readers -------------------------------------------------------------------------


def _text(path: Path, limit: int = 64 * 1024) -> str:
    with path.open("rb") as f:
        return f.read(limit).decode("utf-8", "surrogateescape")


def _within(theirs: dict[str, str], mine: dict[str, str]) -> bool:
    """Every hierarchy's path of ``theirs`` is ``mine``'s or below it."""
    for ctrl, path in mine.items():
        other = theirs.get(ctrl)
        if other is None or not (other == path or other.startswith(path.rstrip("/") + "/")):
            return False
    return True


def member_pids(main_pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Host pids of the container's processes, main first: those in ``main_pid``'s pid
    namespace and in its cgroup or below (so the units of one booted systemd, or a
    container in the host's pid namespace, list only their own)."""
    try:
        ns = os.readlink(proc / str(main_pid) / "ns" / "pid")
        mine = procfs.parse_proc_cgroup(_text(proc / str(main_pid) / "cgroup"))
    except OSError as exc:
        raise ProbeParseError(f"/proc/{main_pid}", f"unreadable: {exc.strerror or exc}") from None
    found: list[int] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.readlink(f"{entry.path}/ns/pid") != ns:
                continue
            if not _within(procfs.parse_proc_cgroup(_text(Path(entry.path, "cgroup"))), mine):
                continue
        except (OSError, ProbeParseError):
            continue  # gone meanwhile
        found.append(pid)
        if len(found) >= MAX_PROCESSES:
            break
    found.sort(key=lambda p: (p != main_pid, p))
    return found


def read_processes(
    main_pid: int,
    uid_map: tuple[MapEntry, ...],
    gid_map: tuple[MapEntry, ...],
    proc: Path = Path("/proc"),
) -> tuple[ProcessRecord, ...]:
    """Every process of the container (those that exit meanwhile are left out)."""
    out: list[ProcessRecord] = []
    for pid in member_pids(main_pid, proc):
        base = proc / str(pid)
        try:
            status = procfs.parse_status(_text(base / "status"), str(base / "status"))
            comm = parse_comm(_text(base / "comm"))
            raw = _text(base / "cmdline", MAX_CMDLINE)
        except FileNotFoundError:
            continue
        except ProcessLookupError:
            continue
        except OSError as exc:
            if pid == main_pid:
                raise ProbeParseError(str(base), f"unreadable: {exc.strerror or exc}") from None
            continue
        cmdline = tuple(raw.split("\0")[:-1] if raw.endswith("\0") else raw.split("\0"))
        out.append(record(status, comm, cmdline, uid_map, gid_map, main=pid == main_pid))
    return tuple(out)


def read_limits(pid: int, proc: Path = Path("/proc")) -> dict[str, RLimit]:
    """The resource limits of ``pid`` (see ``parse_limits``); ProbeParseError when unreadable."""
    path = proc / str(pid) / "limits"
    try:
        return parse_limits(_text(path), str(path))
    except OSError as exc:
        raise ProbeParseError(str(path), f"unreadable: {exc.strerror or exc}") from None


def read_oom_score_adj(pid: int, proc: Path = Path("/proc")) -> int:
    """The ``oom_score_adj`` of ``pid``; ProbeParseError when unreadable or out of range."""
    path = proc / str(pid) / "oom_score_adj"
    try:
        return parse_oom_score_adj(_text(path), str(path))
    except OSError as exc:
        raise ProbeParseError(str(path), f"unreadable: {exc.strerror or exc}") from None
