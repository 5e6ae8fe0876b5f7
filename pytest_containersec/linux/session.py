"""Identity of this process's session, so a later run can reap what a killed run left."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

LABEL_SESSION = "io.containersec.session"
LABEL_OWNER = "io.containersec.owner"
NAME_PREFIX = "containersec"
STATE_DIR = Path(os.environ.get("CONTAINERSEC_STATE", "/var/lib/containersec"))
OWNER_FILE = "owner"
# a folder without its owner file is one being made (by a live session) until this old
YOUNG_SECONDS = 60.0


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts after the ")" that closes the command name.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_token(pid: int | None = None) -> str:
    """``PID.STARTTIME`` of a process: unique even when the PID is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{_start_time(pid) or '0'}"


def owner_alive(token: str) -> bool:
    """Whether the process that wrote ``token`` still runs (same PID and start time)."""
    pid_s, _, start = token.partition(".")
    if not pid_s.isdigit():
        return False
    return _start_time(int(pid_s)) == start


def claim(folder: Path) -> None:
    """Mark ``folder`` (just made) as this session's: ``folder/owner`` holds the owner token,
    written whole under a temporary name and renamed, so a reaper never reads it empty."""
    tmp = folder / f".{OWNER_FILE}.tmp"
    tmp.write_text(current().owner)
    tmp.rename(folder / OWNER_FILE)


def orphaned(folder: Path) -> bool:
    """Whether ``folder`` (made and :func:`claim` -ed by some session) belongs to a dead
    session. Without an owner file it is being made right now, unless older than
    YOUNG_SECONDS; a folder gone meanwhile (another reaper) is not ours to remove."""
    try:
        owner = (folder / OWNER_FILE).read_text().strip()
    except OSError:
        owner = ""
    if owner:
        return not owner_alive(owner)
    try:
        return time.time() - folder.stat().st_mtime >= YOUNG_SECONDS
    except OSError:
        return False


class Session:
    """One per process (pytest worker, CLI run): a short id and the owner token."""

    def __init__(self) -> None:
        self.owner = owner_token()
        self.id = f"{os.getpid()}{secrets.token_hex(3)}"
        self._counter = 0

    def next_name(self, runtime: str) -> str:
        """A fresh name, unique in this process: ``containersec-SESSION-RUNTIME-N`` (a ``:``
        of the runtime name becomes ``.``)."""
        self._counter += 1
        # ENGINE:OCI variants: engines allow no ':' in names
        return f"{NAME_PREFIX}-{self.id}-{runtime.replace(':', '.')}-{self._counter}"

    @property
    def labels(self) -> dict[str, str]:
        """The engine labels that mark a container as this session's: the session id and the
        owner token the reaper checks for liveness."""
        return {LABEL_SESSION: self.id, LABEL_OWNER: self.owner}


_current: Session | None = None


def current() -> Session:
    """This process's Session; a forked child (whose owner token differs) gets a new one."""
    global _current
    if _current is None or not owner_alive(_current.owner):  # forked child: new session
        _current = Session()
    return _current
