"""Each container's own probe folder: written fresh, and every change to it is noticed."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pytest_containersec.checks.checks import allowed, denied, operation_denied
from pytest_containersec.checks.score import score
from pytest_containersec.checks.surface import not_privileged
from pytest_containersec.linux import session
from pytest_containersec.observe.facts import mark_probe_tampered
from pytest_containersec.runtimes import probe_copy
from pytest_containersec.runtimes.probe_copy import ProbeCopy

from .factories import facts as make_facts

BUSYBOX = b"\x7fELF fake static busybox" + b"\0" * 4096


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(session, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(probe_copy, "_busybox", lambda: BUSYBOX)
    return tmp_path / "state"


def test_a_fresh_copy_per_container_root_owned_and_read_only_for_others(state: Path) -> None:
    a, b = ProbeCopy.create("c-1"), ProbeCopy.create("c-2")
    assert a.path != b.path
    assert a.path.parent.parent == state / "probe" / "c"
    assert (a.path / "busybox").read_bytes() == BUSYBOX
    for p in (a.path, a.path / "busybox", a.path / "mnt", a.path / "run", a.path / "tools"):
        st = p.lstat()
        assert st.st_uid == os.geteuid()
        assert stat.S_IMODE(st.st_mode) == 0o755
    assert stat.S_IMODE((a.path / "notamodule.ko").stat().st_mode) == 0o644
    assert (a.root / "owner").read_text() == session.current().owner  # outside the mount
    assert a.problems(None) == []
    assert b.problems(None) == []
    with pytest.raises(FileExistsError):
        ProbeCopy.create("c-1")
    (state / "probe" / "c" / "empty").mkdir()
    with pytest.raises(FileExistsError):
        ProbeCopy.create("empty")
    with pytest.raises(ValueError):
        ProbeCopy.create("../escape")


def test_rewriting_the_busybox_in_place_is_noticed_even_when_restored() -> None:
    c = ProbeCopy.create("c")
    time.sleep(0.05)  # file times have the kernel's tick resolution
    bb = c.path / "busybox"
    bb.write_bytes(BUSYBOX[:-1] + b"X")  # same size
    assert any(p.startswith("busybox:") for p in c.host_problems())
    bb.write_bytes(BUSYBOX)  # content restored: the ctime still tells
    assert any("ctime_ns" in p for p in c.host_problems())


def test_the_bytes_are_compared_with_what_was_written_whatever_the_file_times_say() -> None:
    c = ProbeCopy.create("c")
    assert c.host_problems() == []
    # as if the file had changed while its size, inode and times stayed as recorded
    c._contents["busybox"] = BUSYBOX[:-1] + b"X"
    assert c.host_problems() == ["busybox: content changed"]
    c._contents["busybox"] = BUSYBOX[:-1]  # the file is one byte longer than that
    assert c.host_problems() == ["busybox: content changed"]
    c._contents["busybox"] = BUSYBOX
    assert c.shared().host_problems() == []


def test_a_replaced_file_a_symlink_an_added_file_and_a_removed_one_are_noticed() -> None:
    c = ProbeCopy.create("c")
    (c.path / "busybox").unlink()  # the new file may even get the same inode number
    (c.path / "busybox").write_bytes(BUSYBOX[:-1] + b"X")
    assert c.host_problems()

    c = ProbeCopy.create("d")
    (c.path / "busybox").unlink()
    (c.path / "busybox").symlink_to("/bin/sh")
    assert any("kind" in p for p in c.host_problems())

    c = ProbeCopy.create("e")
    (c.path / "run" / "planted").write_text("x")
    (c.path / "extra").write_text("x")
    problems = c.host_problems()
    assert "extra: added" in problems
    assert any(p.startswith("run:") for p in problems)

    c = ProbeCopy.create("f")
    (c.path / "notamodule.ko").unlink()
    assert any(p.startswith("notamodule.ko") for p in c.host_problems())


def _fake_proc(tmp_path: Path, root: Path) -> Path:
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "root").symlink_to(root)
    return proc


def test_inside_view_must_be_the_very_folder_and_files(tmp_path: Path) -> None:
    c = ProbeCopy.create("c")
    fake_root = tmp_path / "rootfs"
    fake_root.mkdir()
    os.rename(c.path, fake_root / ".containersec")  # same inodes, as a bind mount shows them
    c.path = fake_root / ".containersec"
    proc = _fake_proc(tmp_path, fake_root)
    assert c.inside_problems(7, proc) == []
    (c.path / "notamodule.ko").rename(tmp_path / "ko")
    (c.path / "notamodule.ko").write_bytes(b"a real module, mounted over it")
    assert c.inside_problems(7, proc) == [
        f"{'/.containersec'}/notamodule.ko inside is another file"
    ]


def test_inside_view_covered_replaced_by_a_symlink_or_gone(tmp_path: Path) -> None:
    c = ProbeCopy.create("c")
    other = tmp_path / "other"
    (other / ".containersec").mkdir(parents=True)
    (other / ".containersec" / "busybox").write_bytes(BUSYBOX)
    assert "is not the container's probe folder" in " ".join(
        c.inside_problems(7, _fake_proc(tmp_path, other))
    )
    link = tmp_path / "link"
    link.mkdir()
    (link / ".containersec").symlink_to(c.path)
    assert c.inside_problems(7, _fake_proc(tmp_path / "l", link)) == [
        "/.containersec is a symlink inside"
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "gone" in c.inside_problems(7, _fake_proc(tmp_path / "e", empty))[0]


def test_remove_and_a_shared_handle_that_never_removes() -> None:
    c = ProbeCopy.create("c")
    shared = c.shared()
    assert shared.problems(None) == []
    shared.remove()
    assert c.path.is_dir()
    (c.path / "busybox").write_bytes(b"changed")
    assert shared.host_problems()  # the same records
    c.remove()
    assert not c.root.exists()
    c.remove()  # idempotent


def test_reap_removes_copies_of_dead_sessions_only(state: Path) -> None:
    mine = ProbeCopy.create("mine")
    dead = ProbeCopy.create("dead")
    (dead.root / "owner").write_text("999999999.1")
    assert probe_copy.reap() == 1
    assert mine.path.is_dir()
    assert not dead.root.exists()


def test_tampered_facts_give_no_access_verdict_and_count_as_exposed() -> None:
    f = make_facts()
    assert operation_denied(f, "mount_tmpfs") == []
    t = mark_probe_tampered(f, ("busybox: content changed",))
    assert t.probe_modified == "busybox: content changed"
    assert t.access == {}
    assert t.operations == {}
    for violations in (
        denied(t, "/etc/shadow", "r"),
        allowed(t, "/etc/shadow", "r"),
        operation_denied(t, "mount_tmpfs"),
    ):
        assert len(violations) == 1
        assert "modified from inside: busybox: content changed" in violations[0].observed
    assert "probe mount" in " ".join(v.observed for v in not_privileged(t))
    assert score(t).value > score(f).value
    assert type(t).from_json(t.to_json()).probe_modified == t.probe_modified
    assert mark_probe_tampered(t, ("again",)) == t


def test_the_tools_written_later_are_checked_like_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tools = (("setpriv", b"\x7fELF setpriv"), ("libc.so.6", b"\x7fELF libc"), ("ld.so", b"ld"))
    monkeypatch.setattr(probe_copy, "_tool_files", lambda: tools)
    c = ProbeCopy.create("c")
    c.add_tools()
    assert (c.path / "tools" / "setpriv").read_bytes() == b"\x7fELF setpriv"
    assert stat.S_IMODE((c.path / "tools" / "libc.so.6").stat().st_mode) == 0o644
    assert c.host_problems() == []
    c._contents["tools/setpriv"] = b"\x7fELF setprix"
    assert c.host_problems() == ["tools/setpriv: content changed"]
    c._contents["tools/setpriv"] = b"\x7fELF setpriv"
    (c.path / "tools" / "extra").write_bytes(b"x")
    assert c.host_problems()[0] == "tools/extra: added"
