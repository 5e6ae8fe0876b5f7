"""docker-userns and docker-rootless against their real daemons: what is in effect (user
namespace, limits, a root-only host file, the host pid), the images setup put in their
stores, and the daemon lifecycle (a session stops what it started; a killed session's
daemon survives it and is reaped). Lifecycle tests run daemons of their own (own socket,
data root and exec root), so they never stop the daemon other tests (xdist workers) use."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from pytest_containersec import expect
from pytest_containersec.linux import hostinfo, session
from pytest_containersec.runtimes import Container, Runtime, procs
from pytest_containersec.runtimes.docker import docker_daemons as dd
from pytest_containersec.runtimes.docker.docker import DockerRuntime
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

NAMES = (dd.USERNS, dd.ROOTLESS)
CONFINED = ContainerSpec(user="1000", cap_drop=["ALL"], memory="64m", pids_limit=50)
DEAD = "999999999.1"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=NAMES)
def runtime(request: pytest.FixtureRequest) -> Runtime:
    return runtime_or_skip(str(request.param))


def expected_uid_map(name: str) -> tuple[tuple[int, int, int], ...]:
    if name == dd.USERNS:  # dockerd gives its dockremap user the next free range
        found = hostinfo.subid_range("dockremap", "/etc/subuid")
        assert found is not None
        return ((0, found[0], found[1]),)
    pw = hostinfo.rootless_user()
    sub = hostinfo.subid_range(pw.pw_name, "/etc/subuid")
    assert sub is not None
    return ((0, pw.pw_uid, 1), (1, sub[0], sub[1]))


def fails(check: Callable[..., object], *args: object, **kwargs: object) -> str:
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


def nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no NSpid line")


def assert_host_pid(c: Container) -> None:
    """host_pid is the container's init in OUR pid namespace (not the daemon's)."""
    ids = nspid(c.host_pid)
    assert ids[0] == c.host_pid
    assert ids[-1] == 1
    assert os.readlink(f"/proc/{c.host_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert "containersec" in Path(f"/proc/{c.host_pid}/root/etc/os-release").read_text()


# -- the images setup imported -----------------------------------------------------------


def test_setup_put_the_local_images_in_its_store(runtime: Runtime) -> None:
    client = cast(DockerRuntime, runtime).client
    for image in ("containersec/probe", "containersec/httpd", "containersec/scratch"):
        labels = client.images.get(image).labels or {}
        assert labels.get("io.containersec.stamp"), image


# -- what is in effect -------------------------------------------------------------------


def test_container_root_is_an_unprivileged_host_user(runtime: Runtime) -> None:
    name = runtime.name
    with runtime.start(ContainerSpec()) as c:
        f = c.facts()
        assert_host_pid(c)
        assert f.runtime == name
        assert f.engine_rootless is (name == dd.ROOTLESS)
        assert f.uid_map == expected_uid_map(name)
        assert f.user.uid == 0
        assert f.user.host_uid == f.uid_map[0][1] != 0
        assert f.seccomp == "filter"
        expect.root_unprivileged(c)
        declared = c.declared()
        assert declared["userns_mode"] == ("remap" if name == dd.USERNS else None)
        assert ("name=rootless" in declared["daemon_security_options"]) is (name == dd.ROOTLESS)


def test_confined_container_and_the_cgroup_v1_rootless_gap(runtime: Runtime) -> None:
    name = runtime.name
    with runtime.start(CONFINED) as c:
        f = c.facts()
        assert_host_pid(c)
        assert f.user.uid == 1000
        assert f.user.host_uid == f.host_uid_of(1000)
        assert f.user.host_uid not in (None, 0, 1000)
        assert f.capabilities.effective == ()
        if name == dd.ROOTLESS and f.cgroup.version == 1:
            assert f.cgroup.memory_max is None
            assert f.cgroup.pids_max is None
            msg = fails(expect.cgroup, c, memory="64m")
            assert "rootless docker-rootless on cgroup v1 ignores resource limits" in msg
            assert any(m.field == "cgroup.memory_max" for m in f.mismatches)
        elif name == dd.USERNS:
            assert f.cgroup.memory_max == 64 * 1024**2
            assert f.cgroup.pids_max == 50
            expect.cgroup(c, memory="64m", pids=50)
            assert "memory limit 64 MiB" in fails(expect.cgroup, c, memory="32m")


@pytest.fixture
def secret_file() -> Iterator[Path]:
    """A root-owned 0600 host file in a 0755 folder (the rootless daemon must reach it)."""
    d = Path(tempfile.mkdtemp(prefix="containersec-secret-"))
    d.chmod(0o755)
    f = d / "secret"
    f.write_text("host secret\n")
    f.chmod(0o600)
    assert f.stat().st_uid == 0
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    yield f
    shutil.rmtree(d)


def test_root_only_host_file_is_denied_to_container_root(
    runtime: Runtime, secret_file: Path
) -> None:
    with runtime.start(ContainerSpec(volumes=[f"{secret_file}:/secret:ro"])) as c:
        f = c.facts(access=("/secret:r",))
        assert f.user.uid == 0
        assert "CAP_DAC_OVERRIDE" in f.capabilities.effective
        assert not f.access["/secret:r"].allowed
        assert f.access["/secret:r"].errno == "EACCES"
        expect.denied(c, "/secret", "r", errno="EACCES")


# -- lifecycle, on daemons of their own ---------------------------------------------------


def isolated(name: str, tag: str) -> dd.DaemonConfig:
    """The runtime's daemon, moved to its own socket, data root and exec root (records in
    a folder of root's, what the daemon creates in one of the rootless user's)."""
    cfg = dd.CONFIGS[name]()
    records = cfg.run_dir / f"test-{tag}"
    run = (cfg.user_dir or cfg.run_dir) / f"test-{tag}"
    if cfg.user is None:
        data = session.STATE_DIR / "test-daemons" / tag
    else:
        data = Path(cfg.user.home) / ".local/share" / f"containersec-test-{tag}"
    flags = {"--host": f"unix://{run}/d.sock", "--data-root": str(data),
             "--exec-root": f"{run}/exec", "--pidfile": f"{run}/d.pid",
             "--config-file": f"{records}/{name}.daemon.json"}  # fmt: skip
    argv = tuple(
        f"{a.split('=')[0]}={flags[a.split('=')[0]]}" if a.split("=")[0] in flags else a
        for a in cfg.argv
    )
    env = cfg.env and {**cfg.env, "DOCKERD_ROOTLESS_ROOTLESSKIT_FLAGS": f"--state-dir={run}/kit"}
    return dataclasses.replace(cfg, socket=run / "d.sock", run_dir=records, pidfile=run / "d.pid",
                               argv=argv, env=env, cleanup_dirs=(run / "exec", run / "kit"),
                               user_dir=run if cfg.user is not None else None)  # fmt: skip


@pytest.fixture(params=NAMES)
def own_daemon(request: pytest.FixtureRequest) -> Iterator[tuple[str, dd.DaemonConfig]]:
    name = str(request.param)
    runtime_or_skip(name)
    cfg = isolated(name, secrets.token_hex(4))
    yield name, cfg
    record = dd.Record.read(cfg.path(".json"))
    if record is not None and record.running:
        procs.stop_tree(record.pid, record.token)
    data = next(a.split("=", 1)[1] for a in cfg.argv if a.startswith("--data-root="))
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    if cfg.user_dir is not None:
        shutil.rmtree(cfg.user_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        (session.STATE_DIR / "test-daemons").rmdir()


def tree_of(cfg: dd.DaemonConfig) -> list[tuple[int, str]]:
    record = dd.Record.read(cfg.path(".json"))
    assert record is not None
    pids = [record.pid, *procs.descendants(record.pid)]
    return [(p, session.owner_token(p)) for p in pids]


def assert_gone(cfg: dd.DaemonConfig, tree: list[tuple[int, str]]) -> None:
    assert not any(procs.running(p, t) for p, t in tree)
    for path in (cfg.socket, cfg.pidfile, cfg.path(".json"), cfg.socket.parent / "exec"):
        assert not path.exists(), path


def test_session_close_stops_the_daemon_it_started(own_daemon: tuple[str, dd.DaemonConfig]) -> None:
    name, cfg = own_daemon
    daemon = dd.DockerDaemon(name, lambda: cfg)
    rt = DockerRuntime(name, daemon=daemon)
    assert rt.availability().available
    assert not daemon.answers()  # availability starts nothing
    tarball = session.STATE_DIR / "images" / "containersec_probe.tar"
    with open(tarball, "rb") as fh:
        rt.client.images.load  # noqa: B018 - starts the daemon (first use)
        argv = ["/usr/bin/docker", "-H", daemon.url, "import", "-", "containersec/probe"]
        subprocess.run(argv, stdin=fh, check=True, capture_output=True, timeout=120)
    assert daemon.started
    assert rt.rootless is (name == dd.ROOTLESS)
    c = rt.start(ContainerSpec(cap_drop=["ALL"]))
    assert_host_pid(c)
    tree = tree_of(cfg)
    assert tree  # the daemon, and its own containerd where no system containerd runs
    rt.close()  # stops the container and the daemon it started
    assert_gone(cfg, tree)
    assert not Path(f"/proc/{c.host_pid}").exists() or nspid(c.host_pid)[-1] != 1


def test_killed_session_leaves_a_daemon_that_is_reaped(
    own_daemon: tuple[str, dd.DaemonConfig],
) -> None:
    name, cfg = own_daemon
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.integration.test_docker_daemons import isolated
        from pytest_containersec.runtimes.docker.docker_daemons import DockerDaemon
        cfg = isolated({name!r}, {cfg.run_dir.name[5:]!r})
        print(DockerDaemon({name!r}, lambda: cfg).ensure(), flush=True)
        time.sleep(300)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == f"unix://{cfg.socket}"
    tree = tree_of(cfg)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, then the session is killed for good
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    daemon = dd.DockerDaemon(name, lambda: cfg)
    assert daemon.answers()  # the daemon outlived the session that started it
    assert daemon.reap() == 1  # ...and the next session stops it
    assert_gone(cfg, tree)


def test_reap_stops_a_daemon_of_a_fake_dead_owner(own_daemon: tuple[str, dd.DaemonConfig]) -> None:
    name, cfg = own_daemon
    first = dd.DockerDaemon(name, lambda: cfg)
    first.ensure(owner=DEAD)
    proc = first._proc
    assert proc is not None
    first._proc = first._lease = None  # as if another, dead, session had started it
    tree = tree_of(cfg)
    other = dd.DockerDaemon(name, lambda: cfg)
    other.ensure()  # a live session uses it: not reaped
    assert dd.DockerDaemon(name, lambda: cfg).reap() == 0
    other._lease = None  # that session dies too
    (cfg.path(".leases") / session.current().owner).rename(cfg.path(".leases") / "1.1")
    assert dd.DockerDaemon(name, lambda: cfg).reap() == 1
    proc.wait(timeout=30)  # our child, stopped by the reaper: collect it
    assert_gone(cfg, tree)
