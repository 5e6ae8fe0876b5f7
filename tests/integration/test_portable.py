"""portable against a real systemd-portabled (the host's, or the systemd booted in nspawn:
one boot for the whole module, one container per profile shared by the tests). Each
observed fact is checked against an independent reading of the host's /proc, and each
profile is shown to make a real, observed difference."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import ContainerStartError, UnsupportedSpec
from pytest_containersec.linux.caps import CAP_BITS
from pytest_containersec.runtimes import probe_copy
from pytest_containersec.runtimes.base import PROBE_BUSYBOX
from pytest_containersec.runtimes.systemd import portable
from pytest_containersec.runtimes.systemd import systemd_run_host as sdhost
from pytest_containersec.runtimes.systemd.portable import PortableContainer, PortableRuntime
from pytest_containersec.spec import PORTABLE_PROFILES, ContainerSpec

from .conftest import runtime_or_skip
from .test_systemd_run import check_against_host, exposure, leftovers, netns, status

# The strict profile's TasksMax=4 leaves no room for the probe (refused, tested below).
ROOM = {"pids_limit": 64}
# The main command's words, kept exactly through the unit file (quoting, $, %, ;).
TRICKY = ["x", ";", "$HOME", "100%", 'a"b', "c\\nd", "e\nf", ""]
MAIN = [PROBE_BUSYBOX, "sh", "-c", f"{PROBE_BUSYBOX} sleep 1000; :", *TRICKY]


@pytest.fixture(scope="module")
def rt() -> Iterator[PortableRuntime]:
    r = runtime_or_skip("portable")
    assert isinstance(r, PortableRuntime)
    yield r
    r.close()


@pytest.fixture(scope="module")
def units(rt: PortableRuntime) -> Iterator[dict[str, PortableContainer]]:
    """One container per profile (network="host": the profile's own network, not the
    spec default's PrivateNetwork=yes)."""
    out: dict[str, PortableContainer] = {}
    try:
        for p in PORTABLE_PROFILES:
            c = rt.start(ContainerSpec(portable_profile=p, network="host", **ROOM))  # type: ignore[arg-type]
            assert isinstance(c, PortableContainer)
            out[p] = c
        yield out
    finally:
        for c in out.values():
            c.stop()


@pytest.fixture(scope="module")
def configured(rt: PortableRuntime) -> Iterator[PortableContainer]:
    spec = ContainerSpec(command=MAIN, cap_drop=["ALL"], cap_add=["NET_BIND_SERVICE"],
                         no_new_privileges=True, env={"GREETING": "a $b %c \"d\""}, **ROOM)  # type: ignore[arg-type]  # fmt: skip
    c = rt.start(spec)
    assert isinstance(c, PortableContainer)
    yield c
    c.stop()


def bits(names: tuple[str, ...]) -> int:
    return sum(1 << CAP_BITS[n] for n in names)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(e.split("=", 1) for e in raw if "=" in e)


def attached(c: PortableContainer) -> str:
    r = c.inst.run(["portablectl", "is-attached", c.paths.image_inside])
    return r.stdout.strip()


def attachments(inst: sdhost.SystemdInstance, name: str) -> list[str]:
    """What of image ``name`` the manager still has: attached units and drop-ins, the
    /run/portables link, a listed image (read with the manager's own tools)."""
    r = inst.run(["ls", "-a", "/run/systemd/system.attached", "/etc/systemd/system.attached",
                  "/run/portables", "/etc/portables"])  # fmt: skip
    listed = inst.run(["portablectl", "list", "--no-legend"]).stdout
    return [x for x in r.stdout.split() if x.startswith(name)] + (
        [f"listed: {name}"] if name in listed else [])  # fmt: skip


# -- every profile, against the host's /proc -------------------------------------------


@pytest.mark.parametrize("profile", PORTABLE_PROFILES)
def test_profile_observed_as_the_host_sees_it(
    units: dict[str, PortableContainer], profile: str
) -> None:
    c = units[profile]
    f = c.facts()
    check_against_host(c, f)
    assert f.runtime == "portable"
    d = f.declared
    assert d["portable_profile"] == profile
    assert d["engine"] == "systemd-portabled"
    assert isinstance(exposure(f), float)
    assert attached(c) == "running-runtime"  # attached until reboot (--runtime), running
    # the unit's root is the image: the probe image's own os-release, not the manager's
    assert f.access.get("/etc/shadow:r") is not None
    r = c.exec([PROBE_BUSYBOX, "cat", "/etc/os-release"])
    assert "containersec probe" in r.stdout
    assert not [m for m in f.mismatches if m.source == "spec" and m.field != "cgroup.pids_max"]


def test_strict_and_trusted_differ_as_observed(units: dict[str, PortableContainer]) -> None:
    strict, trusted = units["strict"].facts(), units["trusted"].facts()
    s_st, t_st = status(units["strict"].host_pid), status(units["trusted"].host_pid)
    # strict: a dynamic user with no capability at all, no_new_privs, a read-only tree
    assert int(s_st["CapBnd"], 16) == 0
    assert strict.capabilities.bounding == ()
    assert strict.no_new_privs
    assert strict.user.uid != 0
    assert strict.rootfs_read_only
    expect.capabilities(units["strict"], effective=[], absent=["ALL"])
    expect.denied(units["strict"], "/etc/shadow", "r", errno="EACCES")
    expect.operation_denied(units["strict"], "unshare_user")  # RestrictNamespaces=yes
    # trusted: root with the manager's capabilities, a writable tree, no NoNewPrivileges=
    assert int(t_st["CapEff"], 16) == bits(trusted.capabilities.effective) != 0
    assert trusted.user.uid == 0
    assert not trusted.no_new_privs
    assert not trusted.rootfs_read_only
    expect.allowed(units["trusted"], "/etc/shadow", "r")
    assert exposure(strict) < exposure(trusted)
    # network="host" is PrivateNetwork=no: the spec's field wins over the profile's
    assert strict.declared["properties"]["PrivateNetwork"] == "no"


def test_default_and_nonetwork_differ_as_observed(units: dict[str, PortableContainer]) -> None:
    default, nonet = units["default"].facts(), units["nonetwork"].facts()
    net_caps = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST"}
    assert set(default.capabilities.bounding) - set(nonet.capabilities.bounding) == net_caps
    assert int(status(units["default"].host_pid)["CapBnd"], 16) - int(
        status(units["nonetwork"].host_pid)["CapBnd"], 16) == bits(tuple(net_caps))  # fmt: skip
    for f in (default, nonet):
        assert f.user.uid != 0  # DynamicUser=
        assert f.seccomp == "filter"
        assert f.rootfs_read_only
    assert exposure(default) < exposure(units["trusted"].facts())


def test_network_none_is_a_private_namespace(
    rt: PortableRuntime, units: dict[str, PortableContainer]
) -> None:
    shared = units["default"]
    manager = netns(shared.inst.leader or 1)  # the booted systemd's, or the host's
    assert netns(shared.host_pid) == manager  # network="host"
    with rt.start(ContainerSpec()) as c:  # network="none" (the default): PrivateNetwork=yes
        f = c.facts()
        assert f.namespaces["net"] == "private"
        assert netns(c.host_pid) != manager
        assert f.declared["properties"]["PrivateNetwork"] == "yes"


# -- the spec's drop-in ---------------------------------------------------------------------


def test_spec_fields_in_effect(configured: PortableContainer) -> None:
    f = configured.facts()
    check_against_host(configured, f)
    assert cmdline(configured.host_pid) == MAIN  # every word kept through the unit file
    assert environ(configured.host_pid)["GREETING"] == 'a $b %c "d"'
    assert f.capabilities.bounding == ("CAP_NET_BIND_SERVICE",)
    assert f.capabilities.ambient == ("CAP_NET_BIND_SERVICE",)  # the dynamic user gets it
    assert f.capabilities.effective == ("CAP_NET_BIND_SERVICE",)
    assert f.no_new_privs
    assert "CapabilityBoundingSet=" in configured.declared()["dropin"]
    r = configured.exec([PROBE_BUSYBOX, "cat", "/proc/self/status"])
    inside = dict(line.split(":\t", 1) for line in r.stdout.splitlines() if ":\t" in line)
    main = status(configured.host_pid)
    for key in ("CapBnd", "CapEff", "CapAmb", "Seccomp", "NoNewPrivs"):
        assert inside[key].strip() == main[key], key


def test_strict_without_room_for_the_probe_is_refused(rt: PortableRuntime) -> None:
    state = rt.instance().state  # this session's (another worker's starts its own)
    before = set(state.rglob("containersec-*-portable-*"))
    with pytest.raises(UnsupportedSpec) as info:
        rt.start(ContainerSpec(portable_profile="strict"))
    assert info.value.field == "pids_limit"
    assert "TasksMax=4" in str(info.value)
    assert set(state.rglob("containersec-*-portable-*")) <= before


def test_ignored_setting_is_an_error_with_systemds_line(rt: PortableRuntime) -> None:
    with pytest.raises(ContainerStartError) as info:
        rt.start(ContainerSpec(properties={"MemoryMax": "lots", "NoSuchSetting": "1"}))
    assert "Invalid memory limit 'lots'" in str(info.value)
    assert "NoSuchSetting" in str(info.value)


def test_image_that_fails_to_attach(rt: PortableRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []

    def no_os_release(cache: Path, dest: Path, name: str, argv: list[str]) -> None:
        build(cache, dest, name, argv)
        (dest / "etc" / "os-release").unlink()
        made.append(dest)

    build = portable.build_image
    monkeypatch.setattr(portable, "build_image", no_os_release)
    with pytest.raises(ContainerStartError) as info:
        rt.start(ContainerSpec())
    assert "os-release" in str(info.value)  # portablectl's own words
    assert "systemd-portabled's journal" in str(info.value)
    assert info.value.exit_status not in (0, None)
    assert made
    assert not made[0].exists()


# -- cleanup ----------------------------------------------------------------------------------


def test_stop_leaves_nothing(rt: PortableRuntime) -> None:
    c = rt.start(ContainerSpec())
    assert isinstance(c, PortableContainer)
    pid, run, paths = c.host_pid, c.agent.run, c.paths
    assert paths.image.is_dir()
    assert paths.dropin.is_file()
    c.stop()
    c.stop()  # idempotent
    assert c.detach_error == ""
    shown = c.inst.run(["systemctl", "show", c.unit, "-p", "LoadState", "--value"])
    assert shown.stdout.strip() == "not-found"
    assert attachments(c.inst, c.name) == []
    assert not Path(f"/proc/{pid}").exists()
    for p in (run, paths.image, paths.dropin.parent, paths.attached):
        assert not p.exists(), p


def test_reap_removes_what_a_killed_session_left(rt: PortableRuntime) -> None:
    code = ("import sys\nfrom pytest_containersec.runtimes import get_runtime\n"
            "from pytest_containersec.spec import ContainerSpec\n"
            "c = get_runtime('portable').start(ContainerSpec())\n"
            "print(c.inst.kind, c.inst.state, c.inst.leader, c.host_pid, c.unit,"
            " c.paths.image_inside, c.paths.dropin, flush=True)\n"
            "sys.stdin.read()\n")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout is not None
    kind, state_s, leader, pid, unit, image, dropin = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    state = Path(state_s)
    assert state.exists()
    assert Path(f"/proc/{pid}").exists()
    rt.reap()  # another session's reap (xdist) may get there first: what counts is that it is gone
    probe_copy.reap()  # what every session's reap does after the runtime's
    if kind == "booted":  # the whole booted system, its images and drop-ins in its rootfs
        assert leftovers(state, state.name, [int(leader), int(pid)]) == []
        return
    assert leftovers(state, state.name, [int(pid)]) == []
    assert not Path(image).exists()
    assert not Path(dropin).exists()
    shown = subprocess.run(["systemctl", "show", unit, "-p", "LoadState", "--value"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert shown.stdout.strip() == "not-found"
    host = sdhost.SystemdInstance("host", state)
    assert attachments(host, Path(image).name) == []
