"""The lxc runtime against real LXC: the fields test_facts does not cover, lxc-attach's
confinement, the reaper (root; skipped outside CI when LXC is missing)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import UnsupportedSpec
from pytest_containersec.linux import session
from pytest_containersec.runtimes import probe_copy
from pytest_containersec.runtimes.lxc.lxc import LxcContainer, LxcRuntime, cgroup_dirs, lxcpath
from pytest_containersec.runtimes.lxc.lxc_spec import parse_subids
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip


@pytest.fixture(scope="module")
def rt() -> LxcRuntime:
    r = runtime_or_skip("lxc")
    assert isinstance(r, LxcRuntime)
    return r


@pytest.fixture(scope="module")
def data() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="containersec-lxc-"))
    d.chmod(0o755)
    (d / "f").write_text("from the host\n")
    (d / "f").chmod(0o644)
    yield d
    (d / "f").unlink()
    d.rmdir()


@pytest.fixture(scope="module")
def many(rt: LxcRuntime, data: Path) -> Iterator[LxcContainer]:
    """Several fields at once: env, a read-only volume, the host network, a command."""
    spec = ContainerSpec(
        env={"GREETING": "hello there"}, volumes=[f"{data}:/data:ro"], network="host",
        command=["sleep", "100000"],
    )  # fmt: skip
    c = rt.start(spec)
    assert isinstance(c, LxcContainer)
    yield c
    c.stop()


def status(pid: int | str) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_env_volume_network_and_command(many: LxcContainer, data: Path) -> None:
    assert many.exec(["sh", "-c", "echo $GREETING"]).stdout == "hello there\n"
    env = Path(f"/proc/{many.host_pid}/environ").read_bytes().split(b"\0")
    assert b"GREETING=hello there" in env  # the main process got it too
    assert many.exec(["cat", "/data/f"]).stdout == "from the host\n"
    r = many.exec(["sh", "-c", "echo x >/data/g"])
    assert r.rc != 0
    assert "Read-only" in r.stderr
    f = many.facts()
    assert f.namespaces["net"] == "host"
    assert f.namespaces["pid"] == "private"
    assert f.namespaces["user"] == "private"
    cmd = Path(f"/proc/{many.host_pid}/cmdline").read_bytes().split(b"\0")
    assert cmd[-2:] == [b"100000", b""]
    assert cmd[0].endswith(b"sleep")
    assert any(m.mountpoint == "/data" and m.read_only for m in f.mounts)
    assert f.declared["binds"] == [f"{data}:/data:ro"]
    assert f.declared["network_mode"] == "host"


def test_lxc_attach_keeps_the_containers_confinement(many: LxcContainer) -> None:
    """An attached process's own status equals the main process's (capabilities, seccomp,
    no_new_privs), and from the host it sits in the main process's cgroups."""
    proc = subprocess.Popen(
        ["lxc-attach", "-n", many.name, "-P", str(lxcpath()), "--clear-env", "--",
         "/.containersec/busybox", "sh", "-c", "cat /proc/self/status; echo ---; sleep 5"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = list(iter(proc.stdout.readline, "---\n"))
        inside = {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        main = status(many.host_pid)
        for key in ("CapBnd", "CapEff", "CapPrm", "Seccomp", "Seccomp_filters", "NoNewPrivs"):
            assert inside[key] == main[key], key

        def cgroups(pid: int | str) -> dict[str, str]:
            text = Path(f"/proc/{pid}/cgroup").read_text()
            return dict(line.split(":", 2)[1:] for line in text.splitlines())

        others = [p for p in os.listdir("/proc") if p.isdigit() and p != str(many.host_pid)
                  and _in_ns_of(p, many.host_pid)]  # fmt: skip
        assert others  # the attached shell and its sleep
        for p in others:
            for ctrl, path in cgroups(many.host_pid).items():
                assert cgroups(p)[ctrl].startswith(path), (ctrl, p)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _in_ns_of(pid: str, other: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{other}/ns/pid")
    except OSError:
        return False


def test_own_lxc_seccomp_policy_and_oci_profiles(rt: LxcRuntime, tmp_path: Path) -> None:
    own = tmp_path / "deny-mkdir.seccomp"
    own.write_text("2\ndenylist\n[all]\nmkdir errno 1\nmkdirat errno 1\n")
    with rt.start(ContainerSpec(seccomp=str(own))) as c:
        r = c.exec(["mkdir", "/tmp/x"])
        assert r.rc != 0
        assert "not permitted" in r.stderr
        f = c.facts()
        assert f.seccomp == "filter"
        assert f.declared["seccomp_profile"] == str(own)
    oci = tmp_path / "oci.json"
    oci.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    with pytest.raises(UnsupportedSpec, match="OCI JSON"):
        rt.start(ContainerSpec(seccomp=str(oci)))


def test_userns_host_and_an_explicit_range(rt: LxcRuntime) -> None:
    with rt.start(ContainerSpec(userns="host", cap_drop=["ALL"])) as c:
        f = c.facts()
        assert f.uid_map == ((0, 0, 4294967295),)
        assert f.namespaces["user"] == "host"
        with pytest.raises(AssertionError, match="IS host root"):
            expect.root_unprivileged(c)
        assert f.capabilities.bounding == ()
    start, count = parse_subids(Path("/etc/subuid").read_text())[0]
    want = (0, start + count - 2000, 2000)
    with rt.start(ContainerSpec(userns=f"0:{want[1]}:{want[2]}")) as c:
        f = c.facts()
        assert f.uid_map == (want,)
        expect.uid_map(c, [want])
        assert f.user.host_uid == want[1]
    with pytest.raises(UnsupportedSpec, match="keep-id"):
        rt.start(ContainerSpec(userns="keep-id"))


def test_a_killed_session_is_reaped(rt: LxcRuntime) -> None:
    """A container whose session died (SIGKILL: nothing ran its stop) goes with the next
    reap: LXC's processes, its cgroups, the folder."""
    code = (
        "import os, sys\n"
        "from pytest_containersec.runtimes import get_runtime\n"
        "from pytest_containersec.spec import ContainerSpec\n"
        "c = get_runtime('lxc').start(ContainerSpec(memory='64m'))\n"
        "print(c.name, c.host_pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    name, pid = out.stdout.split()
    assert (lxcpath() / name).is_dir()
    assert Path(f"/proc/{pid}").exists()
    assert cgroup_dirs(name)
    rt.reap()  # another session's reap (xdist) may get there first: what counts is that it is gone
    probe_copy.reap()  # what every session's reap does after the runtime's
    assert not (probe_copy.copies_root() / name).exists()
    assert not (lxcpath() / name).exists()
    assert not Path(f"/proc/{pid}").exists() or status(pid).get("State", "").startswith("Z")
    assert cgroup_dirs(name) == []
    assert session.owner_alive(session.current().owner)  # ours were left alone
