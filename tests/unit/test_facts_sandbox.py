"""gVisor (runsc): Facts from recorded sandbox outputs; which side each field came from,
and never the Sentry's credentials as the workload's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_containersec.errors import ProbeParseError, UnsupportedSpec
from pytest_containersec.linux import cgroups
from pytest_containersec.model import (
    SOURCE_HOST_SANDBOX,
    SOURCE_INSIDE_GVISOR,
    Cgroup,
    Declared,
    Facts,
)
from pytest_containersec.observe import facts, facts_sandbox, probe
from pytest_containersec.runtimes.base import Container, ExecResult
from pytest_containersec.runtimes.docker.docker import host_config
from pytest_containersec.runtimes.oci import oci_variants as v
from pytest_containersec.spec import ContainerSpec

DATA = Path(__file__).parent.parent / "data" / "gvisor"
SENTRY_PID = 4242


class FakeSandboxed(Container):
    """A container whose execs answer with what a docker:runsc container printed."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.runtime = "docker:runsc"
        self.id = self.name = "c1"
        self.host_pid = SENTRY_PID
        self.spec = spec
        self.engine_rootless = False
        self.sandbox = "gvisor"

    def exec(self, argv: list[str], timeout: float = 30.0) -> ExecResult:
        if argv[1:3] == ["sh", "-c"] and argv[3] == facts_sandbox.VIEW_SCRIPT:
            return ExecResult(0, (DATA / "view-docker-runsc-20221219.txt").read_text(), "")
        assert argv[3] == probe.script()
        return ExecResult(0, (DATA / "probe-docker-runsc-20221219.txt").read_text(), "")

    def stop(self) -> None:
        pass

    def declared(self) -> Declared:
        return {"seccomp": "default", "binds": ["/tmp:/hosttmp:ro"], "memory": 67108864,
                "pids_limit": 128, "user": "1000", "oci_runtime": "runsc"}  # fmt: skip

    def logs(self) -> str:
        return ""


@pytest.fixture
def gvisor_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Facts:
    proc = tmp_path / "proc"
    (proc / str(SENTRY_PID) / "attr").mkdir(parents=True)
    (proc / str(SENTRY_PID) / "status").write_text((DATA / "sentry-status.txt").read_text())
    (proc / str(os.getpid())).mkdir()
    (proc / str(os.getpid()) / "status").write_text(Path("/proc/self/status").read_text())
    limits = Cgroup(1, "/docker/c1", 67108864, 128, None)
    monkeypatch.setattr(cgroups, "read_limits", lambda pid, proc_root: limits)
    spec = ContainerSpec(user="1000", memory="64m", pids_limit=128, volumes=["/tmp:/hosttmp:ro"])
    return facts.collect(FakeSandboxed(spec), proc=proc)


def test_the_sentrys_credentials_are_never_the_workloads(gvisor_facts: Facts) -> None:
    f = gvisor_facts
    sentry = (DATA / "sentry-status.txt").read_text()
    assert "Uid:\t65534" in sentry
    assert "CapEff:\t0000000000240000" in sentry
    assert f.user.uid == 1000
    assert f.user.gid == 1000
    assert f.user.groups == (1000,)
    assert f.user.host_uid != 65534
    assert f.capabilities.effective == ()  # the Sentry holds SYS_ADMIN/SYS_CHROOT-ish bits
    assert "CAP_SYS_ADMIN" not in f.capabilities.bounding
    assert f.seccomp == "disabled"  # what gVisor applies to the workload, not its own filter
    assert f.no_new_privs is True  # from prctl inside (gVisor's status has no such line)
    assert f.capabilities.ambient == ()  # gVisor refuses PR_CAP_AMBIENT: none exist
    assert f.source_of("user") == SOURCE_INSIDE_GVISOR
    assert f.source_of("capabilities.effective") == SOURCE_INSIDE_GVISOR
    assert f.source_of("cgroup") == SOURCE_HOST_SANDBOX
    assert f.source_of("host_pid") == SOURCE_HOST_SANDBOX
    assert not [m for m in f.mismatches if m.source == "inside"]


def test_limits_from_the_sandbox_cgroup_and_the_seccomp_gap(gvisor_facts: Facts) -> None:
    f = gvisor_facts
    assert (f.cgroup.memory_max, f.cgroup.pids_max) == (67108864, 128)
    # Docker declared its default profile; runsc does not load OCI seccomp by default
    assert [(m.field, m.source) for m in f.mismatches] == [("seccomp", "declared")]


def test_mounts_namespaces_and_host_paths_from_inside(gvisor_facts: Facts) -> None:
    f = gvisor_facts
    by_point = {m.mountpoint: m for m in f.mounts}
    assert by_point["/"].fstype == "9p"
    assert not f.rootfs_read_only
    assert by_point["/hosttmp"].host_path == "/tmp"
    assert by_point["/hosttmp"].read_only
    assert by_point["/etc/hosts"].host_path is None  # gVisor's devices never match the host's
    assert "/.containersec" not in by_point
    assert f.namespaces == {"net": "private", "pid": "private", "user": "private"}
    assert "ipc" not in f.namespaces  # not shown by gVisor: not observed, not "private"
    assert f.access["/etc/shadow:r"].errno == "EACCES"


def test_sources_round_trip_and_default_to_host(gvisor_facts: Facts) -> None:
    again = Facts.from_json(gvisor_facts.to_json())
    assert again == gvisor_facts
    assert again.sources["lsm"] == SOURCE_HOST_SANDBOX
    d = json.loads(gvisor_facts.to_json())
    del d["sources"]  # JSON written before sources existed
    old = Facts.from_dict(d)
    assert old.sources == {}
    assert old.source_of("user") == "host"


def test_view_parser_is_strict() -> None:
    text = (DATA / "view-docker-runsc-20221219.txt").read_text()
    seen = facts_sandbox.parse_view(text)
    assert seen.links["pid"] == "pid:[534]"
    assert " rw - 9p " in seen.mountinfo.splitlines()[0]
    for bad in (text.replace("CSVIEW1 END", ""), text.replace("\nN\n", "\nX\n"),
                text.replace("pid pid:[534]", "pid ../../evil"), "x" * 300_000):  # fmt: skip
        with pytest.raises(ProbeParseError):
            facts_sandbox.parse_view(bad)


def test_status_completion_refuses_to_guess() -> None:
    status = "Uid:\t0\t0\t0\t0\nPid:\t3\n"
    done = facts_sandbox.complete_status(
        status, ("no_new_privs: 0", "Ambient capabilities: [none]")
    )
    assert "NoNewPrivs:\t0" in done
    assert "CapAmb:\t0000000000000000" in done
    assert "NSpid:\t3" in done
    with pytest.raises(ProbeParseError):
        facts_sandbox.complete_status(status, ("Ambient capabilities: [none]",))
    with pytest.raises(ProbeParseError):
        facts_sandbox.complete_status(status, ("no_new_privs: 1", "Ambient capabilities: net_raw"))
    full = status + "NoNewPrivs:\t1\nCapAmb:\t0000000000000400\nNSpid:\t3\n"
    assert facts_sandbox.complete_status(full, ()) == full


def test_runsc_variants_map_network_and_sandbox() -> None:
    assert v.sandbox_of("runsc") == "gvisor"
    assert v.sandbox_of("runc") is None
    kw = host_config(ContainerSpec(), "docker:runsc", "/p", "runsc")
    assert kw["runtime"] == "runsc"
    assert kw["network_mode"] == "none"
    with pytest.raises(UnsupportedSpec, match="network"):
        host_config(ContainerSpec(network="host"), "docker:runsc", "/p", "runsc")
    host_config(ContainerSpec(network="host"), "docker:runc", "/p", "runc")
