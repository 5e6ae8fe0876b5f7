"""Every check family passes on a confined container and FAILS on the misconfigured one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pytest_containersec import expect
from pytest_containersec.checks import checks
from pytest_containersec.model import AccessResult, Capabilities, Cgroup, Mismatch, Mount, User

from .factories import facts, privileged, rootless


def test_root_unprivileged() -> None:
    assert checks.root_unprivileged(rootless()) == []
    [v] = checks.root_unprivileged(facts())
    assert "container root IS host root" in v.observed
    assert v.runtime == "docker"


def test_root_unprivileged_fails_when_the_process_runs_as_host_root_anyway() -> None:
    f = rootless(user=User(uid=0, gid=0, host_uid=0, host_gid=0))
    assert checks.root_unprivileged(f)


def test_uid_map_exact() -> None:
    assert checks.uid_map(rootless(), [(0, 1001, 1), (1, 100000, 65536)]) == []
    [v] = checks.uid_map(rootless(), [(0, 100000, 65536)])
    assert v.expected == "[0-65535->100000-165535]"
    assert v.observed == "[0-0->1001-1001, 1-65536->100000-165535]"


def test_denied_and_allowed() -> None:
    f = facts()
    assert checks.denied(f, "/proc/sys/kernel/core_pattern", "w") == []
    assert checks.denied(f, "/proc/sys/kernel/core_pattern", "w", errno="EROFS") == []
    [v] = checks.denied(f, "/proc/sys/kernel/core_pattern", "w", errno="EACCES")
    assert "denied with EROFS" in v.observed
    [v] = checks.denied(f, "/etc/shadow", "r")
    assert v.observed == "allowed"
    assert "CAP_DAC_OVERRIDE" in v.hint
    assert checks.allowed(f, "/etc/shadow", "r") == []
    assert checks.allowed(f, "/dev/mem", "r")
    assert checks.denied(f, "/never/probed", "r")[0].observed == "not probed"


def test_capabilities_effective_at_most_absent() -> None:
    f = facts(capabilities=Capabilities())
    assert checks.capabilities(f, effective=[]) == []
    assert checks.capabilities(f, absent=["SYS_ADMIN"]) == []
    d = facts()
    [v] = checks.capabilities(d, effective=set())
    assert "extra {CAP_AUDIT_WRITE" in v.observed
    assert checks.capabilities(d, at_most=["ALL"]) == []
    [v] = checks.capabilities(d, at_most=["CHOWN"])
    assert "CAP_NET_RAW" in v.observed
    assert "CAP_CHOWN" not in v.observed
    [v] = checks.capabilities(d, absent=["cap_net_raw", "SYS_ADMIN"])
    assert v.observed.startswith("effective {CAP_NET_RAW}")
    assert "bounding {CAP_NET_RAW}" in v.observed


def test_absent_looks_at_the_bounding_set_too() -> None:
    # a non-root user has no effective caps, but a setuid binary could regain these
    f = facts(capabilities=Capabilities((), (), ("CAP_NET_RAW",), (), ()))
    assert checks.capabilities(f, effective=[]) == []
    [v] = checks.capabilities(f, absent=["NET_RAW"])
    assert v.observed == "bounding {CAP_NET_RAW}"


def test_unknown_capability_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown capability"):
        checks.capabilities(facts(), absent=["CAP_FLY"])


def test_seccomp_and_no_new_privs() -> None:
    assert checks.seccomp(facts(), "filter") == []
    [v] = checks.seccomp(privileged(), "filter")
    assert v.observed == "disabled"
    assert "unconfined" in v.hint
    with pytest.raises(ValueError):
        checks.seccomp(facts(), "on")  # type: ignore[arg-type]
    assert checks.no_new_privs(facts(no_new_privs=True)) == []
    assert checks.no_new_privs(facts())[0].observed == "False"


def test_cgroup_limits_no_looser_than_asked() -> None:
    f = facts(cgroup=Cgroup(1, "/x", 64 * 1024**2, 50, 0.5))
    assert checks.cgroup(f, memory="64m", pids=50, cpus=0.5) == []
    assert checks.cgroup(f, memory="128m", pids=64, cpus=1) == []  # stricter passes
    vs = checks.cgroup(f, memory="32m", pids=10, cpus=0.25)
    assert [v.check for v in vs] == ["cgroup"] * 3
    assert vs[0].observed == "memory limit 64 MiB (67108864 bytes)"
    [v] = checks.cgroup(facts(), memory="64m")
    assert v.observed == "memory limit unlimited"
    assert v.hint == ""


def test_cgroup_hint_for_rootless_on_v1() -> None:
    [v] = checks.cgroup(rootless(), pids=50)
    assert "rootless podman-rootless on cgroup v1 ignores resource limits" in v.hint
    f = rootless(cgroup=Cgroup(2, "/user.slice/x", None, None, None))
    assert checks.cgroup(f, pids=50)[0].hint == ""


def test_read_only_rootfs() -> None:
    assert checks.read_only_rootfs(facts(rootfs_read_only=True)) == []
    assert checks.read_only_rootfs(facts())


def test_not_privileged() -> None:
    assert checks.not_privileged(facts()) == []
    [v] = checks.not_privileged(privileged())
    for sign in (
        "every capability the host has",
        "seccomp is disabled",
        "/sys is writable",
        "/proc/sys/kernel/core_pattern is writable",
    ):
        assert sign in v.observed
    assert (
        "user namespace" in checks.not_privileged(privileged(uid_map=((0, 100000, 65536),)))[0].hint
    )


def test_seccomp_off_alone_is_not_privileged_mode() -> None:
    assert checks.not_privileged(facts(seccomp="disabled")) == []


def test_privileged_without_host_caps_falls_back_to_the_dangerous_set() -> None:
    f = replace(privileged(), host_capabilities=())
    assert "bounding set holds" in checks.not_privileged(f)[0].observed


def test_no_sensitive_mounts() -> None:
    assert checks.no_sensitive_mounts(facts()) == []
    host = facts(
        host_root_mounts=("/host",),
        engine_sockets=("/var/run/docker.sock",),
        mounts=(*facts().mounts, Mount("/data", "ext4", "/dev/vda", "/etc", True, ("ro",), "/etc")),
    )
    [v] = checks.no_sensitive_mounts(host)
    assert "host root at /host" in v.observed
    assert "engine API socket at /var/run/docker.sock" in v.observed
    assert "host /etc at /data (ro)" in v.observed


def test_a_harmless_bind_mount_is_not_sensitive() -> None:
    m = Mount("/data", "ext4", "/dev/vda", "/srv/app", False, ("rw",), "/srv/app")
    assert checks.no_sensitive_mounts(facts(mounts=(*facts().mounts, m))) == []


def test_expect_raises_with_runtime_expected_observed() -> None:
    with pytest.raises(AssertionError) as info:
        expect.seccomp(privileged(), "filter")
    assert str(info.value).startswith("[docker] seccomp: expected filter, observed disabled")
    expect.seccomp(facts(), "filter")  # passes silently
    with pytest.raises(AssertionError, match=r"\[podman-rootless\] cgroup"):
        expect.cgroup(rootless(), memory="64m")
    with pytest.raises(AssertionError, match="allowed"):
        expect.denied(facts(), "/etc/shadow")
    expect.denied(facts(), "/dev/mem", "r", errno="ENOENT")
    with pytest.raises(AssertionError):
        expect.operation_denied(facts(), "mknod_device")
    expect.operation_denied(facts(), "mount_tmpfs")
    expect.allowed(replace(facts(), access={"/x:r": AccessResult(True)}), "/x")


def test_namespaces_non_root_limits_lsm() -> None:
    f = facts(namespaces={"net": "host", "pid": "private", "ipc": "private", "uts": "private"})
    [v] = checks.namespaces_private(f, ["net", "pid"])
    assert v.observed == "shares the host's net"
    assert checks.namespaces_private(f, ["pid"]) == []
    assert checks.namespaces_private(facts(), ["pid"])[0].observed == "not observed"
    assert checks.non_root(facts())[0].observed == "uid 0"
    assert checks.non_root(facts(user=User(1000, 1000, 1000, 1000))) == []
    assert [v.expected for v in checks.limits_set(facts(), memory=True, pids=True)] == [
        "a memory limit",
        "a pids limit",
    ]
    assert (
        checks.limits_set(facts(cgroup=Cgroup(1, "/x", 1, 2, None)), memory=True, pids=True) == []
    )
    assert checks.lsm_not_unconfined(facts()) == []  # no LSM on the host: nothing to judge
    from pytest_containersec.model import Lsm

    assert checks.lsm_not_unconfined(facts(lsm=Lsm("apparmor", "unconfined")))
    assert checks.lsm_not_unconfined(facts(lsm=Lsm("selinux", "system_u:system_r:unconfined_t:s0")))
    assert checks.lsm_not_unconfined(facts(lsm=Lsm("apparmor", "docker-default (enforce)"))) == []
    # measured on the trixie VM: rootless Docker's containers carry runc's own profile in
    # unconfined mode, privileged Podman's crun's; a complain-mode profile denies nothing
    assert checks.lsm_not_unconfined(facts(lsm=Lsm("apparmor", "runc (unconfined)")))
    assert checks.lsm_not_unconfined(facts(lsm=Lsm("apparmor", "crun (unconfined)")))
    assert checks.lsm_not_unconfined(facts(lsm=Lsm("apparmor", "docker-default (complain)")))
    # measured on the trixie VM: Incus stacks its host profile with the container's own
    # policy namespace, unconfined in there: confined by the host's profile
    stacked = "incus-c_</var/lib/incus>//&:incus-c_<var-lib-incus>:unconfined (enforce)"
    assert checks.lsm_not_unconfined(facts(lsm=Lsm("apparmor", stacked))) == []
    assert checks.lsm(facts(lsm=Lsm("apparmor", stacked))) == []
    for loose in ("unconfined//&:ns:unconfined (unconfined)",
                  "unconfined//&:ns:unconfined",
                  "incus-c//&:ns:unconfined (complain)"):  # fmt: skip
        assert checks.lsm_not_unconfined(facts(lsm=Lsm("apparmor", loose))), loose


def test_harmless_device_binds_of_rootless_engines_are_not_sensitive() -> None:
    binds = tuple(
        Mount(p, "devtmpfs", "udev", p, False, ("rw",), p)
        for p in ("/dev/null", "/dev/urandom", "/dev/tty")
    )
    mask = Mount("/proc/keys", "devtmpfs", "udev", "/null", False, ("rw",), "/dev/null")
    assert checks.no_sensitive_mounts(facts(mounts=(*facts().mounts, *binds, mask))) == []
    dev_mem = Mount("/dev/mem", "devtmpfs", "udev", "/mem", False, ("rw",), "/dev/mem")
    assert (
        "host /dev/mem at /dev/mem"
        in checks.no_sensitive_mounts(facts(mounts=(dev_mem,)))[0].observed
    )


def test_access_verdicts_need_a_probe_that_ran_as_the_main_process() -> None:
    # the entrypoint dropped to uid 999 while execs run as root: the probe's attempts do
    # not speak for the main process, in either direction
    f = facts(mismatches=(Mismatch("user.uid", 999, 0, "inside"),))
    [v] = checks.denied(f, "/proc/sys/kernel/core_pattern", "w")
    assert "user.uid: main process 999, probe 0" in v.observed
    assert checks.allowed(f, "/etc/shadow", "r")
    assert checks.operation_denied(f, "mount_tmpfs")
    # a declared-vs-observed mismatch does not affect access verdicts
    g = facts(mismatches=(Mismatch("cgroup.memory_max", 1, None, "declared"),))
    assert checks.denied(g, "/proc/sys/kernel/core_pattern", "w") == []
