"""The containerd runtime through ctr: the fields test_facts does not cover, containerd's
defaults beside Docker's, the reaper (root; skipped outside CI when containerd is missing)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import ImageNotFound, UnsupportedSpec
from pytest_containersec.runtimes import probe_copy
from pytest_containersec.runtimes.containerd.containerd import ContainerdRuntime, containers_root
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip


@pytest.fixture(scope="module")
def rt() -> ContainerdRuntime:
    r = runtime_or_skip("containerd")
    assert isinstance(r, ContainerdRuntime)
    return r


@pytest.fixture(scope="module")
def data() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="containersec-ctr-"))
    d.chmod(0o755)
    (d / "f").write_text("from the host\n")
    (d / "f").chmod(0o644)
    yield d
    (d / "f").unlink()
    d.rmdir()


def test_defaults_beside_dockers(rt: ContainerdRuntime) -> None:
    """Same capabilities and masked paths as Docker; no_new_privs on; with seccomp
    "unconfined" nothing is added: a bare ``ctr run`` has no filter."""
    docker = runtime_or_skip("docker")
    with rt.start(ContainerSpec()) as c, docker.start(ContainerSpec()) as d:
        f, g = c.facts(), d.facts()
        assert f.capabilities == g.capabilities
        assert f.seccomp == g.seccomp == "filter"
        assert (f.no_new_privs, g.no_new_privs) == (True, False)
        assert {p: m.state for p, m in f.masked.items()} == {
            p: m.state for p, m in g.masked.items()
        }
        assert f.declared["runtime"] == "io.containerd.runc.v2"
    with rt.start(ContainerSpec(seccomp="unconfined")) as c:
        assert c.facts().seccomp == "disabled"
        assert c.declared()["seccomp"] == "unconfined"


def test_env_volume_network_user_and_command(rt: ContainerdRuntime, data: Path) -> None:
    spec = ContainerSpec(
        env={"GREETING": "hello there"}, volumes=[f"{data}:/data:ro"], network="host",
        user="1000", command=["sleep", "100000"], cap_drop=["ALL"], cap_add=["NET_ADMIN"],
    )  # fmt: skip
    with rt.start(spec) as c:
        assert c.exec(["sh", "-c", "echo $GREETING"]).stdout == "hello there\n"
        assert c.exec(["cat", "/data/f"]).stdout == "from the host\n"
        r = c.exec(["sh", "-c", "echo x >/data/g"])
        assert r.rc != 0
        assert "Read-only" in r.stderr
        assert c.exec(["id", "-u"]).stdout == "1000\n"
        f = c.facts()
        assert f.namespaces["net"] == "host"
        assert f.user.uid == 1000
        assert f.capabilities.effective == ()
        assert f.capabilities.bounding == ("CAP_NET_ADMIN",)  # the user switch's are dropped
        assert [m for m in f.mismatches if m.source == "inside"] == []
        expect.denied(c, "/etc/shadow", "r", errno="EACCES")
        cmd = Path(f"/proc/{c.host_pid}/cmdline").read_bytes().split(b"\0")
        assert cmd[-2:] == [b"100000", b""]
        assert f"{data}:/data:ro" in f.declared["binds"]  # ctr --net-host adds /etc/hosts too
        assert f.declared["network_mode"] == "host"


def test_seccomp_profile_path_and_what_ctr_cannot_map(
    rt: ContainerdRuntime, tmp_path: Path
) -> None:
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"],'
        ' "action": "SCMP_ACT_ERRNO"}]}'
    )
    with rt.start(ContainerSpec(seccomp=str(profile))) as c:
        r = c.exec(["mkdir", "/tmp/x"])
        assert r.rc != 0
        assert "not permitted" in r.stderr
        assert c.facts().seccomp == "filter"
    for bad in (ContainerSpec(userns="keep-id"), ContainerSpec(properties={"A": "b"})):
        with pytest.raises(UnsupportedSpec):
            rt.start(bad)
    with pytest.raises(ImageNotFound, match="never pulls"):
        rt.start(ContainerSpec(image="containersec/no-such-image:ctr"))


def test_a_killed_session_is_reaped(rt: ContainerdRuntime) -> None:
    code = (
        "import os\n"
        "from pytest_containersec.runtimes import get_runtime\n"
        "from pytest_containersec.spec import ContainerSpec\n"
        "c = get_runtime('containerd').start(ContainerSpec(pids_limit=20))\n"
        "print(c.name, c.host_pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    name, pid = out.stdout.split()
    assert (containers_root() / name).is_dir()
    assert Path(f"/proc/{pid}").exists()
    rt.reap()  # another session's reap (xdist) may get there first: what counts is that it is gone
    probe_copy.reap()  # what every session's reap does after the runtime's
    assert not (probe_copy.copies_root() / name).exists()
    assert not (containers_root() / name).exists()
    assert not Path(f"/proc/{pid}").exists()
    assert name not in rt.ctr("containers", "ls", "-q").stdout
    assert not list(Path("/sys/fs/cgroup").glob(f"*/containersec.containerd/{name}"))
