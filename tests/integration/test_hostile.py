"""Hostile and failing conditions on every runtime: each ends with a clear error (its type,
and a message naming the cause) within a bound, and leaves nothing behind (no container in
the engine, state folder, cgroup, nspawn /run file or process).

The bounds are generous correctness bounds, not benchmarks. SIGKILL of pytest and of an
xdist worker (the next session reaps) is in test_plugin_signals.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pytest_containersec.errors import (
    ContainerSecError,
    ContainerStartError,
    ExecTimeout,
    ImageNotFound,
    ProbeError,
    RuntimeUnavailable,
    UnsupportedSpec,
)
from pytest_containersec.linux import caps, hostinfo, session
from pytest_containersec.runtimes import RUNTIME_NAMES, Runtime
from pytest_containersec.runtimes.base import MAX_OUTPUT, PROBE_BUSYBOX
from pytest_containersec.runtimes.docker.docker import DockerRuntime
from pytest_containersec.runtimes.docker.docker_daemons import ROOTLESS, DockerDaemon
from pytest_containersec.runtimes.nspawn.nspawn import state_root
from pytest_containersec.runtimes.nspawn.nspawn_cgroup import CGROUP_ROOT
from pytest_containersec.runtimes.nspawn.nspawn_image import cache_key
from pytest_containersec.runtimes.podman.podman import PodmanRuntime
from pytest_containersec.runtimes.podman.podman_service import answers
from pytest_containersec.spec import DEFAULT_IMAGE, ContainerSpec

from . import hostile_helpers as h
from .conftest import runtime_or_skip

B = PROBE_BUSYBOX
MB = 1024 * 1024
FLOOD = 100 * MB
ONLY_DEFAULT_IMAGE = ("systemd-run",)  # runs units on its manager's root, no other image
T = TypeVar("T")


def timed(bound: float, call: Callable[[], T]) -> T:
    """``call()``, which must return or raise within ``bound`` seconds."""
    t0 = time.monotonic()
    try:
        return call()
    finally:
        took = time.monotonic() - t0
        assert took < bound, f"took {took:.1f}s, bound {bound:g}s"


def raises(exc: type[ContainerSecError], bound: float, call: Callable[[], object]) -> str:
    """``call`` raises ``exc`` within ``bound`` seconds; returns the message."""
    with pytest.raises(exc) as info:
        timed(bound, call)
    return str(info.value)


class Case:
    """One runtime under test: its adapter, the names its containers get, the pids seen."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rt: Runtime = runtime_or_skip(name)
        self.names = h.Names(name)
        self.pids: list[int] = []

    def nothing_left(self) -> None:
        found = h.leftovers(self.names, tuple(self.pids))
        assert found == [], f"{self.name} left behind:\n" + "\n".join(found)


@pytest.fixture(params=RUNTIME_NAMES)
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    c = Case(str(request.param))
    yield c
    c.nothing_left()


# -- the image does not exist ---------------------------------------------------------------


def test_missing_image(case: Case) -> None:
    image = "containersec/no-such-image:hostile"
    if case.name in ONLY_DEFAULT_IMAGE:
        msg = raises(UnsupportedSpec, 20, lambda: case.rt.start(ContainerSpec(image=image)))
    else:
        msg = raises(ImageNotFound, 20, lambda: case.rt.start(ContainerSpec(image=image)))
        assert "never pull" in msg
    assert case.name in msg
    assert image in msg or "image" in msg


# -- the container's command exits at once, or soon after the start -------------------------

EXITS = {
    "status-3": [B, "sh", "-c", "echo containersec-boom >&2; exit 3"],
    "no-such-binary": ["/no/such/binary-hostile"],
}


@pytest.mark.parametrize("how", EXITS)
def test_command_exits_at_once(case: Case, how: str) -> None:
    with pytest.raises(ContainerStartError) as info:
        timed(30, lambda: case.rt.start(ContainerSpec(command=EXITS[how])))
    err = info.value
    assert err.runtime == case.name
    assert case.name in str(err)
    if how == "status-3":
        if case.name == "systemd-run":  # the unit's status is in the message only
            assert "status=3" in str(err)
        else:
            assert err.exit_status == 3, str(err)
        assert "containersec-boom" in str(err)  # the container's own output says why
    else:
        assert "binary-hostile" in str(err)


def test_command_exits_soon_after_the_start(case: Case) -> None:
    spec = ContainerSpec(command=[B, "sh", "-c", "echo containersec-bye; sleep 1"])
    c = timed(30, lambda: case.rt.start(spec))
    case.pids.append(c.host_pid)
    deadline = time.monotonic() + 15
    while h.alive(c.host_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    msg = raises(ProbeError, 30, lambda: c.facts(refresh=True))
    assert case.name in msg
    assert "containersec-bye" in msg  # the logs tell what happened
    msg = raises(ContainerSecError, 30, lambda: c.exec([B, "true"], timeout=5))
    assert case.name in msg
    assert "containersec-bye" in timed(10, c.logs)
    timed(30, c.stop)


# -- the container floods stdout with 100 MB ---------------------------------------------------


def test_stdout_flood_stays_bounded(case: Case) -> None:
    flood = f"{B} head -c {FLOOD} /dev/zero | {B} tr '\\0' x"
    spec = ContainerSpec(command=[B, "sh", "-c", f"{flood}; echo; echo flood-done; exec {B} sleep 1000"])  # fmt: skip
    with h.peak_rss_growth() as growth:
        c = timed(30, lambda: case.rt.start(spec))
        case.pids.append(c.host_pid)
        try:
            f = timed(30, c.facts)
            # portable's default profile runs a DynamicUser= (a uid systemd picks)
            assert f.user.uid == 0 or (case.name == "portable" and f.declared["dynamic_user"])
            r = timed(60, lambda: c.exec([B, "head", "-c", str(FLOOD), "/dev/zero"]))
            assert r.rc == 0
            assert len(r.stdout) <= MAX_OUTPUT + 100  # capped, the rest drained and counted
            assert r.stdout.endswith(f"[containersec: {FLOOD - MAX_OUTPUT} more bytes dropped]")
            deadline = time.monotonic() + 60
            while "flood-done" not in (logs := timed(15, c.logs)):
                assert time.monotonic() < deadline, f"no flood-done in {logs[-200:]!r}"
                time.sleep(0.5)
            assert len(logs) <= 2 * MAX_OUTPUT
        finally:
            timed(30, c.stop)
    assert growth[0] < 150 * MB, f"peak RSS grew by {growth[0] / MB:.0f} MB"


# -- an exec hangs --------------------------------------------------------------------------------


def test_exec_that_hangs_is_killed(case: Case) -> None:
    with case.rt.start(ContainerSpec()) as c:
        case.pids.append(c.host_pid)
        msg = raises(ExecTimeout, 20, lambda: c.exec([B, "sleep", "987"], timeout=1))
        assert case.name in msg
        assert "987" in msg
        assert "timed out after 1s" in msg
        # a command that ignores SIGTERM and SIGINT
        stubborn = [B, "sh", "-c", f"trap '' TERM INT HUP; {B} sleep 986; :"]
        raises(ExecTimeout, 20, lambda: c.exec(stubborn, timeout=1))
        # a child in the background keeps stdout open after the command ended: every
        # engine returns once the command itself did (the child lives on until the stop)
        held = [B, "sh", "-c", f"{B} sleep 985 & echo started"]
        assert timed(15, lambda: c.exec(held, timeout=3)).stdout == "started\n"
        assert _gone(["sleep", "987"], ["sleep", "986"])
        # still usable afterwards
        assert timed(20, lambda: c.exec([B, "echo", "alive"], timeout=10)).stdout == "alive\n"
    assert _gone(["sleep", "985"])


def _gone(*tails: list[str], wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while any(_running(t) for t in tails):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _running(tail: list[str]) -> list[int]:
    """Live processes whose command line ends with ``tail`` (after the busybox path)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue
            if (
                argv[-len(tail) :] == tail
                and argv[0].endswith("busybox")
                and h.alive(int(entry.name))
            ):
                out.append(int(entry.name))
    return out


# -- the image's /bin/sh, cat and id are fakes that print a clean status ------------------------


@pytest.fixture(scope="module")
def fake_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    try:
        elf = h.fake_elf(tmp_path_factory.mktemp("fake"))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return h.fake_image_tar(elf)


def test_fake_tools_do_not_fool_the_facts(case: Case, fake_tar: bytes) -> None:
    tag = f"containersec/hostile-fake:{case.name}-{session.current().id}"
    if case.name in ONLY_DEFAULT_IMAGE:  # units run on the systemd instance's own root
        with pytest.raises(UnsupportedSpec, match="image"):
            case.rt.start(ContainerSpec(image=tag))
        return
    h.import_image(case.name, fake_tar, tag)
    profile = "trusted" if case.name == "portable" else "default"  # root, as the others
    try:
        with case.rt.start(ContainerSpec(image=tag, portable_profile=profile)) as c:
            case.pids.append(c.host_pid)
            lie = c.exec(["/bin/cat", "/proc/self/status"])
            assert lie.stdout == h.FAKE_STATUS  # the trap is real: the image's cat lies
            f = timed(30, c.facts)
            host = _host_status(c.host_pid)
            assert f.user.uid == 0
            assert f.capabilities.effective == tuple(sorted(caps.decode_mask(host["CapEff"])))
            assert f.capabilities.effective != ()  # not the fake's CapEff 0
            assert f.capabilities.bounding != ()
            assert f.no_new_privs is (host["NoNewPrivs"] == "1")
            assert f.no_new_privs is (case.name == "containerd")  # containerd's default: on
            assert [m for m in f.mismatches if m.source == "inside"] == []
    finally:
        h.remove_image(case.name, tag)
    assert not (state_root() / "images" / cache_key(tag)).exists()


def _host_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


# -- the rootless user is missing ---------------------------------------------------------------

ROOTLESS_NAMES = ("podman-rootless", ROOTLESS)
MISSING_USERS = {
    "containersec-no-such-user": "does not exist",
    "nobody": "range",  # exists, without /etc/subuid and /etc/subgid ranges
}


def _fresh_rootless(name: str) -> Runtime:
    """A new adapter (get_runtime's are cached, with the user resolved)."""
    if name == ROOTLESS:
        return DockerRuntime(name, daemon=DockerDaemon(name))
    return PodmanRuntime(rootless=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="as a user, rootless engines run as that user")
@pytest.mark.parametrize("user", MISSING_USERS)
@pytest.mark.parametrize("name", ROOTLESS_NAMES)
def test_rootless_user_missing(name: str, user: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hostinfo.ROOTLESS_USER_ENV, user)
    names = h.Names(name)
    rt = _fresh_rootless(name)
    t0 = time.monotonic()
    av = rt.availability()
    assert not av.available
    assert user in av.reason
    assert MISSING_USERS[user] in av.reason
    assert av.hint
    assert av.line().startswith(f"{name}: unavailable: ")
    with pytest.raises(RuntimeUnavailable) as info:
        rt.start(ContainerSpec())
    assert user in str(info.value)
    assert rt.reap() == 0
    if isinstance(rt, PodmanRuntime):  # it started no service, no daemon
        assert rt.service is None
    else:
        assert isinstance(rt, DockerRuntime)
        assert rt.daemon is not None
        assert not rt.daemon.started
    rt.close()
    assert time.monotonic() - t0 < 20
    monkeypatch.undo()  # the real user again, to list its containers
    assert h.leftovers(names, wait=0) == []


INNER_TEST = "def test_x(containersec_container):\n    pass\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="as a user, rootless engines run as that user")
def test_rootless_user_missing_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(INNER_TEST)
    env = {**os.environ, hostinfo.ROOTLESS_USER_ENV: "containersec-no-such-user"}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            f"--containersec-runtime={','.join(ROOTLESS_NAMES)}", "test_x.py"]  # fmt: skip
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    out = r.stdout + r.stderr
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, out
    for name in ROOTLESS_NAMES:
        assert f"--containersec-runtime {name}: unavailable: " in out, out
    assert "'containersec-no-such-user' does not exist" in out
    assert hostinfo.ROOTLESS_USER_ENV in out  # the fix


# -- the daemon stops mid-session -----------------------------------------------------------------


@pytest.fixture
def own_dockerd() -> Iterator[h.Dockerd]:
    runtime_or_skip("docker")
    d = h.Dockerd()
    try:
        d.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        save = subprocess.run(["docker", "save", DEFAULT_IMAGE], capture_output=True,
                              timeout=120, check=True).stdout  # fmt: skip
        h.docker_cli(d.url, "load", stdin=save)
        yield d
    finally:
        d.cleanup()
        assert not d.data.exists()
        assert not d.run.exists()


def test_daemon_stops_mid_session(own_dockerd: h.Dockerd) -> None:
    d = own_dockerd
    rt = DockerRuntime("docker", base_url=d.url)
    c = rt.start(ContainerSpec())
    assert c.facts().user.uid == 0
    cid, pid = c.id, c.host_pid
    d.kill()
    for call in (
        lambda: c.exec([B, "true"]),
        lambda: c.facts(refresh=True),
        c.declared,
        c.stop,
        lambda: rt.start(ContainerSpec()),
        rt.reap,
    ):
        msg = raises(RuntimeUnavailable, 10, call)
        assert "docker is unavailable" in msg
        assert f"the daemon at {d.url} stopped answering" in msg
        assert "(fix: start the daemon" in msg
    assert "logs unavailable" in timed(10, c.logs)
    # It comes back: the container it kept is removed by the same handle, nothing is left.
    d.start()
    timed(30, c.stop)
    rt.close()
    assert not h.alive(pid)
    assert h.docker_ps(d.url) == []
    d.stop()
    assert [cg for cg in CGROUP_ROOT.glob(f"*/docker/{cid}")] == []


def test_killed_daemon_leaves_nothing_once_cleaned(own_dockerd: h.Dockerd) -> None:
    """What the daemon's death leaves (shim, container, cgroups) is what the test reaps."""
    d = own_dockerd
    rt = DockerRuntime("docker", base_url=d.url)
    c = rt.start(ContainerSpec())
    cid, pid = c.id, c.host_pid
    d.kill()
    rt.close()  # must not raise; the container cannot be removed without its daemon
    assert h.alive(pid)  # the engine's shim keeps it running: a real leftover to clean
    d.cleanup()
    assert not h.alive(pid)
    assert list(CGROUP_ROOT.glob(f"*/docker/{cid}")) == []


@pytest.mark.parametrize("name", ["podman", "podman-rootless"])
def test_podman_service_stops_mid_session(name: str) -> None:
    runtime_or_skip(name)
    names = h.Names(name)
    rt = PodmanRuntime(rootless=name == "podman-rootless")
    c = rt.start(ContainerSpec())
    service = rt.service
    if service is None or service.pid is None:
        rt.close()
        pytest.skip("a Podman service of the system answers: this test kills only its own")
    os.kill(service.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while answers(service.socket, timeout=0.5) and time.monotonic() < deadline:
        time.sleep(0.05)
    for call in (
        lambda: c.exec([B, "true"]),
        lambda: c.facts(refresh=True),
        c.declared,
        c.stop,
        lambda: rt.start(ContainerSpec()),
        rt.reap,
    ):
        msg = raises(RuntimeUnavailable, 10, call)
        assert f"{name} is unavailable: the Podman API at {service.socket} stopped answering" in msg
    assert isinstance(timed(10, c.logs), str)
    timed(20, rt.close)  # its container cannot be removed now; the service's files go
    assert not service.socket.exists()
    # A new service (the next session's) removes what the dead one left.
    again = PodmanRuntime(rootless=name == "podman-rootless")
    timed(30, lambda: again.remove(c.id))
    again.close()
    assert h.leftovers(names, (c.host_pid,)) == []


# -- a probed path is a FIFO (opening it would block until a peer comes) ---------------------


def test_fifo_at_a_probed_path_does_not_hang_the_facts(case: Case) -> None:
    with case.rt.start(ContainerSpec()) as c:
        case.pids.append(c.host_pid)
        assert c.exec([B, "mkfifo", "-m", "600", "/tmp/containersec-fifo"]).rc == 0
        keys = ("/tmp/containersec-fifo:r", "/tmp/containersec-fifo:w")
        f = timed(15, lambda: c.facts(access=keys))
        assert all(f.access[k].allowed for k in keys)  # root may open it either way
