"""Real service images (built by setup from Debian packages) on every runtime that runs
images: who runs as whom, the probe's verdicts from the workload's own identity, the
escalation surface of the image, and a workload with no shell. One container per image
and runtime, shared by the module's tests."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import expect
from pytest_containersec.expect import CheckFailed
from pytest_containersec.model import Facts, ProcessRecord
from pytest_containersec.runtimes import RUNTIME_NAMES, Container
from pytest_containersec.runtimes.nspawn.nspawn import state_root
from pytest_containersec.runtimes.nspawn.nspawn_image import cache_key
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

# every runtime that runs images as docker does, image config included (lxc and Incus run
# the nspawn cache's rootfs, containerd Docker's image; Incus where it is installed,
# Debian 13+: the VM tier, as in test_incus.py). systemd-run runs units on the host's (or
# the booted) root file system; portable runs an image's rootfs under its profile's
# settings (DynamicUser=, its bounding set) without the image config, which these
# expectations (a root master, the image's USER) do not describe: test_portable.py.
IMAGE_RUNTIMES = (
    "docker",
    "podman",
    "podman-rootless",
    "nspawn",
    "docker-userns",
    "docker-rootless",
    "lxc",
    "containerd",
    *(("incus",) if shutil.which("incus") else ()),
)
NGINX = ContainerSpec(image="containersec/nginx", command=["nginx", "-g", "daemon off;"])
POSTGRES = ContainerSpec(image="containersec/postgres", command=["postgres"])
SETUID = ContainerSpec(image="containersec/setuid")
DISTROLESS = ContainerSpec(
    image="containersec/distroless",
    command=["/usr/sbin/mini_httpd", "-D", "-p", "8080", "-d", "/srv/www", "-l", "/dev/null"],
)
READY_TIMEOUT = 20.0


def fails(check: object, *args: object, **kw: object) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kw)  # type: ignore[operator]
    return str(info.value)


def started(
    request: pytest.FixtureRequest, spec: ContainerSpec, ready: object = None
) -> Iterator[Container]:
    rt = runtime_or_skip(str(request.param))
    with rt.start(spec) as c:
        deadline = time.monotonic() + READY_TIMEOUT
        while ready is not None:
            f = c.facts(refresh=True)
            if ready(f.processes):  # type: ignore[operator]
                break
            if time.monotonic() > deadline:
                pytest.fail(f"not ready: {f.processes}; logs:\n{c.logs()}")
            time.sleep(0.2)
        yield c


def _nginx_up(ps: tuple[ProcessRecord, ...]) -> bool:
    return sum(p.comm == "nginx" and p.user.uid == 33 for p in ps) >= 2


def _postgres_up(ps: tuple[ProcessRecord, ...]) -> bool:
    return sum(p.comm == "postgres" for p in ps) >= 3  # postmaster and its workers


@pytest.fixture(scope="module", params=IMAGE_RUNTIMES)
def nginx(request: pytest.FixtureRequest) -> Iterator[Container]:
    yield from started(request, NGINX, _nginx_up)


@pytest.fixture(scope="module", params=IMAGE_RUNTIMES)
def postgres(request: pytest.FixtureRequest) -> Iterator[Container]:
    yield from started(request, POSTGRES, _postgres_up)


@pytest.fixture(scope="module", params=IMAGE_RUNTIMES)
def setuid(request: pytest.FixtureRequest) -> Iterator[Container]:
    yield from started(request, SETUID)


@pytest.fixture(scope="module", params=IMAGE_RUNTIMES)
def distroless(request: pytest.FixtureRequest) -> Iterator[Container]:
    yield from started(request, DISTROLESS)


# -- nginx: master root, workers www-data -------------------------------------------------


def test_nginx_master_is_root_and_workers_are_www_data_without_capabilities(
    nginx: Container,
) -> None:
    f = nginx.facts()
    main = [p for p in f.processes if p.main]
    assert len(main) == 1
    assert main[0].comm == "nginx"
    assert main[0].user.uid == 0
    assert "CAP_SETUID" in main[0].capabilities.effective  # root, as the engine grants it
    workers = [p for p in f.processes if p.comm == "nginx" and not p.main]
    assert len(workers) == 2
    assert all("worker process" in p.cmdline[0] for p in workers)
    for w in workers:
        assert (w.user.uid, w.user.gid, w.user.groups) == (33, 33, (33,))
        assert w.capabilities.effective == w.capabilities.permitted == ()
        assert w.capabilities.ambient == ()
    # the main process's verdicts come from root's identity: root reads /etc/shadow
    assert f.identity is not None
    assert f.identity.method == "exec"
    assert f.identity.pid == main[0].pid
    expect.allowed(f, "/etc/shadow", "r")


def test_nginx_worker_verdicts_are_www_data_s(nginx: Container) -> None:
    w = nginx.facts(process=lambda p: p.comm == "nginx" and p.user.uid != 0)
    assert w.identity is not None
    assert w.identity.method == "setpriv", w.identity
    assert w.identity.comm == "nginx"
    assert w.identity.unreproduced == ()
    assert [m for m in w.mismatches if m.source == "inside"] == []
    expect.user(w, uid=33, gid=33)
    expect.groups(w, [33])
    expect.capabilities(w, effective=[], ambient=[])
    expect.denied(w, "/etc/shadow", "r", errno="EACCES")  # root's exec would read it
    expect.operation_denied(w, "mount_tmpfs")
    # the same process picked by pid gives the same snapshot (cached by host pid)
    assert nginx.facts(process=w.identity.pid) is w


def test_a_name_matching_master_and_workers_is_refused(nginx: Container) -> None:
    from pytest_containersec.errors import SpecError

    with pytest.raises(SpecError, match="different identities"):
        nginx.facts(process="nginx")


# -- postgres: the entrypoint drops to postgres with setpriv --------------------------------


def test_postgres_runs_as_postgres_and_verdicts_are_its_own(postgres: Container) -> None:
    f = postgres.facts()
    main = next(p for p in f.processes if p.main)
    assert main.comm == "postgres"
    assert main.user.uid == 999
    assert all(p.user.uid == 999 for p in f.processes if p.comm == "postgres")
    assert f.identity is not None
    assert f.identity.method == "setpriv", f.identity
    assert "--ruid=999" in f.identity.setpriv
    assert [m for m in f.mismatches if m.source == "inside"] == []
    expect.user(f, uid=999, gid=999)
    expect.non_root(f)
    expect.denied(f, "/etc/shadow", "r", errno="EACCES")
    # ...where an exec as the container's root (what the probe got before) reads it
    root = postgres.root_exec(
        ["/.containersec/busybox", "dd", "if=/etc/shadow", "of=/dev/null", "count=0"], timeout=30
    )
    assert root.rc == 0, root.stderr
    assert f.image_user == ""  # the image sets no USER: it starts as root and drops itself


# -- the setuid image: the escalation surface, read from the host ----------------------------


SETUID_FILES = {"/bin/su", "/bin/mount", "/bin/umount", "/usr/bin/passwd", "/usr/bin/chsh"}


def test_setuid_files_and_file_capabilities_are_listed(setuid: Container) -> None:
    f = setuid.facts()
    assert f.surface_scan is not None
    assert f.surface_scan.complete, f.surface_scan
    assert f.setuid_files is not None
    assert f.file_capabilities is not None
    listed = {s.path: s for s in f.setuid_files}
    assert set(listed) >= SETUID_FILES, sorted(listed)
    assert listed["/bin/su"].setuid
    assert listed["/bin/su"].uid == 0
    assert listed["/usr/bin/chage"].setgid
    assert not listed["/usr/bin/chage"].setuid
    assert listed["/usr/bin/chage"].gid == 42  # group shadow
    # cross-checked through the host's /proc/<pid>/root, independently of the walk
    for path in SETUID_FILES:
        st = os.lstat(f"/proc/{setuid.host_pid}/root{path}")
        assert st.st_mode & stat.S_ISUID, path
    ping = [c for c in f.file_capabilities if c.path.endswith("/ping")]
    assert len(ping) == 1
    assert ping[0].permitted == ("CAP_NET_RAW",)
    assert ping[0].effective
    if ping[0].version == 3:  # stored by a user namespace's root: the rootid is its host uid
        assert ping[0].rootid == f.host_uid_of(0)
    assert not any(s.path.startswith("/.containersec") for s in f.setuid_files)


def test_no_setuid_binaries_fails_and_passes_with_allow(setuid: Container) -> None:
    why = fails(expect.no_setuid_binaries, setuid)
    assert "/bin/su" in why
    assert "/usr/bin/chage" in why
    f = setuid.facts()
    assert f.setuid_files is not None
    expect.no_setuid_binaries(setuid, allow=[s.path for s in f.setuid_files])
    assert "/bin/mount" in fails(expect.no_setuid_binaries, setuid, allow=["/bin/su"])


def test_no_file_capabilities_fails_and_passes_with_allow(setuid: Container) -> None:
    assert "CAP_NET_RAW" in fails(expect.no_file_capabilities, setuid)
    f = setuid.facts()
    assert f.file_capabilities is not None
    ping = next(c.path for c in f.file_capabilities if c.path.endswith("/ping"))
    expect.no_file_capabilities(setuid, allow={ping: ["NET_RAW"]})
    fails(expect.no_file_capabilities, setuid, allow={ping: ["NET_BIND_SERVICE"]})


# the runtimes that run a rootfs the adapter exports from Docker or Podman (nspawn's cache)
CACHE_RUNTIMES = ("nspawn", "lxc", *(("incus",) if shutil.which("incus") else ()))


@pytest.fixture(scope="module")
def exported_setuid() -> Iterator[str]:
    """The setuid image under a name of this worker's own, which setup never put in the
    rootfs cache: the adapters export it from Docker themselves."""
    name = f"containersec-test/setuid-exported-{os.getpid()}"
    tag = subprocess.run(["docker", "tag", "containersec/setuid", name], check=False)
    if tag.returncode != 0:
        pytest.fail("docker tag containersec/setuid failed (run make setup)")
    entry = state_root() / "images" / cache_key(name)
    shutil.rmtree(entry, ignore_errors=True)
    yield name
    subprocess.run(["docker", "rmi", name], check=False, capture_output=True)
    shutil.rmtree(entry, ignore_errors=True)


@pytest.mark.parametrize("runtime", CACHE_RUNTIMES)
def test_file_capabilities_survive_the_export_into_the_rootfs_cache(
    runtime: str, exported_setuid: str
) -> None:
    """`docker export` carries `setcap`'s xattr as a PAX record, which tar extracts only with
    --xattrs: the copy had no capability, and no_file_capabilities passed on it."""
    rt = runtime_or_skip(runtime)
    with rt.start(ContainerSpec(image=exported_setuid)) as c:
        f = c.facts()
        assert f.file_capabilities is not None
        ping = [fc for fc in f.file_capabilities if fc.path.endswith("/ping")]
        assert [fc.permitted for fc in ping] == [("CAP_NET_RAW",)]
        assert "CAP_NET_RAW" in fails(expect.no_file_capabilities, c)
        st = os.lstat(f"/proc/{c.host_pid}/root/bin/su")  # and the setuid bit, from the host
        assert st.st_mode & stat.S_ISUID


def test_the_probe_image_has_no_setuid_files() -> None:
    rt = runtime_or_skip("docker")
    with rt.start(ContainerSpec()) as c:
        expect.no_setuid_binaries(c)
        expect.no_file_capabilities(c)


# -- distroless: no shell, a non-root USER -------------------------------------------------


def test_distroless_without_a_shell_runs_as_its_non_root_user(distroless: Container) -> None:
    f = distroless.facts(access=("/bin/sh:x",))
    assert f.image_user == "nonroot:nonroot"
    main = next(p for p in f.processes if p.main)
    assert main.comm == "mini_httpd"
    assert (main.user.uid, main.user.gid) == (65532, 65532)
    expect.user(f, uid=65532, gid=65532)
    expect.non_root(f)
    # Podman's exec of USER nonroot:nonroot lacks the supplementary group 65532 that the
    # main process has: then the probe takes it on with setpriv; either way it is exact
    assert f.identity is not None
    assert f.identity.method in ("exec", "setpriv")
    assert [m for m in f.mismatches if m.source == "inside"] == []
    expect.denied(f, "/bin/sh", "x", errno="ENOENT")  # no shell in the image
    expect.denied(f, "/etc/shadow", "r", errno="EACCES")
    assert f.access
    assert f.operations


# -- what cannot be reproduced is named, and refused --------------------------------------


def test_a_root_process_without_capabilities_cannot_be_followed_and_says_why() -> None:
    """securebits noroot: a root process whose exec'd children get no capabilities. Any
    exec as uid 0 gets its bounding set, so no probe can be that process: no verdict."""
    rt = runtime_or_skip("docker")
    cmd = ["/usr/bin/setpriv", "--securebits=+noroot,+noroot_locked", "--inh-caps=-all",
           "/bin/busybox", "sleep", "1000000"]  # fmt: skip
    with rt.start(ContainerSpec(image="containersec/setuid", command=cmd)) as c:
        f = c.facts()
        assert f.user.uid == 0
        assert f.capabilities.effective == ()
        assert f.identity is not None
        assert f.identity.method == "none"
        why = "; ".join(f.identity.unreproduced)
        assert "an exec as uid 0 gets its whole bounding set" in why
        assert "the probe could not take on this identity" in fails(
            expect.denied, c, "/etc/shadow", "r"
        )


# -- every runtime: the process list, limits, a process chosen by pid ----------------------


@pytest.fixture(scope="module", params=RUNTIME_NAMES)
def idle(request: pytest.FixtureRequest) -> Iterator[Container]:
    yield from started(request, ContainerSpec())


def test_processes_limits_and_oom_score_are_observed(idle: Container) -> None:
    f: Facts = idle.facts()
    main = [p for p in f.processes if p.main]
    assert len(main) == 1
    assert main[0].host_pid == idle.host_pid == f.host_pid
    assert main[0].comm == "busybox" or main[0].cmdline[0].endswith("busybox")
    limits = Path(f"/proc/{idle.host_pid}/limits").read_text()
    nofile = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert str(f.rlimits["nofile"].soft) in nofile
    assert f.oom_score_adj == int(Path(f"/proc/{idle.host_pid}/oom_score_adj").read_text())
    assert f.identity is not None
    assert f.identity.method == "exec"
    assert nofile
    assert idle.facts(process=main[0].pid).host_pid == idle.host_pid
