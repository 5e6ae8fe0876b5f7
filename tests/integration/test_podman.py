"""The Podman adapters against real Podman, rootful and rootless (as root: via the
unprivileged user; as that user: itself)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec.errors import ContainerStartError, ExecTimeout, ImageNotFound
from pytest_containersec.linux import hostinfo, session
from pytest_containersec.runtimes.base import PROBE_BUSYBOX
from pytest_containersec.runtimes.podman import podman_service
from pytest_containersec.runtimes.podman.podman import PodmanRuntime
from pytest_containersec.spec import DEFAULT_IMAGE, ContainerSpec

CONFINED = ContainerSpec(
    user="1000", cap_drop=["ALL"], memory="64m", pids_limit=50, read_only=True
)  # fmt: skip


def podman_cli(rootless: bool, *args: str) -> str:
    """The podman CLI against the same store the adapter uses."""
    argv = ["podman", *args]
    env = None
    if rootless and os.geteuid() == 0:
        pw = hostinfo.rootless_user()
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                *argv]  # fmt: skip
        env = {"PATH": podman_service.SAFE_PATH, "HOME": pw.pw_dir,
               "XDG_RUNTIME_DIR": f"/run/user/{pw.pw_uid}"}  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def status_field(pid: int, name: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1:]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@pytest.fixture(scope="module", params=[False, True], ids=["podman", "podman-rootless"])
def rt(request: pytest.FixtureRequest) -> Iterator[PodmanRuntime]:
    runtime = PodmanRuntime(rootless=bool(request.param))
    avail = runtime.availability()
    if not avail.available:
        pytest.skip(f"{runtime.name} unavailable: {avail.reason} (fix: {avail.hint})")
    assert avail.version.startswith("Podman ")
    assert avail.rootless is runtime.rootless
    yield runtime
    runtime.close()


def test_confined_container(rt: PodmanRuntime) -> None:
    c = rt.start(CONFINED)
    try:
        r = c.exec(["id"])
        assert r.rc == 0, r
        assert r.stdout.startswith("uid=1000")
        assert Path(f"/proc/{c.host_pid}").is_dir()
        assert status_field(c.host_pid, "CapEff") == ["0000000000000000"]
        uid = int(status_field(c.host_pid, "Uid")[0])
        if rt.rootless:  # default rootless map: 0 -> the user, 1.. -> its subuids
            pw = hostinfo.rootless_user()
            sub = hostinfo.subid_range(pw.pw_name, "/etc/subuid")
            assert sub is not None
            assert uid == sub[0] + 1000 - 1
        else:
            assert uid == 1000
        d = c.declared()
        assert (d["engine"], d["rootless"], d["user"]) == ("podman", rt.rootless, "1000")
        assert d["read_only"] is True
        if not (rt.rootless and hostinfo.cgroup_version() == 1):
            assert (d["memory"], d["pids_limit"]) == (64 * 1024**2, 50)
        else:  # rootless on cgroup v1 ignores limits: the gap is a finding, not an error
            assert d["memory"] is None
    finally:
        c.stop()
    assert c.name not in podman_cli(rt.rootless, "ps", "-a", "--format", "{{.Names}}")
    c.stop()  # idempotent


def test_exec_demuxes_and_times_out(rt: PodmanRuntime) -> None:
    with rt.start(ContainerSpec()) as c:
        r = c.probe_exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r.rc, r.stdout, r.stderr) == (3, "out\n", "err\n")
        t0 = time.monotonic()
        with pytest.raises(ExecTimeout):
            c.exec([PROBE_BUSYBOX, "sleep", "30"], timeout=1)
        assert time.monotonic() - t0 < 10
    for store in {False, rt.rootless}:
        assert c.name not in podman_cli(store, "ps", "-a", "--format", "{{.Names}}")


def test_unknown_image_fails_fast(rt: PodmanRuntime) -> None:
    rt.client  # noqa: B018 - the service is up; time the check itself
    t0 = time.monotonic()
    with pytest.raises(ImageNotFound):
        rt.start(ContainerSpec(image="containersec/no-such-image:1"))
    assert time.monotonic() - t0 < 10


def test_engine_refusal_leaves_nothing(rt: PodmanRuntime) -> None:
    # this session's containers only: another xdist worker starts and stops its own
    mine = ("ps", "-a", "-q", "--filter", f"label={session.LABEL_SESSION}={session.current().id}")
    before = podman_cli(rt.rootless, *mine)
    with pytest.raises(ContainerStartError) as exc:
        rt.start(ContainerSpec(user="no-such-user"))
    assert "no-such-user" in str(exc.value)
    assert podman_cli(rt.rootless, *mine) == before


def test_reap_removes_dead_owners_containers(rt: PodmanRuntime) -> None:
    labels = {session.LABEL_OWNER: "999999999.1", session.LABEL_SESSION: "dead"}
    orphan = rt.client.containers.create(
        DEFAULT_IMAGE, command=["sleep", "600"], labels=labels, network_mode="none"
    )
    orphan.start()
    with rt.start(ContainerSpec()) as mine:
        rt.reap()  # another session's reap (xdist) may get there first: what counts is that it is gone
        names = podman_cli(rt.rootless, "ps", "-a", "--format", "{{.Names}}").split()
        assert orphan.name not in names
        assert mine.name in names  # a live owner's container stays


def test_close_stops_its_service_and_reap_kills_orphans(
    rt: PodmanRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = PodmanRuntime(rootless=rt.rootless)
    c = own.start(ContainerSpec())
    svc = own.service
    assert svc is not None
    pid, sock = svc.pid, svc.socket
    own.close()
    assert c.name not in podman_cli(rt.rootless, "ps", "-a", "--format", "{{.Names}}")
    if pid is None:
        pytest.skip("a service was already running at the default socket (not ours to stop)")
    assert not Path(f"/proc/{pid}").exists()
    assert not sock.exists()

    # an orphan: a service whose owning session is gone (state file says so)
    dead = session.Session()
    dead.owner, dead.id = "1.1", "orphan" + dead.id
    monkeypatch.setattr(session, "current", lambda: dead)
    user = podman_service.ServiceUser.for_mode(rt.rootless)
    orphan = podman_service.PodmanService._start(rt.name, user)
    monkeypatch.undo()
    assert orphan.state is not None
    assert orphan.state.exists()
    try:
        assert podman_service.reap_services(rt.rootless) >= 1
        assert not orphan.state.exists()
        assert not orphan.socket.exists()
        assert orphan.pid is not None
        stat = Path(f"/proc/{orphan.pid}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1][0] in "ZX"
    finally:
        orphan.stop()
