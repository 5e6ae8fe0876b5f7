"""systemd-run against a real systemd (the host's, or the one booted in nspawn: one boot for
the whole module). Each observed fact is checked against an independent reading of the
host's /proc and cgroup files, so the tests hold where systemd enforces everything too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import ExecTimeout
from pytest_containersec.model import Facts
from pytest_containersec.report import report
from pytest_containersec.runtimes import Container, get_runtime, probe_copy
from pytest_containersec.runtimes.systemd.systemd_run import SystemdRunContainer, SystemdRunRuntime
from pytest_containersec.runtimes.systemd.systemd_run_host import PROPAGATE, base_dir
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

# A real hardened service's settings: what the common spec fields map to, plus the rest
# of a typical unit file passed through as they are.
WORKLOAD = dict(cap_drop=["ALL"], no_new_privileges=True, read_only=True, memory="64m",
                pids_limit=32)  # fmt: skip
HARDENED = ContainerSpec(
    **WORKLOAD,  # type: ignore[arg-type]
    properties={
        "DynamicUser": "yes", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes", "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX",
    },
)  # fmt: skip
PLAIN = ContainerSpec(seccomp="unconfined", network="host")


@pytest.fixture(scope="module")
def rt() -> SystemdRunRuntime:
    r = runtime_or_skip("systemd-run")
    assert isinstance(r, SystemdRunRuntime)
    return r


@pytest.fixture(scope="module")
def hardened(rt: SystemdRunRuntime) -> Iterator[SystemdRunContainer]:
    c = rt.start(HARDENED)
    assert isinstance(c, SystemdRunContainer)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def plain(rt: SystemdRunRuntime) -> Iterator[SystemdRunContainer]:
    c = rt.start(PLAIN)
    assert isinstance(c, SystemdRunContainer)
    yield c
    c.stop()


# -- the truth, read independently ---------------------------------------------------------


def status(pid: int) -> dict[str, str]:
    return {k: v.strip() for k, _, v in
            (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines())}  # fmt: skip


def memory_limit(pid: int) -> int | None:
    """The smallest memory limit over the process's cgroup and its ancestors (v1 or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(",") or (ctrls == "" and not Path(
                "/sys/fs/cgroup/memory").is_dir()):  # fmt: skip
            root = Path("/sys/fs/cgroup/memory" if ctrls else "/sys/fs/cgroup")
            name = "memory.limit_in_bytes" if ctrls else "memory.max"
            limits = []
            d = root / path.lstrip("/")
            while True:
                f = d / name
                if f.exists():
                    raw = f.read_text().strip()
                    if raw != "max" and int(raw) < 2**62:
                        limits.append(int(raw))
                if d == root:
                    break
                d = d.parent
            return min(limits) if limits else None
    return None


def netns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def check_against_host(c: Container, f: Facts) -> None:
    st = status(c.host_pid)
    assert int(st["CapBnd"], 16) == sum(1 << b for b in map(caps_bit, f.capabilities.bounding))
    assert int(st["CapEff"], 16) == sum(1 << b for b in map(caps_bit, f.capabilities.effective))
    assert {"0": "disabled", "2": "filter"}[st["Seccomp"]] == f.seccomp
    assert st["NoNewPrivs"] == ("1" if f.no_new_privs else "0")
    assert int(st["Uid"].split()[1]) == f.user.host_uid
    assert f.cgroup.memory_max == memory_limit(c.host_pid)
    assert f.namespaces["net"] == ("host" if netns(c.host_pid) == netns("self") else "private")
    assert [m for m in f.mismatches if m.source == "inside"] == []


def exposure(f: Facts) -> float:
    """systemd-analyze's overall exposure, as the unit's Facts declare it."""
    analyze = f.declared.get("systemd_analyze")
    assert analyze is not None
    assert analyze["exposure"] is not None, analyze
    return analyze["exposure"]


def caps_bit(name: str) -> int:
    from pytest_containersec.linux.caps import CAP_BITS

    return CAP_BITS[name]


# -- the hardened unit and the plain unit, every family ----------------------------------


def test_hardened_unit(hardened: SystemdRunContainer) -> None:
    f = hardened.facts()
    check_against_host(hardened, f)
    assert f.runtime == "systemd-run"
    assert 0 < f.user.uid < 65534  # DynamicUser: a uid systemd picked
    assert f.capabilities.bounding == ()
    assert f.capabilities.effective == ()
    assert f.seccomp == "filter"
    assert f.no_new_privs
    assert f.rootfs_read_only
    expect.capabilities(hardened, effective=[], absent=["ALL"])
    expect.seccomp(hardened, "filter")
    expect.no_new_privs(hardened)
    expect.read_only_rootfs(hardened)
    expect.denied(hardened, "/etc/shadow", "r", errno="EACCES")
    expect.denied(hardened, "/etc/passwd", "w")  # EACCES first: not the owner
    for op in ("mount_tmpfs", "mknod_device", "unshare_user", "load_module"):
        expect.operation_denied(hardened, op)
    if hardened.inst.kind == "booted":  # the booted manager itself runs in a user namespace
        expect.root_unprivileged(hardened)
    else:  # the host's systemd: DynamicUser is not a user namespace; uid 0 is host root
        with pytest.raises(expect.CheckFailed, match="container root IS host root"):
            expect.root_unprivileged(hardened)
    d = f.declared
    assert d["dynamic_user"]
    assert d["no_new_privileges"]
    assert d["read_only"]
    assert d["memory"] == 64 * 1024**2
    assert d["pids_limit"] == 32
    assert d["network_mode"] == "none"
    assert d["seccomp"] == "custom"
    assert len(d["cap_drop"]) == 41
    analyze = d["systemd_analyze"]
    assert analyze is not None
    assert isinstance(analyze["exposure"], float)
    assert analyze["exposure"] < 5
    assert {s["name"] for s in analyze["settings"]} >= {"PrivateNetwork=", "NoNewPrivileges="}


def test_plain_unit(plain: SystemdRunContainer, hardened: SystemdRunContainer) -> None:
    f = plain.facts()
    check_against_host(plain, f)
    assert f.user.uid == 0
    assert not f.no_new_privs
    assert not f.rootfs_read_only
    assert f.capabilities.effective  # a root service keeps what the manager has
    expect.allowed(plain, "/etc/shadow", "r")
    assert f.namespaces["net"] == ("host" if netns(plain.host_pid) == netns("self") else "private")
    assert exposure(f) > exposure(hardened.facts())
    if f.seccomp == "filter":  # the manager's own filter (nspawn's) confines every unit
        assert any(m.field == "seccomp" and m.expected == "disabled" for m in f.mismatches)


# -- the two findings, as observations that must match what is really in effect ------------


def test_private_network_observed_as_it_really_is(hardened: SystemdRunContainer) -> None:
    f = hardened.facts()
    assert f.declared["properties"]["PrivateNetwork"] == "yes"
    shares_host = netns(hardened.host_pid) == netns("self")
    assert f.namespaces["net"] == ("host" if shares_host else "private")
    flagged = [m for m in f.mismatches if m.field == "PrivateNetwork="]
    if shares_host:  # systemd-analyze says protected; the unit is in the host's namespace
        assert flagged
        assert flagged[0].observed == "exposed"
    else:
        assert flagged == []


def test_memory_max_observed_as_it_really_is(hardened: SystemdRunContainer) -> None:
    f = hardened.facts()
    assert f.declared["memory"] == 64 * 1024**2
    truth = memory_limit(hardened.host_pid)
    assert f.cgroup.memory_max == truth
    if truth is None:  # declared, not enforced: a finding, and the check says so
        assert any(m.field == "cgroup.memory_max" and m.source == "declared"
                   for m in f.mismatches)  # fmt: skip
        with pytest.raises(AssertionError, match="unlimited"):
            expect.cgroup(hardened, memory="64m")
    else:
        assert truth == 64 * 1024**2
        expect.cgroup(hardened, memory="64m")


# -- exec ---------------------------------------------------------------------------------


def test_exec_has_the_units_confinement(hardened: SystemdRunContainer) -> None:
    r = hardened.exec(["/.containersec/busybox", "cat", "/proc/self/status", "/proc/self/cgroup"])
    assert r.rc == 0, r
    main = status(hardened.host_pid)
    inside = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line and
                  line.split(":", 1)[0].isalpha())  # fmt: skip
    for key in ("CapBnd", "CapEff", "CapPrm", "Seccomp", "NoNewPrivs"):
        assert inside[key].strip() == main[key], key
    assert int(inside["Uid"].split()[1]) == hardened.facts().user.uid
    assert hardened.unit in r.stdout  # the exec runs in the unit's cgroup


def test_exec_argv_rc_and_timeout(hardened: SystemdRunContainer) -> None:
    r = hardened.exec(["/.containersec/busybox", "sh", "-c", 'printf "%s|" "$@"; exit 3', "x",
                       "a b", "$HOME", "'"])  # fmt: skip
    assert (r.rc, r.stdout) == (3, "a b|$HOME|'|")
    assert hardened.exec(["no-such-command"]).rc == 127
    start = time.monotonic()
    with pytest.raises(ExecTimeout):
        hardened.exec(["/.containersec/busybox", "sleep", "30"], timeout=1)
    assert time.monotonic() - start < 5
    assert hardened.exec(["/.containersec/busybox", "true"]).rc == 0


# -- side by side ----------------------------------------------------------------------------


def test_same_workload_beside_docker_and_nspawn(hardened: SystemdRunContainer) -> None:
    spec = ContainerSpec(**WORKLOAD, user="1000")  # type: ignore[arg-type]
    observed: dict[str, Facts] = {"systemd-run": hardened.facts()}
    notes = {}
    started = []
    try:
        for name in ("docker", "nspawn"):
            other = get_runtime(name)
            avail = other.availability()
            if not avail.available:
                notes[name] = avail.reason
                continue
            c = other.start(spec)
            started.append(c)
            observed[name] = c.facts()
    finally:
        for c in started:
            c.stop()
    if os.environ.get("CI"):
        assert not notes, notes
    for f in observed.values():
        assert f.capabilities.effective == ()
        assert f.no_new_privs
        assert f.rootfs_read_only
    m = report.from_facts("hardened workload", observed, notes=notes)
    rows = {(r.group, r.name): r for r in m.rows}
    analyze = rows[("score", "systemd-analyze exposure (declared)")].cells
    assert analyze["systemd-run"].value.split()[0] == str(exposure(observed["systemd-run"]))
    assert all(analyze[n].value == "-" for n in observed if n != "systemd-run")
    assert set(rows[("score", "exposure (0-10)")].cells) == set(observed)
    assert "systemd-analyze" in report.to_text(m)


# -- cleanup ----------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running, or a zombie its new parent (init, after a kill) has not reaped yet."""
    deadline = time.monotonic() + 3
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def leftovers(state: Path, machine: str, pids: list[int]) -> list[str]:
    left = [str(state)] if state.exists() else []
    left += [f"pid {p}" for p in pids if alive(p)]
    for top in Path("/sys/fs/cgroup").iterdir():
        if (top / "containersec" / machine).exists():
            left.append(str(top / "containersec" / machine))
    if (PROPAGATE / machine).exists():
        left.append(str(PROPAGATE / machine))
    if (probe_copy.copies_root() / machine).exists():
        left.append(str(probe_copy.copies_root() / machine))
    return left


def test_stop_removes_the_unit(rt: SystemdRunRuntime) -> None:
    c = rt.start(ContainerSpec())
    assert isinstance(c, SystemdRunContainer)
    pid, run = c.host_pid, c.agent.run
    c.stop()
    c.stop()  # idempotent
    shown = c.inst.run(["systemctl", "show", c.unit, "-p", "LoadState", "--value"])
    assert shown.stdout.strip() == "not-found"
    assert not Path(f"/proc/{pid}").exists()
    assert not run.exists()


def test_reap_removes_what_a_killed_session_left(rt: SystemdRunRuntime) -> None:
    """A booted system (leader, cgroups, rootfs copy) or, on a systemd host, the host's
    own units: a SIGKILLed session leaves them running, the reaper removes them."""
    code = ("import sys\nfrom pytest_containersec.runtimes import get_runtime\n"
            "from pytest_containersec.spec import ContainerSpec\n"
            "rt = get_runtime('systemd-run'); c = rt.start(ContainerSpec())\n"
            "print(c.inst.kind, c.inst.state, c.inst.leader, c.host_pid, c.unit, flush=True)\n"
            "sys.stdin.read()\n")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout is not None
    kind, state_s, leader, pid, unit = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.stdin is not None
    child.stdin.close()
    state = Path(state_s)
    assert state.exists()
    assert Path(f"/proc/{pid}").exists()
    rt.reap()  # another session's reap (xdist) may get there first: what counts is that it is gone
    probe_copy.reap()  # what every session's reap does after the runtime's
    session_prefix = "-".join(state.name.split("-")[:2]) + "-"  # containersec-SESSION-
    assert re.fullmatch(r"containersec-[0-9a-f]+-", session_prefix), state.name
    assert not [p for p in probe_copy.copies_root().iterdir() if p.name.startswith(session_prefix)]
    if kind == "booted":
        assert leftovers(state, state.name, [int(leader), int(pid)]) == []
    else:  # the host's systemd: the unit is gone from the host's manager
        assert leftovers(state, state.name, [int(pid)]) == []
        shown = subprocess.run(["systemctl", "show", unit, "-p", "LoadState", "--value"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert shown.stdout.strip() == "not-found"


def test_close_stops_the_booted_system(
    rt: SystemdRunRuntime, hardened: SystemdRunContainer
) -> None:
    inst = rt.instance()
    pids = [hardened.host_pid] + ([inst.leader] if inst.leader else [])
    rt.close()
    assert leftovers(inst.state, inst.name, pids) == []
    assert not [d for d in base_dir().iterdir() if d.name == inst.name]
