"""Facts on real runtimes: every case, exact values, cross-checked against an independent
reading of the host's /proc and cgroup files, and each family shown to FAIL when the
container is misconfigured."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import ContainerStartError, UnsupportedSpec
from pytest_containersec.linux import hostinfo
from pytest_containersec.linux.caps import DOCKER_DEFAULT_CAPS
from pytest_containersec.model import Facts
from pytest_containersec.runtimes import RUNTIME_NAMES, Container, Runtime
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

PODMAN_DEFAULT_CAPS = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
    "CAP_SYS_CHROOT",
})  # fmt: skip
CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "cap_drop_all": {"cap_drop": ["ALL"]},
    "cap_add_sys_admin": {"cap_add": ["SYS_ADMIN"]},
    "privileged": {"privileged": True},
    "seccomp_unconfined": {"seccomp": "unconfined"},
    "no_new_privileges": {"no_new_privileges": True},
    "user_1000": {"user": "1000"},
    "read_only": {"read_only": True},
    "memory_64m": {"memory": "64m"},
    "pids_50": {"pids_limit": 50},
    "cpus_half": {"cpus": 0.5},
    "userns_map": {"userns": "0:100000:65536"},
}


# -- an independent reading of the truth (deliberately not the package's parsers) -----


def status_of(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cap_bits(names: tuple[str, ...]) -> int:
    from pytest_containersec.linux.caps import CAP_BITS

    return sum(1 << CAP_BITS[n] for n in names)


def host_cgroup_file(pid: int, controller: str, name: str) -> str | None:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            f = Path(f"/sys/fs/cgroup/{controller}{path}/{name}")
            return f.read_text().strip() if f.exists() else None
    return None


def host_bounding() -> frozenset[str]:
    from pytest_containersec.linux.caps import CAP_NAMES

    mask = int(status_of(os.getpid())["CapBnd"], 16)
    return frozenset(n for b, n in enumerate(CAP_NAMES) if mask >> b & 1)


def lxc_root_holds(start: int, count: int) -> bool:
    from pytest_containersec.runtimes.lxc.lxc_spec import parse_subids

    ranges = [parse_subids(Path(p).read_text()) for p in ("/etc/subuid", "/etc/subgid")]
    return all(any(s <= start and start + count <= s + n for s, n in r) for r in ranges)


def assert_matches_host(c: Container, f: Facts) -> None:
    st = status_of(c.host_pid)
    assert int(st["CapEff"], 16) == cap_bits(f.capabilities.effective)
    assert int(st["CapBnd"], 16) == cap_bits(f.capabilities.bounding)
    assert int(st["CapPrm"], 16) == cap_bits(f.capabilities.permitted)
    assert {"0": "disabled", "1": "strict", "2": "filter"}[st["Seccomp"]] == f.seccomp
    assert st["NoNewPrivs"] == ("1" if f.no_new_privs else "0")
    assert int(st["Uid"].split()[1]) == f.user.host_uid
    assert [m for m in f.mismatches if m.source == "inside"] == []


def fails(check: Any, *args: Any, **kwargs: Any) -> str:
    """The check must raise; returns its message."""
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


# -- the cases ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=RUNTIME_NAMES)
def runtime(request: pytest.FixtureRequest) -> Runtime:
    return runtime_or_skip(str(request.param))


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def started(runtime: Runtime, case: str) -> Iterator[tuple[Container | None, Exception | None]]:
    try:
        c = runtime.start(ContainerSpec(**CASES[case]))
    except (ContainerStartError, UnsupportedSpec) as exc:
        yield None, exc
        return
    try:
        yield c, None
    finally:
        c.stop()


def test_case(
    runtime: Runtime, case: str, started: tuple[Container | None, Exception | None]
) -> None:
    c, error = started
    name = runtime.name
    rootless = name in ("podman-rootless", "docker-rootless")
    if case == "userns_map" and (name.startswith("docker") or name in ("systemd-run", "portable")):
        # Docker maps users per daemon (--userns-remap), never per container; systemd has
        # PrivateUsers= only
        assert isinstance(error, UnsupportedSpec)
        assert "userns" in str(error)
        return
    if case == "userns_map" and name == "lxc" and not lxc_root_holds(100000, 65536):
        # LXC writes maps with newuidmap, which needs the range in root's /etc/subuid
        assert isinstance(error, UnsupportedSpec)
        assert "/etc/subuid" in str(error)
        return
    if case in ("privileged", "seccomp_unconfined") and name == "portable":
        # the default profile's DynamicUser=, PrivateUsers= and filters cannot be undone
        assert isinstance(error, UnsupportedSpec)
        assert "portable_profile='trusted'" in str(error)
        return
    if case == "privileged" and name == "docker-userns":
        assert isinstance(error, ContainerStartError)
        assert "user namespaces" in str(error)
        return
    if case == "privileged" and name == "docker" and len(host_bounding()) < 41:
        # Docker 20.10 asks for all 41 capabilities; this host's bounding set lacks some:
        # the engine refuses, and we report that refusal clearly
        assert isinstance(error, ContainerStartError)
        assert "caps" in str(error)
        return
    assert error is None, str(error)
    assert c is not None
    f = c.facts()
    assert_matches_host(c, f)
    assert f.runtime == name
    v1_rootless = rootless and f.cgroup.version == 1
    # systemd-run's manager: the host's own systemd (its units run as host root, with
    # every capability and no filter unless asked), or one booted in nspawn (a user
    # namespace, and nspawn's own seccomp filter over every unit)
    host_units = name == "systemd-run" and hostinfo.systemd_is_pid1()

    if case == "default" and name == "portable":  # the default profile: a dynamic user
        assert f.seccomp == "filter"
        assert f.no_new_privs  # systemd sets it for a non-root unit with a filter
        assert 0 < f.user.uid < 65534
        assert f.capabilities.effective == ()
        assert "CAP_SYS_ADMIN" in f.capabilities.bounding  # the profile keeps it
        assert "CAP_NET_RAW" not in f.capabilities.bounding
        assert f.rootfs_read_only  # ProtectSystem=strict
        expect.read_only_rootfs(c)
        expect.not_privileged(c)
        expect.denied(c, "/etc/shadow", "r", errno="EACCES")
        assert "unlimited" in fails(expect.cgroup, c, memory="64m")
    elif case == "default":
        assert f.seccomp == "filter"
        assert f.no_new_privs == (name == "containerd")  # containerd's default: on
        assert f.user.uid == 0
        if name.startswith("docker") or name == "containerd":
            assert set(f.capabilities.effective) == DOCKER_DEFAULT_CAPS
        elif name.startswith("podman"):
            assert set(f.capabilities.effective) == PODMAN_DEFAULT_CAPS
        if name in ("nspawn", "systemd-run", "lxc"):  # SYS_ADMIN by default (in a userns)
            assert "CAP_SYS_ADMIN" in f.capabilities.effective
            assert "CAP_SYS_ADMIN" in fails(expect.capabilities, c, absent=["SYS_ADMIN"])
        else:
            assert "CAP_SYS_ADMIN" not in f.capabilities.bounding
        if name == "lxc" or host_units:  # every capability (LXC: in a user namespace)
            assert set(f.capabilities.bounding) >= host_bounding()
            assert "bounding set" in fails(expect.not_privileged, c)
        else:
            expect.not_privileged(c)
        if host_units:  # a unit without sandboxing sees the host's whole tree
            assert "host root at /" in fails(expect.no_sensitive_mounts, c)
        else:
            expect.no_sensitive_mounts(c)
        assert "CAP_CHOWN" in fails(expect.capabilities, c, effective=[])
        assert "writable" in fails(expect.read_only_rootfs, c)
        if name != "containerd":
            assert "False" in fails(expect.no_new_privs, c)
        assert "allowed" in fails(expect.denied, c, "/etc/shadow", "r")
        assert "unlimited" in fails(expect.cgroup, c, memory="64m")
        if name in ("docker", "podman", "containerd") or host_units:  # no user namespace
            assert "IS host root" in fails(expect.root_unprivileged, c)
        else:
            expect.root_unprivileged(c)
    elif case == "cap_drop_all":
        assert f.capabilities.effective == ()
        assert f.capabilities.bounding == ()
        expect.capabilities(c, effective=[], absent=["ALL"])
        expect.operation_denied(c, "mknod_device")
    elif case == "cap_add_sys_admin":
        assert "CAP_SYS_ADMIN" in f.capabilities.effective
        assert "CAP_SYS_ADMIN" in f.capabilities.bounding
        assert "CAP_SYS_ADMIN" in fails(expect.capabilities, c, absent=["SYS_ADMIN"])
    elif case in ("privileged", "seccomp_unconfined") and name == "systemd-run" and not host_units:
        # units run under the booting nspawn's own seccomp filter: asked-for but not in
        # effect, and reported as such
        assert f.seccomp == "filter"
        assert any(m.field == "seccomp" for m in f.mismatches)
        assert "observed filter" in fails(expect.seccomp, c, "disabled")
    elif case == "privileged":
        assert f.seccomp == "disabled"
        # Docker 20.10 does not know these three names, so it cannot grant them
        unknown = {"CAP_BPF", "CAP_PERFMON", "CAP_CHECKPOINT_RESTORE"}
        expected = host_bounding() - unknown if name.startswith("docker") else host_bounding()
        assert expected <= set(f.capabilities.bounding)
        assert "bounding set" in fails(expect.not_privileged, c)
    elif case == "seccomp_unconfined":
        assert f.seccomp == "disabled"
        assert "observed disabled" in fails(expect.seccomp, c, "filter")
        expect.seccomp(c, "disabled")
    elif case == "no_new_privileges":
        assert f.no_new_privs
        expect.no_new_privs(c)
    elif case == "user_1000":
        assert f.user.uid == 1000
        assert f.capabilities.effective == ()
        assert f.user.host_uid == f.host_uid_of(1000)
        expect.denied(c, "/etc/shadow", "r", errno="EACCES")
        assert "observed denied with EACCES" in fails(expect.allowed, c, "/etc/shadow", "r")
    elif case == "read_only":
        assert f.rootfs_read_only
        expect.read_only_rootfs(c)
        # a dynamic user (portable's default profile) fails the permission check first
        expect.denied(c, "/etc/passwd", "w", errno="EACCES" if name == "portable" else "EROFS")
    elif case == "memory_64m":
        raw = host_cgroup_file(c.host_pid, "memory", "memory.limit_in_bytes")
        if f.cgroup.memory_max is None:  # not enforced: the gap must be reported
            assert v1_rootless or name in ("systemd-run", "portable")
            why = fails(expect.cgroup, c, memory="64m")
            assert "ignores resource limits" in why or not v1_rootless
            assert any(m.field == "cgroup.memory_max" for m in f.mismatches)
        else:
            assert f.cgroup.memory_max == 64 * 1024**2
            if raw is not None:
                assert int(raw) == 64 * 1024**2
            expect.cgroup(c, memory="64m")
            assert "memory limit 64 MiB" in fails(expect.cgroup, c, memory="32m")
    elif case == "pids_50":
        if f.cgroup.pids_max is None:
            assert v1_rootless or name in ("systemd-run", "portable")
            assert "unlimited" in fails(expect.cgroup, c, pids=50)
            assert any(m.field == "cgroup.pids_max" for m in f.mismatches)
        else:
            assert f.cgroup.pids_max == 50
            raw = host_cgroup_file(c.host_pid, "pids", "pids.max")
            assert raw in (None, "50")
            expect.cgroup(c, pids=50)
    elif case == "cpus_half":
        if f.cgroup.cpu_max is None:
            assert v1_rootless or name in ("systemd-run", "portable")
            assert any(m.field == "cgroup.cpu_max" for m in f.mismatches)
        else:
            assert f.cgroup.cpu_max == 0.5
            expect.cgroup(c, cpus=0.5)
            assert "cpu limit 0.5 cores" in fails(expect.cgroup, c, cpus=0.25)
    elif case == "userns_map":
        assert f.uid_map == ((0, 100000, 65536),)
        assert f.host_uid_of(0) == 100000
        assert f.user.host_uid == 100000
        expect.root_unprivileged(c)
        expect.uid_map(c, [(0, 100000, 65536)])
        assert "100000" in fails(expect.uid_map, c, [(0, 0, 65536)])


@pytest.fixture
def secret_file() -> Iterator[Path]:
    """A root-owned 0600 host file in a folder every engine (rootless too) can reach."""
    d = Path(tempfile.mkdtemp(prefix="containersec-secret-"))
    d.chmod(0o755)
    f = d / "secret"
    f.write_text("host secret\n")
    f.chmod(0o600)
    assert f.stat().st_uid == 0
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    yield f
    f.unlink()
    d.rmdir()


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_userns_root_cannot_read_a_root_only_host_file(name: str, secret_file: Path) -> None:
    rt = runtime_or_skip(name)
    userns = {"podman": "0:100000:5000", "nspawn": "0:100000:65536",
              "containerd": "0:100000:65536"}.get(name)  # fmt: skip
    # portable: the trusted profile's root (the others run a dynamic user)
    profile = "trusted" if name == "portable" else "default"
    spec = ContainerSpec(volumes=[f"{secret_file}:/secret:ro"], userns=userns,
                         portable_profile=profile)  # fmt: skip
    host_units = name in ("systemd-run", "portable") and hostinfo.systemd_is_pid1()
    if name in ("systemd-run", "portable") and not host_units:  # units see the booted tree
        with pytest.raises(UnsupportedSpec, match="volumes"):
            rt.start(spec)
        return
    with rt.start(spec) as c:
        f = c.facts(access=("/secret:r",))
        assert f.user.uid == 0
        assert "CAP_DAC_OVERRIDE" in f.capabilities.effective
        if name == "docker" or host_units:  # no user namespace: root is host root
            expect.allowed(c, "/secret", "r")
            assert "IS host root" in fails(expect.root_unprivileged, c)
        else:
            assert f.host_uid_of(0) not in (0, None)
            expect.denied(c, "/secret", "r", errno="EACCES")
            assert "denied with EACCES" in fails(expect.allowed, c, "/secret", "r")


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_scratch_image_without_shell_has_complete_facts(name: str) -> None:
    rt = runtime_or_skip(name)
    spec = ContainerSpec(image="containersec/scratch", cap_drop=["ALL"])
    if name == "systemd-run":  # units run on the systemd instance's own root
        with pytest.raises(UnsupportedSpec, match="image"):
            rt.start(spec)
        return
    with rt.start(spec) as c:
        r = c.exec(["/bin/sh", "-c", "true"]) if name != "nspawn" else None
        if r is not None:
            assert r.rc != 0  # the image really has no shell
        f = c.facts()
        assert f.capabilities.effective == ()
        assert f.seccomp == "filter"
        assert f.access["/etc/shadow:r"].errno == "ENOENT"
        assert set(f.operations) == {
            "mount_tmpfs",
            "mknod_device",
            "unshare_user",
            "load_module",
            "write_sysfs",
        }
        assert f.mounts
        assert f.cgroup.version in (1, 2)


def test_engine_socket_under_another_name_is_found_from_the_host() -> None:
    rt = runtime_or_skip("docker")
    with rt.start(ContainerSpec(volumes=["/var/run/docker.sock:/srv/api.sock"])) as c:
        f = c.facts()
        assert "/srv/api.sock" in f.engine_sockets
        assert "engine API socket at /srv/api.sock" in fails(expect.no_sensitive_mounts, c)


def test_access_verdicts_as_the_user_the_main_process_dropped_to() -> None:
    """The entrypoint drops to uid 1000 while execs run as the configured user (root):
    the probe takes on uid 1000 with setpriv (even without CAP_SETPCAP, when the bounding
    set already is the process's), and its verdicts are uid 1000's."""
    rt = runtime_or_skip("docker")
    drop = ["/bin/su", "-s", "/bin/sh", "user", "-c", "exec /bin/sleep 100000"]
    for spec in (
        ContainerSpec(command=drop),
        ContainerSpec(command=drop, cap_drop=["ALL"], cap_add=["SETUID", "SETGID"]),
    ):
        with rt.start(spec) as c:
            f = c.facts()
            assert f.user.uid == 1000
            assert f.identity is not None
            assert f.identity.method == "setpriv", f.identity
            assert [m for m in f.mismatches if m.source == "inside"] == []
            expect.denied(c, "/etc/shadow", "r", errno="EACCES")  # root's exec reads it
            expect.denied(c, "/proc/sys/kernel/core_pattern", "w")


def test_a_command_killed_by_sigkill_is_not_mistaken_for_a_timeout() -> None:
    """Exit status 137 (SIGKILL, e.g. the OOM killer) before the timeout is a result."""
    rt = runtime_or_skip("docker")
    with rt.start(ContainerSpec()) as c:
        r = c.probe_exec(["sh", "-c", "kill -9 $$"], timeout=30)
        assert r.rc == 137
