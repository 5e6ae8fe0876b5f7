"""Host processes the adapters start or watch: trees, identities, stopping them.

A process is named by its ``pid`` plus its start time (``session.owner_token``), so a
reused pid is never mistaken for it. ``proc`` is the /proc to read (tests pass a fake one).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from ..linux import hostinfo, session
from . import host_files

STOP_TIMEOUT = 5.0
PROC = Path("/proc")


def tool_output(argv: list[str], timeout: float = 30.0) -> str:
    """The stdout of a quick query of a tool (``--version``); ``""`` when it cannot run or
    does not answer within ``timeout`` (a loaded host: a version is never a reason to call
    a runtime unavailable, nor to crash)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""


def _ppids(proc: Path) -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            out[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def parent(pid: int, proc: Path = PROC) -> int | None:
    """The parent pid of ``pid`` from its stat; None when it is gone or unreadable."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        return int(stat[stat.rfind(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int, proc: Path) -> list[int] | None:
    """Children of ``pid`` from <proc>/<pid>/task/*/children (None: not supported)."""
    out: list[int] = []
    try:
        tasks = os.listdir(proc / str(pid) / "task")
    except OSError:
        return None if (proc / str(pid)).exists() else []
    for tid in tasks:
        try:
            text = (proc / str(pid) / "task" / tid / "children").read_text()
            out += [int(c) for c in text.split()]
        except FileNotFoundError:
            if (proc / str(pid)).exists() and not (proc / str(pid) / "task" / tid).exists():
                continue  # the thread ended
            return None if (proc / str(pid)).exists() else []
        except OSError:
            continue
    return out


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    """Every live descendant of ``pid``, breadth first (children first)."""
    direct = _children(pid, proc)
    if direct is not None:  # the kernel lists children: walk them (fast)
        out, todo = [], list(direct)
        while todo:
            c = todo.pop(0)
            out.append(c)
            todo += _children(c, proc) or []
        return out
    children: dict[int, list[int]] = {}
    for child, par in _ppids(proc).items():
        children.setdefault(par, []).append(child)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def nspid(pid: int, proc: Path = PROC) -> list[int]:
    """The pid in each nested pid namespace, outermost first ([] when unreadable)."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        return []
    return [pid]


def find_inner(root: int, inner_pid: int, proc: Path = PROC) -> int | None:
    """Our pid of the descendant of ``root`` whose pid in its own namespace is ``inner_pid``."""
    for pid in descendants(root, proc):
        ns = nspid(pid, proc)
        if len(ns) >= 2 and ns[-1] == inner_pid:
            return pid
    return None


def owned_by_user(pid: int, uid: int, name: str, proc: Path = PROC) -> bool:
    """Whether ``pid`` runs (real uid) as ``uid`` or one of ``name``'s sub-uids: a process
    of that user's rootless engine, not another user's nor root's."""
    real = real_uid(pid, proc)
    if real is None:
        return False
    sub = hostinfo.subid_range(name, "/etc/subuid")
    return real == uid or (sub is not None and sub[0] <= real < sub[0] + sub[1])


def real_uid(pid: int, proc: Path = PROC) -> int | None:
    """The real uid ``pid`` runs as (None: gone or unreadable)."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (repeated: a fork may race the first pass)."""
    for _ in range(5):
        alive = False
        for v in [pid, *descendants(pid)]:
            try:
                os.kill(v, signal.SIGKILL)
                alive = True
            except ProcessLookupError:
                pass
        if not alive:
            return
        time.sleep(0.01)


def kill_and_wait(pid: int, ppid: int, timeout: float) -> bool:
    """SIGKILL ``pid`` while ``ppid`` is its parent (a pid namespace's init: the kernel kills
    the rest of the namespace), then wait up to ``timeout`` seconds for it to exit. The pidfd
    is taken before the parent is checked, so a pid reused after ``pid`` was reaped is never
    signalled. True when it is gone (or was not ``ppid``'s child)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        if parent(pid) != ppid:
            return True
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return bool(select.select([fd], [], [], timeout)[0])
    except OSError:
        return True
    finally:
        os.close(fd)


def running(pid: int, token: str) -> bool:
    """``token`` is ``pid``'s own and still names it, alive (a zombie left for init to reap
    is dead). A token of another process never vouches for ``pid``: a record naming pid 1
    with the token of some live process of the writer's must not stop init."""
    if token.partition(".")[0] != str(pid) or not session.owner_alive(token):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")


# what an OCI runtime's own process is called between `create` and the exec of the
# container's command: runc's init stages, crun's child before its execve
RUNTIME_INIT_COMMS = ("runc:[0:PARENT]", "runc:[1:CHILD]", "runc:[2:INIT]", "runc", "crun")


def wait_past(pid: int, token: str, wrappers: list[list[str]], timeout: float) -> None:
    """Wait until the main process ``pid`` has exec'd its command: past the OCI runtime's
    init (``runc start`` returns before that execve) and past our own ``wrappers`` (its
    command line starts with none of them). Until then its credentials, capabilities,
    seccomp filter and command are not yet the workload's and must not be observed. Returns
    once past or ended (the caller checks which); TimeoutError when it is still there after
    ``timeout`` seconds."""
    prefixes = [b"".join(a.encode() + b"\0" for a in w) for w in wrappers if w]
    deadline = time.monotonic() + timeout
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return
        if not running(pid, token):
            return
        ours = any(cmdline.startswith(p) for p in prefixes)
        if cmdline and comm not in RUNTIME_INIT_COMMS and not ours:  # empty: mid-exec
            return
        if time.monotonic() >= deadline:
            argv0 = cmdline.split(b"\0")[0].decode("utf-8", "replace")
            raise TimeoutError(
                f"the main process (pid {pid}, {comm}) still runs {argv0!r} "
                f"after {timeout:.0f}s instead of the workload's command"
            )
        time.sleep(0.002)


def _signal(pid: int, token: str, sig: int) -> bool:
    """Send ``sig`` to the process ``token`` names, through a pidfd taken while the token
    still matched (a pid reused after the check cannot receive it)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not running(pid, token):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def terminate(pid: int, token: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``, a process still named by ``token``."""
    if not _signal(pid, token, signal.SIGTERM):
        return False
    deadline = time.monotonic() + timeout
    while running(pid, token) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal(pid, token, signal.SIGKILL)
    return True


def wait(popen: subprocess.Popen[bytes], timeout: float) -> int:
    """``popen.wait(timeout)``, woken through a pidfd the moment the process exits (Popen
    polls with sleeps of up to 50 ms, which a stop would otherwise add to every container);
    subprocess.TimeoutExpired when it still runs after ``timeout`` seconds."""
    if popen.returncode is not None:  # reaped already: its pid may be another's now
        return popen.returncode
    try:
        fd = os.pidfd_open(popen.pid)
    except OSError:
        return popen.wait(timeout)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(popen.args, timeout)
    finally:
        os.close(fd)
    return popen.wait()


def stop_tree(pid: int, token: str, popen: subprocess.Popen[bytes] | None = None) -> None:
    """Terminate ``pid``, then whatever it started that still runs.

    The tree is taken first: a daemon's helpers may run in their own session (dockerd's
    containerd) and would be orphaned if the daemon died without stopping them.
    """
    tree = [(p, session.owner_token(p)) for p in descendants(pid)]
    terminate(pid, token)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            wait(popen, STOP_TIMEOUT)
    survivors = [(p, t) for p, t in tree if running(p, t)]
    for p, t in survivors:
        _signal(p, t, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(running(p, t) for p, t in survivors) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p, t in survivors:
        _signal(p, t, signal.SIGKILL)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages (its last 64 KiB at most; never
    through a symlink, never a FIFO)."""
    return host_files.tail(path, lines)
