"""The host side of the agents' run folder against a container that rewrites it.

A fake agent (a thread doing what a root container can do in its bind-mounted folder:
rename, plant symlinks and FIFOs, write forged pids) talks to the real AgentClient /
UnitAgent. Each test fails on the code before the hardening: it deleted, wrote, chowned
or killed through what the container planted.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_containersec.errors import ExecTimeout
from pytest_containersec.runtimes import shared_dir
from pytest_containersec.runtimes.nspawn.nspawn_agent import AgentClient
from pytest_containersec.runtimes.systemd import systemd_run_host as sdhost
from pytest_containersec.runtimes.systemd.systemd_run import UnitAgent

Hostile = Callable[[Path, str], None]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def reply(d: Path, out: bytes, rc: bytes) -> None:
    for name, data in (("out", out), ("err", b""), ("rc", rc)):
        fd = os.open(d / name, os.O_WRONLY)
        os.write(fd, data)
        os.close(fd)


class FakeAgent(threading.Thread):
    """Serves ``count`` requests of ``run`` with ``on_request(run, id)``."""

    def __init__(
        self, run: Path, on_request: Hostile, count: int = 1,
        before_ready: Callable[[Path], None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.run_dir, self.on_request, self.count = run, on_request, count
        self.before_ready = before_ready
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            req = os.open(self.run_dir / "req", os.O_RDWR)  # the agent's `exec 3<>"$run/req"`
            if self.before_ready is not None:
                self.before_ready(self.run_dir)
            fd = os.open(self.run_dir / "ready", os.O_WRONLY)
            os.write(fd, b"ready\n")
            os.close(fd)
            buf = b""
            for _ in range(self.count):
                while b"\n" not in buf:
                    buf += os.read(req, 64)
                line, buf = buf.split(b"\n", 1)
                self.on_request(self.run_dir, line.decode())
        except BaseException as exc:  # reported by the test
            self.error = exc


@contextlib.contextmanager
def talking(client: AgentClient, agent: FakeAgent) -> Iterator[AgentClient]:
    agent.start()
    pidfd = os.pidfd_open(os.getpid())
    try:
        assert client.wait_ready(pidfd, 5, ["fake"])
        yield client
    finally:
        os.close(pidfd)
        client.close()


def nspawn_client(tmp_path: Path) -> AgentClient:
    (tmp_path / "state").mkdir()
    client = AgentClient("nspawn", tmp_path / "state" / "run")
    client.prepare([])
    return client


def victim_dir(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("host file\n")
    return victim


def test_a_request_folder_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = victim_dir(tmp_path)

    def hostile(run: Path, rid: str) -> None:
        (run / rid).rename(run / "moved")
        (run / rid).symlink_to(victim)
        reply(run / "moved", b"hi", b"0\n")

    client = nspawn_client(tmp_path)
    with talking(client, FakeAgent(client.run, hostile)):
        result = client.exec(["x"], 5, 0)
    assert (result.rc, result.stdout) == (0, "hi")
    assert (victim / "keep").read_text() == "host file\n"
    assert sorted(os.listdir(victim)) == ["keep"]


def test_a_request_fifo_swapped_for_a_symlink_is_not_written(tmp_path: Path) -> None:
    target = tmp_path / "host-file"
    target.write_text("host file\n")

    def before_ready(run: Path) -> None:
        (run / "req").rename(run / "req.real")  # the agent keeps reading the real FIFO
        (run / "req").symlink_to(target)

    def serve(run: Path, rid: str) -> None:
        reply(run / rid, b"ok", b"0\n")

    client = nspawn_client(tmp_path)
    agent = FakeAgent(client.run, serve, before_ready=before_ready)
    with talking(client, agent), contextlib.suppress(ExecTimeout):
        assert client.exec(["x"], 3, 0).stdout == "ok"
    assert target.read_text() == "host file\n"


def test_a_pid_file_planted_as_a_fifo_does_not_hang_the_host(tmp_path: Path) -> None:
    def hostile(run: Path, rid: str) -> None:
        os.mkfifo(run / rid / "pid")  # never written: a plain read would block forever

    client = nspawn_client(tmp_path)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.exec(["x"], 0.3, 0)
        except BaseException as exc:
            outcome.append(exc)

    with talking(client, FakeAgent(client.run, hostile)):
        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "the host blocked on a FIFO the container planted"
    assert outcome
    assert isinstance(outcome[0], ExecTimeout)


def unit_agent(tmp_path: Path) -> UnitAgent:
    inst = sdhost.SystemdInstance("host", tmp_path / "inst")
    inst.state.mkdir(mode=0o700)
    inst.run_host.mkdir(mode=0o711)
    ua = UnitAgent(inst.run_host / "containersec-x-systemd-run-1", inst)
    ua.prepare([])
    return ua


def test_a_forged_pid_on_the_rc_fifo_kills_nothing_outside_the_unit(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    main = subprocess.Popen(["sleep", "60"])
    held: list[int] = []

    def hostile(run: Path, rid: str) -> None:
        fd = os.open(run / rid / "rc", os.O_WRONLY)
        os.write(fd, f"{victim.pid}\n".encode())  # "my command's pid", then hang
        held.append(fd)

    ua = unit_agent(tmp_path)
    try:
        with talking(ua, FakeAgent(ua.run, hostile)), pytest.raises(ExecTimeout):
            ua.exec(["x"], 0.5, main.pid)
        time.sleep(0.1)
        assert victim.poll() is None, "the host killed a process the unit named"
    finally:
        for fd in held:
            os.close(fd)
        for p in (victim, main):
            p.kill()
            p.wait()


@needs_root
def test_unit_files_are_handed_over_without_following_symlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "host-file"
    target.write_text("host file\n")
    ua = unit_agent(tmp_path)
    real_chown = os.chown

    def racing_chown(path: object, *args: object, **kwargs: object) -> None:
        """The unit acts as soon as the host hands it its request folder."""
        if isinstance(path, str | Path) and Path(path) == ua.run / "1":
            (ua.run / "1" / "argv").unlink()
            (ua.run / "1" / "argv").symlink_to(target)
        real_chown(path, *args, **kwargs)  # type: ignore[arg-type]

    def serve(run: Path, rid: str) -> None:
        reply(run / rid, b"ok", b"0\n0\n")

    ua.grant(12345, 12345)
    monkeypatch.setattr(os, "chown", racing_chown)
    with talking(ua, FakeAgent(ua.run, serve)):
        assert ua.exec(["x"], 5, 0).stdout == "ok"
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert os.stat(ua.run).st_uid == 12345


# -- the helpers ------------------------------------------------------------------------


def test_open_in_refuses_symlinks_and_other_kinds(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    fd = shared_dir.open_dir(str(tmp_path))
    try:
        with pytest.raises(OSError):  # ELOOP: never through a symlink
            shared_dir.open_in(fd, "link", os.O_RDONLY | os.O_NONBLOCK, stat.S_ISFIFO)
        with pytest.raises(shared_dir.Tampered):
            shared_dir.open_in(fd, "file", os.O_RDONLY | os.O_NONBLOCK, stat.S_ISFIFO)
        os.close(shared_dir.open_in(fd, "fifo", os.O_RDONLY | os.O_NONBLOCK, stat.S_ISFIFO))
        assert shared_dir.read_small(fd, "fifo") is None
        (tmp_path / "zero").symlink_to("/dev/zero")
        assert shared_dir.read_small(fd, "zero") is None
        (tmp_path / "big").write_bytes(b"7" * 10_000)
        assert shared_dir.read_small(fd, "big", 8) == b"77777777"
    finally:
        os.close(fd)


def test_remove_if_same_leaves_what_the_names_point_to(tmp_path: Path) -> None:
    victim = victim_dir(tmp_path)
    run = tmp_path / "run"
    (run / "1" / "sub").mkdir(parents=True)
    (run / "1" / "link").symlink_to(victim)
    (run / "1" / "sub" / "link").symlink_to(victim / "keep")
    run_fd, dir_fd = shared_dir.open_dir(str(run)), shared_dir.open_dir(str(run / "1"))
    try:
        (run / "1").rename(run / "moved")
        (run / "1").symlink_to(victim)  # the name now points at a host folder
        shared_dir.remove_if_same(run_fd, "1", dir_fd)
    finally:
        os.close(run_fd)
        os.close(dir_fd)
    assert sorted(os.listdir(victim)) == ["keep"]
    assert os.listdir(run / "moved") == []  # the folder the host made: emptied
    assert (run / "1").is_symlink()  # not the host's: left to the state folder's removal


def test_a_podman_service_record_names_only_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rootless service's record lives in the unprivileged user's folder: the reaper
    (root) once unlinked any path that merely started with that folder's name."""
    import json

    from pytest_containersec.runtimes.podman import podman_service as svc

    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("host file\n")
    own = run / "podman-abc-1.sock"
    own.write_text("")
    dead = "999999999.0"  # no such process: the owner session is dead
    record = {"pid": 999999999, "token": dead, "owner": dead}
    (run / "podman-abc-1.json").write_text(json.dumps({**record, "socket": str(own),
                                                       "log": f"{run}/../victim"}))  # fmt: skip
    for name in ("run_dir", "socket_dir", "trusted_base"):
        monkeypatch.setattr(svc, name, lambda user: run)
    svc.reap_services(False)
    assert victim.read_text() == "host file\n"
    assert not own.exists()
    assert os.listdir(run) == []
