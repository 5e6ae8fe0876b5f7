"""The incus runtime against real Incus (Debian trixie and later: the VM tier).

On a host without Incus (Debian 12 has none) only the availability test runs and asserts
the reason names the missing incus; on Debian 13+ Incus must be available (so the VM tier
cannot silently drop these tests), and the container tests compare what each mapped spec
field really does (observed from the host's /proc and the probe) with the spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import ExecTimeout, UnsupportedSpec
from pytest_containersec.linux import caps, session
from pytest_containersec.runtimes import get_runtime, probe_copy
from pytest_containersec.runtimes.incus import incus_spec
from pytest_containersec.runtimes.incus.incus import (
    IncusContainer,
    IncusRuntime,
    incus_dir,
    instance_exists,
    query,
)
from pytest_containersec.spec import ContainerSpec

INSTALLED = shutil.which("incus") is not None


def debian_major() -> int | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if fields.get("ID") != "debian":
        return None
    version = fields.get("VERSION_ID", "").strip('"')
    return int(version) if version.isdigit() else None


def test_availability_names_incus() -> None:
    a = get_runtime("incus").availability()
    if not INSTALLED:
        assert not a.available
        assert "incus not found" in a.reason
        assert "incus-base" in a.hint
        assert a.line().startswith("incus: unavailable: incus not found")
    elif (debian_major() or 0) >= 13:  # the VM tier: it must really run there
        assert a.available, a.line()
        assert a.version.startswith("Incus ")


def statuses(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def host_bounding() -> set[str]:
    mask = int(statuses(os.getpid())["CapBnd"], 16)
    return {n for b, n in enumerate(caps.CAP_NAMES) if mask >> b & 1}


def instances() -> set[str]:
    """This session's instances (another worker's come and go meanwhile)."""
    mine = f"containersec-{session.current().id}-"
    return {i["name"] for i in query("/1.0/instances?recursion=1") if i["name"].startswith(mine)}


if INSTALLED:

    @pytest.fixture(scope="module")
    def rt() -> IncusRuntime:
        r = get_runtime("incus")
        assert isinstance(r, IncusRuntime)
        a = r.availability()
        assert a.available, a.line()
        return r

    @pytest.fixture(scope="module")
    def data() -> Iterator[Path]:
        d = Path(tempfile.mkdtemp(prefix="containersec-incus-"))
        d.chmod(0o755)
        (d / "f").write_text("from the host\n")
        (d / "f").chmod(0o644)
        yield d
        shutil.rmtree(d)

    @pytest.fixture(scope="module")
    def default(rt: IncusRuntime) -> Iterator[IncusContainer]:
        c = rt.start(ContainerSpec())
        assert isinstance(c, IncusContainer)
        yield c
        c.stop()

    @pytest.fixture(scope="module")
    def many(rt: IncusRuntime, data: Path) -> Iterator[IncusContainer]:
        """Most mapped fields at once: one start under TCG costs seconds."""
        spec = ContainerSpec(
            user="1000", cap_drop=["NET_RAW", "CHOWN"], cap_add=["SYS_TIME"], read_only=True,
            memory="64m", pids_limit=50, cpus=0.5, no_new_privileges=True,
            env={"GREETING": "hello there"}, volumes=[f"{data}:/data:ro"],
            command=["sleep", "100000"],
        )  # fmt: skip
        c = rt.start(spec)
        assert isinstance(c, IncusContainer)
        yield c
        c.stop()

    def test_default(default: IncusContainer) -> None:
        f = default.facts()
        assert f.user.uid == 0
        assert f.user.host_uid != 0  # Incus's own user namespace
        assert f.namespaces["user"] == "private"
        assert f.namespaces["net"] == "private"
        assert set(f.capabilities.bounding) == incus_spec.default_caps()
        assert f.seccomp == "filter"
        assert f.no_new_privs is False
        assert f.cgroup.memory_max is None
        assert f.cgroup.pids_max is None
        assert f.declared["userns_mode"] == "auto"
        assert f.declared["network_mode"] == "none"
        assert [m for m in f.mismatches if m.source == "inside"] == []
        expect.no_mismatches(default)
        expect.root_unprivileged(default)
        if f.lsm.name == "apparmor":  # Incus's host profile stacked with the container's own
            assert (f.lsm.label or "").startswith("incus-"), f.lsm.label
            assert "//&:" in (f.lsm.label or ""), f.lsm.label
            expect.lsm_not_unconfined(default)  # confined by the host's profile
            expect.lsm(default)
        # no network device at all: loopback only
        links = default.exec(["ls", "/sys/class/net"]).stdout.split()
        assert links == ["lo"]
        cmd = Path(f"/proc/{default.host_pid}/cmdline").read_bytes().split(b"\0")
        assert cmd[-3:] == [b"sleep", b"2147483647", b""]

    def test_many_fields(many: IncusContainer, data: Path) -> None:
        f = many.facts()
        assert (f.user.uid, f.user.gid) == (1000, 1000)
        st = statuses(many.host_pid)
        assert st["Uid"].split()[0] == str(f.user.host_uid)
        want = caps.tweak(incus_spec.default_caps(), many.spec.cap_add, many.spec.cap_drop, False)
        assert set(f.capabilities.bounding) == want
        assert "CAP_SYS_TIME" in f.capabilities.bounding
        assert f.capabilities.effective == ()  # uid 1000 without ambient capabilities
        assert f.no_new_privs is True
        assert st["NoNewPrivs"] == "1"
        assert f.rootfs_read_only is True
        expect.read_only_rootfs(many)
        assert f.cgroup.memory_max == 64 * 1024 * 1024
        assert f.cgroup.pids_max == 50
        assert f.cgroup.cpu_max == 0.5
        expect.cgroup(many, memory="64m", pids=50, cpus=0.5)
        assert many.exec(["sh", "-c", "echo $GREETING"]).stdout == "hello there\n"
        env = Path(f"/proc/{many.host_pid}/environ").read_bytes().split(b"\0")
        assert b"GREETING=hello there" in env  # the main process got it too
        assert many.exec(["cat", "/data/f"]).stdout == "from the host\n"
        r = many.exec(["sh", "-c", "echo x >/data/g"])
        assert r.rc != 0
        assert "Read-only" in r.stderr
        r = many.exec(["touch", "/tmp-not-there"])
        assert r.rc != 0
        assert many.exec(["id", "-u"]).stdout == "1000\n"
        cmd = Path(f"/proc/{many.host_pid}/cmdline").read_bytes().split(b"\0")
        assert cmd[-2:] == [b"100000", b""]
        d = f.declared
        assert d["memory"] == 64 * 1024 * 1024
        assert d["pids_limit"] == 50
        assert d["cpus"] == 0.5
        assert d["read_only"] is True
        assert d["no_new_privileges"] is True
        assert d["binds"] == [f"{data}:/data:ro"]
        assert set(d["capabilities"]) == want
        assert [m for m in f.mismatches if m.source == "inside"] == []
        expect.no_mismatches(many)

    def test_exec_exit_status_and_timeout(default: IncusContainer) -> None:
        assert default.exec(["sh", "-c", "exit 3"]).rc == 3
        t0 = time.monotonic()
        with pytest.raises(ExecTimeout):
            default.exec(["sleep", "30"], timeout=2)
        assert time.monotonic() - t0 < 20
        ps = default.exec(["ps", "-o", "args"]).stdout
        assert "sleep 30" not in ps  # busybox timeout killed it inside

    def test_privileged_and_seccomp_unconfined(rt: IncusRuntime) -> None:
        with rt.start(ContainerSpec(privileged=True)) as c:
            f = c.facts()
            assert set(f.capabilities.bounding) == host_bounding()
            assert f.seccomp == "disabled"
            if f.lsm.name == "apparmor":
                assert f.lsm.label == "unconfined"
                with pytest.raises(expect.CheckFailed):
                    expect.lsm_not_unconfined(c)
            assert f.namespaces["user"] == "private"  # Docker's privileged keeps Incus's userns
            assert [m for m in f.mismatches if m.source == "inside"] == []
        with rt.start(ContainerSpec(seccomp="unconfined")) as c:
            f = c.facts()
            assert f.seccomp == "disabled"
            assert f.declared["seccomp"] == "unconfined"
            if f.lsm.name == "apparmor":
                assert f.lsm.label not in (None, "unconfined")

    def test_userns_host(rt: IncusRuntime) -> None:
        with rt.start(ContainerSpec(userns="host", cap_drop=["ALL"])) as c:
            f = c.facts()
            assert f.uid_map == ((0, 0, 4294967295),)
            assert f.namespaces["user"] == "host"
            assert f.user.host_uid == 0
            with pytest.raises(AssertionError, match="IS host root"):
                expect.root_unprivileged(c)
            assert f.capabilities.bounding == ()
            assert f.declared["userns_mode"] == "host"

    def test_userns_an_explicit_range(rt: IncusRuntime, default: IncusContainer) -> None:
        """``0:OUTSIDE:COUNT`` at the end of the ids Incus allots (its default map, as the
        default container's ``volatile.idmap.current`` says): an isolated map with that
        base and size, as observed in the main process's uid_map."""
        inst = query(f"/1.0/instances/{default.name}")
        current = json.loads(inst["config"]["volatile.idmap.current"])
        uid = next(e for e in current if e["Isuid"])
        want = (0, uid["Hostid"] + uid["Maprange"] - 65536, 65536)
        with rt.start(ContainerSpec(userns=f"0:{want[1]}:{want[2]}")) as c:
            f = c.facts()
            assert f.uid_map == (want,)
            expect.uid_map(c, [want])
            assert f.user.host_uid == want[1]
            assert f.declared["userns_mode"] == f"0:{want[1]}:{want[2]}"

    def test_unmappable_fields_are_refused_before_anything_is_made(
        rt: IncusRuntime, tmp_path: Path
    ) -> None:
        before = instances()
        with pytest.raises(UnsupportedSpec, match="network"):
            rt.start(ContainerSpec(network="host"))
        profile = tmp_path / "p.json"
        profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
        with pytest.raises(UnsupportedSpec, match="seccomp"):
            rt.start(ContainerSpec(seccomp=str(profile)))
        with pytest.raises(UnsupportedSpec, match="properties"):
            rt.start(ContainerSpec(properties={"MemoryMax": "1G"}))
        assert instances() == before

    def test_stop_leaves_nothing(rt: IncusRuntime) -> None:
        c = rt.start(ContainerSpec())
        assert isinstance(c, IncusContainer)
        copy = c.probe_copy
        assert copy is not None
        assert copy.path.is_dir()
        pid = c.host_pid
        assert instance_exists(c.name)
        c.stop()
        assert not instance_exists(c.name)
        assert not copy.path.exists()
        assert not (incus_dir() / c.name).exists()
        assert not Path(f"/proc/{pid}").exists() or statuses(pid).get("State", "").startswith("Z")
        c.stop()  # idempotent

    def test_a_killed_session_is_reaped(rt: IncusRuntime) -> None:
        code = (
            "import os\n"
            "from pytest_containersec.runtimes import get_runtime\n"
            "from pytest_containersec.spec import ContainerSpec\n"
            "c = get_runtime('incus').start(ContainerSpec())\n"
            "print(c.name, flush=True)\n"
            "os.kill(os.getpid(), 9)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        name = out.stdout.strip()
        assert name, out.stderr
        assert instance_exists(name)
        rt.reap()  # another session's reap (xdist) may get there first: what counts is that it is gone
        probe_copy.reap()  # what every session's reap does after the runtime's
        assert not (probe_copy.copies_root() / name).exists()
        assert not instance_exists(name)
        assert not (incus_dir() / name).exists()
