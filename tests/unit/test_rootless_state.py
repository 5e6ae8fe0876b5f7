"""The rootless user is not trusted by root: what it plants in its own runtime folder
(symlinks to host files, forged records naming host processes, FIFOs) and what its daemon
reports (pids) never make root write, truncate, chown, delete, read unboundedly or kill
anything outside that user's own. The user is simulated in tmp folders (a fake daemon runs
as ``nobody``); each test fails on the code before the fix."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec.errors import RuntimeUnavailable
from pytest_containersec.linux import session
from pytest_containersec.runtimes import host_files, procs
from pytest_containersec.runtimes.docker import docker_daemons as dd
from pytest_containersec.runtimes.docker.docker import DockerRuntime
from pytest_containersec.runtimes.nspawn import nspawn_image
from pytest_containersec.runtimes.oci import oci
from pytest_containersec.runtimes.podman import podman_service as svc

from .test_docker_daemons import FAKE_DAEMON

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root versus an unprivileged user")
NOBODY = 65534
DEAD = "999999999.1"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """A 0755 root folder outside pytest's 0700 tmp tree (``nobody`` must reach its xdg)."""
    top = Path(tempfile.mkdtemp(prefix="containersec-hostile-"))
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A host process the user would like root to kill."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def hostile_user(host: Path, monkeypatch: pytest.MonkeyPatch) -> svc.ServiceUser:
    """``nobody`` as the rootless user, its runtime folder under ``host``; root's records
    go to ``host/root-run``."""
    xdg = host / "xdg"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, NOBODY, NOBODY)
    (xdg / "containersec").mkdir(mode=0o700)
    os.chown(xdg / "containersec", NOBODY, NOBODY)
    user = svc.ServiceUser("nobody", NOBODY, NOBODY, str(host), xdg, drop=True)
    monkeypatch.setattr(svc.ServiceUser, "for_mode", classmethod(lambda cls, rootless: user))
    monkeypatch.setattr(svc, "ROOTFUL_RUN_DIR", host / "root-run")
    return user


def fake_rootless(user: svc.ServiceUser) -> dd.DaemonConfig:
    cfg = dd.rootless_config()
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # nobody runs it
    argv = (python, "-c", FAKE_DAEMON, str(cfg.socket), str(cfg.pidfile), "-")
    return dataclasses.replace(cfg, argv=argv, env={"PATH": svc.SAFE_PATH},
                               require=lambda: None)  # fmt: skip


def stop_leftover(cfg: dd.DaemonConfig) -> None:
    record = dd.Record.read(cfg.path(".json"))
    if record is not None and record.running:
        procs.stop_tree(record.pid, record.token)


# -- records, logs, daemon.json: root's, not the user's ----------------------------------


def test_rootless_daemon_never_writes_through_nor_trusts_the_users_folder(
    host: Path, monkeypatch: pytest.MonkeyPatch, victim: subprocess.Popen[bytes]
) -> None:
    user = hostile_user(host, monkeypatch)
    cfg = fake_rootless(user)
    mine = user.runtime_dir / "containersec"
    assert cfg.run_dir == host / "root-run" / f"rootless-{NOBODY}"
    # the user plants, where the records used to be: links to host files, a forged record
    # naming a host process with its real start-time token, and a dead "owner"
    log_victim, json_victim = host / "log-victim", host / "json-victim"
    for f in (log_victim, json_victim):
        f.write_text("host data\n")
    (mine / "docker-rootless.log").symlink_to(log_victim)
    (mine / "docker-rootless.daemon.json").symlink_to(json_victim)
    forged = {"pid": victim.pid, "token": session.owner_token(victim.pid), "owner": DEAD}
    (mine / "docker-rootless.json").write_text(json.dumps(forged))
    d = dd.DockerDaemon(dd.ROOTLESS, lambda: cfg)
    try:
        assert d.ensure() == f"unix://{cfg.socket}"
        record = json.loads(cfg.path(".json").read_text())
        assert os.stat(f"/proc/{record['pid']}").st_uid == NOBODY  # the daemon is the user's
        st = os.lstat(cfg.run_dir)
        assert (st.st_uid, stat.S_IMODE(st.st_mode) & 0o022) == (0, 0)
        for name in (".json", ".log", ".lock", ".daemon.json"):
            assert os.lstat(cfg.path(name)).st_uid == 0
        assert stat.S_IMODE(os.stat(cfg.path(".daemon.json")).st_mode) == 0o644  # readable
        d.release()
    finally:
        stop_leftover(cfg)
    assert log_victim.read_text() == json_victim.read_text() == "host data\n"
    assert victim.poll() is None  # the forged record named it: never stopped
    assert not cfg.socket.exists()


def test_a_users_folder_swapped_for_a_symlink_is_not_chowned_nor_emptied(
    host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = hostile_user(host, monkeypatch)
    cfg = fake_rootless(user)
    mine = user.runtime_dir / "containersec"
    d = dd.DockerDaemon(dd.ROOTLESS, lambda: cfg)
    try:
        d.ensure()
        # while it runs, the user replaces its folder with a link to a root folder that
        # has a "docker-rootless-kit" of its own (a cleanup dir root removes at stop)
        target = host / "root-dir"
        (target / "docker-rootless-kit").mkdir(parents=True)
        (target / "docker-rootless-kit" / "precious").write_text("keep\n")
        shutil.rmtree(mine)
        mine.symlink_to(target)
        d.release()
        assert (target / "docker-rootless-kit" / "precious").read_text() == "keep\n"
        # the next session would chown the link's target to the user: it refuses instead
        with pytest.raises(RuntimeUnavailable) as info:
            dd.DockerDaemon(dd.ROOTLESS, lambda: cfg).ensure()
        assert f"{mine} is not a real folder" in info.value.reason
        assert os.stat(target).st_uid == 0
    finally:
        stop_leftover(cfg)


def test_a_podman_record_forged_in_the_users_folder_stops_nothing(
    host: Path, monkeypatch: pytest.MonkeyPatch, victim: subprocess.Popen[bytes]
) -> None:
    user = hostile_user(host, monkeypatch)
    mine = user.runtime_dir / "containersec"
    forged = {"pid": victim.pid, "token": session.owner_token(victim.pid), "owner": DEAD,
              "socket": str(mine / "podman-x-1.sock"), "log": str(mine / "podman-x-1.log")}  # fmt: skip
    (mine / "podman-x-1.json").write_text(json.dumps(forged))
    assert svc.run_dir(user) == host / "root-run" / f"rootless-{NOBODY}"
    assert svc.reap_services(True) == 0
    assert victim.poll() is None


def test_a_token_of_another_process_never_vouches_for_a_pid(
    victim: subprocess.Popen[bytes],
) -> None:
    """A record ``{"pid": VICTIM, "token": "<some live pid of mine>.<its start>"}``."""
    mine = session.owner_token()
    assert not procs.running(victim.pid, mine)
    assert not procs.terminate(victim.pid, mine, timeout=0.1)
    procs.stop_tree(victim.pid, mine)
    assert victim.poll() is None
    assert procs.running(victim.pid, session.owner_token(victim.pid))


# -- pids a rootless daemon reports ------------------------------------------------------


def test_a_rootless_daemon_cannot_name_a_host_process_as_its_container(
    host: Path, monkeypatch: pytest.MonkeyPatch, victim: subprocess.Popen[bytes]
) -> None:
    user = hostile_user(host, monkeypatch)
    cfg = fake_rootless(user)
    d = dd.DockerDaemon(dd.ROOTLESS, lambda: cfg)
    try:
        d.ensure()
        record = dd.Record.read(cfg.path(".json"))
        assert record is not None
        assert d.host_pid(victim.pid) is None  # root's process, not the user's
        assert d.host_pid(1) is None
        assert d.host_pid(record.pid) == record.pid  # one of the user's
        rt = DockerRuntime(dd.ROOTLESS, daemon=d)
        rt.rootless = True
        assert not rt.may_kill(victim.pid)
        assert rt.may_kill(record.pid)  # the user's own process
        d.release()
    finally:
        stop_leftover(cfg)


def test_an_exec_timeout_kills_only_what_the_engine_may_name(
    victim: subprocess.Popen[bytes],
) -> None:
    # pid="host": the container shares our pid namespace; the engine reports the victim
    oci.kill_session(victim.pid, os.getpid(), allowed=lambda pid: False)
    assert victim.poll() is None


# -- bounded reads, never through a link -------------------------------------------------


def test_records_and_logs_are_read_bounded_and_never_from_a_fifo_or_link(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real").write_text('{"pid": 1, "token": "1.1"}')
    out: list[object] = []
    worker = threading.Thread(
        target=lambda: out.extend([procs.tail(fifo), dd.Record.read(fifo)]), daemon=True
    )
    worker.start()
    worker.join(5)
    if worker.is_alive():  # the old code blocks in open(): unblock it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO planted as a log or record blocked")
    assert out == ["(no log)", None]
    assert dd.Record.read(tmp_path / "link") is None
    big = tmp_path / "big.log"
    with big.open("wb") as f:
        f.truncate(64 << 20)  # a sparse 64 MiB log: only its tail is read
        f.seek(0, os.SEEK_END)
        f.write(b"\nlast line\n")
    assert procs.tail(big, 1) == "last line"
    assert host_files.read_small(big) is None


# -- rootfs copies: an image's symlinks are not followed to the host -----------------------


def test_engine_marker_removal_does_not_follow_the_images_run_link(tmp_path: Path) -> None:
    host_run = tmp_path / "host-run"
    host_run.mkdir()
    (host_run / ".containerenv").write_text("")  # an empty host file of that name
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "run").symlink_to(host_run)  # the image's /run -> a host folder
    (root / ".dockerenv").write_text("")
    nspawn_image._drop_engine_marker(root)
    assert (host_run / ".containerenv").exists()
    assert not (root / ".dockerenv").exists()
    (root / "run").unlink()
    (root / "run").mkdir()
    (root / "run" / ".containerenv").write_text("")
    nspawn_image._drop_engine_marker(root)
    assert not (root / "run" / ".containerenv").exists()
