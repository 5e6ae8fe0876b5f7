"""linux.session: claiming a folder and telling a dead session's folder from a live one's."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from pytest_containersec.linux import session


def _dead_token() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = session.owner_token(child.pid)
    child.wait()
    return token


def test_a_claimed_folder_is_not_orphaned_while_its_session_lives(tmp_path: Path) -> None:
    session.claim(tmp_path)
    assert (tmp_path / "owner").read_text() == session.current().owner
    assert [p.name for p in tmp_path.iterdir()] == ["owner"]  # no temporary name left
    assert session.orphaned(tmp_path) is False


def test_a_dead_sessions_folder_is_orphaned(tmp_path: Path) -> None:
    (tmp_path / "owner").write_text(_dead_token())
    assert session.orphaned(tmp_path) is True


def test_a_folder_without_a_whole_owner_is_orphaned_only_once_old(tmp_path: Path) -> None:
    young = tmp_path / "young"
    young.mkdir()
    assert session.orphaned(young) is False  # being made right now
    (young / "owner").write_text("")  # a writer's O_TRUNC before its write
    assert session.orphaned(young) is False
    old = tmp_path / "old"
    old.mkdir()
    (old / "owner").write_text("")
    stamp = os.stat(old).st_mtime - session.YOUNG_SECONDS - 1
    os.utime(old, (stamp, stamp))
    assert session.orphaned(old) is True
    assert session.orphaned(tmp_path / "gone") is False  # another reaper removed it


def test_a_reader_racing_claim_never_sees_an_empty_owner(tmp_path: Path) -> None:
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for d in tmp_path.iterdir():
                with contextlib.suppress(OSError):
                    seen.append((d / "owner").read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            (tmp_path / str(i)).mkdir()
            session.claim(tmp_path / str(i))
    finally:
        done.set()
        reader.join()
    assert seen  # the reader did overlap the writes
    assert set(seen) == {session.current().owner}
