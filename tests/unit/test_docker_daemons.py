"""The daemon manager of docker-userns/docker-rootless, driven with a fake daemon (a tiny
HTTP-on-a-unix-socket server): start on demand, leases, stop, reap, Ctrl-C; the flags; pid
translation on a recorded-style fake /proc. No Docker needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec.errors import RuntimeUnavailable
from pytest_containersec.linux import hostinfo, session
from pytest_containersec.runtimes import RUNTIME_NAMES, _create, procs
from pytest_containersec.runtimes.docker import docker_daemons as dd
from pytest_containersec.runtimes.docker.docker import DockerRuntime
from pytest_containersec.runtimes.podman import podman_service as svc

FAKE_DAEMON = textwrap.dedent(
    """
    import os, socket, subprocess, sys
    sock, pidfile, child = sys.argv[1], sys.argv[2], sys.argv[3] == "child"
    if child:  # like dockerd's containerd: its own session, killed with the tree
        subprocess.Popen(["sleep", "300"], start_new_session=True)
    open(pidfile, "w").write(str(os.getpid()))
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)
    s.listen(8)
    while True:
        c, _ = s.accept()
        c.recv(1024)
        c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nOK")
        c.close()
    """
)
DEAD = "999999999.1"  # an owner token no live process has


def fake_config(base: Path, script: str = FAKE_DAEMON, child: bool = False) -> dd.DaemonConfig:
    base.mkdir(exist_ok=True)
    sock, pidfile = base / "fake.sock", base / "fake.pid"
    argv = (sys.executable, "-c", script, str(sock), str(pidfile), "child" if child else "-")
    return dd.DaemonConfig("fake", False, sock, base, pidfile, argv, cleanup_dirs=(base / "x",))


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "run"
    for state in (tmp_path / "run").glob("*.json"):  # never leave a fake daemon running
        record = dd.Record.read(state)
        if record is not None and record.running:
            procs.stop_tree(record.pid, record.token)


def daemon(base: Path, script: str = FAKE_DAEMON, child: bool = False) -> dd.DockerDaemon:
    return dd.DockerDaemon("fake", lambda: fake_config(base, script, child))


def pid_of(base: Path) -> int:
    return int(json.loads((base / "fake.json").read_text())["pid"])


def alive(pid: int) -> bool:
    return procs.running(pid, session.owner_token(pid))


# -- lifecycle --------------------------------------------------------------------------


def test_starts_on_demand_and_the_last_lease_stops_it(base: Path) -> None:
    first, second = daemon(base), daemon(base)
    assert not first.answers()
    assert first.ensure() == f"unix://{base / 'fake.sock'}"
    assert first.started
    assert first.answers()
    record = json.loads((base / "fake.json").read_text())
    assert record["token"] == session.owner_token(record["pid"])
    assert record["owner"] == session.current().owner
    pid = record["pid"]
    assert os.getsid(pid) == pid  # own session: pytest's Ctrl-C never reaches it
    # a second user (another xdist worker) shares it under a lease of its own
    second.ensure(owner=session.owner_token(os.getppid()))
    assert not second.started
    assert len(list((base / "fake.leases").iterdir())) == 2
    proc = first._proc  # the starter lets go of its child, which serves on: we reap it below
    assert proc is not None
    first.release()  # the starter leaves first: the other user still needs it
    assert alive(pid)
    assert second.answers()
    second.release()
    assert not alive(pid)
    assert sorted(p.name for p in base.iterdir()) == ["fake.lock"]
    second.release()  # idempotent
    proc.wait(timeout=10)


def test_a_daemon_it_did_not_start_is_used_and_left_alone(base: Path) -> None:
    proc = subprocess.Popen(fake_config(base).argv, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not svc.answers(base / "fake.sock") and time.monotonic() < deadline:
            time.sleep(0.02)
        d = daemon(base)
        d.ensure()
        assert not d.started
        d.release()
        assert d.reap() == 0
        assert proc.poll() is None
        assert d.answers()
    finally:
        proc.kill()
        proc.wait()


def test_a_daemon_that_exits_is_reported_with_its_log(base: Path) -> None:
    d = daemon(base, script="import sys; print('bad flag --foo'); sys.exit(3)")
    with pytest.raises(RuntimeUnavailable) as info:
        d.ensure()
    assert "exited" in info.value.reason
    assert "bad flag --foo" in info.value.reason
    assert not (base / "fake.json").exists()
    assert not any((base / "fake.leases").glob("*"))
    assert (base / "fake.log").exists()  # kept for the user to read


def test_a_daemon_that_never_answers_times_out(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dd, "START_TIMEOUT", 0.5)
    d = daemon(base, script="import time; print('waiting'); time.sleep(300)")
    with pytest.raises(RuntimeUnavailable) as info:
        d.ensure()
    assert "did not answer in 0.5s" in info.value.reason
    assert not (base / "fake.json").exists()


def test_reap_stops_a_daemon_whose_sessions_are_dead(base: Path) -> None:
    d = daemon(base, child=True)
    d.ensure(owner=DEAD)  # as if started by a session that was killed
    pid = pid_of(base)
    child = procs.descendants(pid)
    assert child
    assert all(os.getsid(c) == c for c in child)
    proc, d._proc = d._proc, None  # forget we started it: a later session reaps it by pid + token
    d._lease = None
    assert proc is not None
    assert daemon(base).reap() == 1
    proc.wait(timeout=10)  # our child: collect it (a killed session's init would)
    assert not alive(pid)
    assert not any(alive(c) for c in child)
    assert not (base / "fake.sock").exists()
    assert not (base / "fake.json").exists()
    assert not (base / "fake.pid").exists()
    assert daemon(base).reap() == 0


def test_reap_leaves_a_daemon_with_a_live_lease(base: Path) -> None:
    d = daemon(base)
    d.ensure()
    assert daemon(base).reap() == 0
    assert d.answers()
    d.release()
    assert not d.answers()


def test_a_killed_session_leaves_a_daemon_that_survives_ctrl_c_and_is_reaped(
    base: Path,
) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_docker_daemons import daemon
        from pathlib import Path
        d = daemon(Path({str(base)!r}))
        print(d.ensure(), flush=True)
        time.sleep(300)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("unix://")
    pid = pid_of(base)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the session's terminal
    proc.wait(10)
    proc.stdout.close()
    assert alive(pid)  # it did not die with the session...
    assert daemon(base).reap() == 1  # ...and the next session stops it
    assert not alive(pid)


# -- the setup script's entry point ------------------------------------------------------


# `up` leaves the daemon running for the setup shell by design: in a CLI process that exits
# at once; here, in-process, its Popen is dropped while the daemon still runs.
@pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning")
def test_main_up_and_down_hold_a_lease_for_the_setup_shell(
    base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(dd.CONFIGS, "docker-userns", lambda: fake_config(base))
    shell = str(os.getppid())
    assert dd.main(["up", "docker-userns", "--lease-pid", shell]) == 0
    assert capsys.readouterr().out.strip() == f"unix://{base / 'fake.sock'}"
    pid = pid_of(base)
    assert [p.name for p in (base / "fake.leases").iterdir()] == [session.owner_token(int(shell))]
    assert dd.main(["down", "docker-userns", "--lease-pid", shell]) == 0
    assert not alive(pid)
    for bad in (["up"], ["up", "nope"], ["start", "docker-userns"]):
        with pytest.raises(SystemExit) as info:
            dd.main(bad)
        assert info.value.code == 2


# -- flags -------------------------------------------------------------------------------


def test_userns_daemon_flags() -> None:
    cfg = dd.userns_config()
    argv = cfg.argv
    assert argv[0].endswith("dockerd")
    for flag in ("--userns-remap=default", "--bridge=none", "--iptables=false",
                 "--host=unix:///run/containersec/docker-userns.sock",
                 f"--data-root={session.STATE_DIR / 'docker-userns'}",
                 "--exec-root=/run/containersec/docker-userns-exec",
                 "--pidfile=/run/containersec/docker-userns.pid"):  # fmt: skip
        assert flag in argv
    assert any(a.startswith("--config-file=/run/containersec/") for a in argv)
    assert cfg.user is None
    assert not cfg.rootless


def test_rootless_daemon_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    user = svc.ServiceUser("alice", 1234, 1234, "/home/alice", tmp_path / "xdg", drop=True)
    monkeypatch.setattr(svc.ServiceUser, "for_mode", classmethod(lambda cls, rootless: user))
    cfg = dd.rootless_config()
    assert cfg.rootless
    assert cfg.user is user
    assert Path(cfg.argv[0]).name == "dockerd-rootless.sh"
    assert f"--host=unix://{tmp_path}/xdg/docker.sock" in cfg.argv
    assert "--data-root=/home/alice/.local/share/docker" in cfg.argv
    assert {"--bridge=none", "--iptables=false"} <= set(cfg.argv)
    assert cfg.env is not None
    assert cfg.env["XDG_RUNTIME_DIR"] == str(tmp_path / "xdg")
    assert cfg.env["DOCKERD_ROOTLESS_ROOTLESSKIT_NET"] == "host"
    assert cfg.env["DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER"] == "none"
    assert cfg.env["HOME"] == "/home/alice"


def test_rootless_without_its_user_is_unavailable_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(cls: object, rootless: bool) -> None:
        raise RuntimeUnavailable("podman-rootless", "user 'x' does not exist", "make setup")

    monkeypatch.setattr(svc.ServiceUser, "for_mode", classmethod(missing))
    rt = _create("docker-rootless")
    av = rt.availability()
    assert not av.available
    assert av.runtime == "docker-rootless"
    assert "does not exist" in av.reason
    assert rt.reap() == 0


# -- the registry and the Docker adapter's hook ------------------------------------------


def test_registry_has_both_after_nspawn() -> None:
    assert RUNTIME_NAMES[RUNTIME_NAMES.index("nspawn") + 1 :][:2] == (
        "docker-userns",
        "docker-rootless",
    )
    for name in ("docker-userns", "docker-rootless"):
        rt = _create(name)
        assert isinstance(rt, DockerRuntime)
        assert rt.name == name
        assert rt.daemon is not None
        assert rt.daemon.runtime == name
        assert rt.daemon.rootless == (name == "docker-rootless")


def test_availability_starts_nothing_and_close_releases(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dd, "_dockerd_version", lambda: "Docker 99.0")
    monkeypatch.setattr(hostinfo, "static_busybox", lambda: "/bin/busybox")
    d = daemon(base)
    rt = DockerRuntime("fake", daemon=d)
    av = rt.availability()
    assert av.available
    assert "Docker 99.0" in av.version
    assert not d.answers()
    assert not (base / "fake.json").exists()
    d.ensure()  # what the client property does first
    pid = pid_of(base)
    rt.close()
    assert not alive(pid)


# -- processes ---------------------------------------------------------------------------


def fake_proc(root: Path, procs: dict[int, tuple[int, list[int], str]]) -> Path:
    """pid -> (ppid, NSpid, pid-namespace link) in a /proc look-alike."""
    for pid, (ppid, nspid, ns) in procs.items():
        d = root / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "stat").write_text(f"{pid} (x y) S {ppid} {pid} {pid} 0 -1\n")
        ids = "\t".join(map(str, nspid))
        (d / "status").write_text(f"Name:\tx\nNSpid:\t{ids}\n")
        (d / "ns" / "pid").symlink_to(ns)
    (root / "self").symlink_to(str(next(iter(procs))))
    return root


def test_translate_pid_daemon_in_our_namespace(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {
        10: (1, [10], "pid:[1]"),          # us
        20: (1, [20], "pid:[1]"),          # dockerd / rootlesskit without --pidns
        21: (20, [21], "pid:[1]"),         # containerd / rootlesskit child
        30: (1, [30, 1], "pid:[2]"),       # the container's init
    })  # fmt: skip
    assert dd.translate_pid(30, 20, proc) == 30
    assert dd.translate_pid(30, None, proc) == 30
    assert procs.descendants(20, proc) == [21]


def test_translate_pid_daemon_in_a_pid_namespace_of_its_own(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {
        10: (1, [10], "pid:[1]"),            # us
        20: (1, [20], "pid:[1]"),            # rootlesskit --pidns (parent)
        21: (20, [21, 1], "pid:[5]"),        # its child: pid 1 of the daemon's namespace
        22: (21, [22, 7], "pid:[5]"),        # dockerd
        40: (21, [40, 31, 1], "pid:[6]"),    # the container's init; dockerd reports 31
        31: (1, [31], "pid:[1]"),            # an unrelated host process that is pid 31 for us
    })  # fmt: skip
    assert dd.translate_pid(31, 20, proc) == 40
    assert dd.translate_pid(99, 20, proc) == 99  # unknown: unchanged


def test_stop_tree_of_a_dead_process_is_harmless() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    procs.stop_tree(proc.pid, session.owner_token(proc.pid))
