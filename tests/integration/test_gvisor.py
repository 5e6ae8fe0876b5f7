"""gVisor (runsc) variants on real engines: the workload's identity from inside the
sandbox, never the Sentry's; limits from the sandbox's host cgroup; each field's side."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_containersec.errors import RuntimeUnavailable
from pytest_containersec.linux import procfs
from pytest_containersec.model import SOURCE_HOST_SANDBOX, SOURCE_INSIDE_GVISOR
from pytest_containersec.runtimes.base import Container
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

# pids_limit: under gVisor the pids cgroup counts the sandbox's host tasks (the Sentry, the
# gofer and, on the ptrace platform, stub processes per workload task: ~45 idle, ~80
# after one probe here); a limit near that makes the sandbox fail its execs (measured).
SPEC = ContainerSpec(
    user="1000", memory="128m", pids_limit=512, cap_drop=["NET_RAW"],
    volumes=["/var/lib/containersec/images:/hostimages:ro"],
)  # fmt: skip


@pytest.fixture(scope="module", params=["docker:runsc", "podman:runsc"])
def sandboxed(request: pytest.FixtureRequest) -> Iterator[Container]:
    rt = runtime_or_skip(str(request.param))
    with rt.start(SPEC) as c:
        yield c


def test_the_sentry_is_not_reported_as_the_workload(sandboxed: Container) -> None:
    c = sandboxed
    assert c.sandbox == "gvisor"
    sentry = procfs.read_status(c.host_pid)
    f = c.facts()
    assert sentry.uid[0] != 1000  # the host process is gVisor's Sentry, not uid 1000
    assert f.user.uid == 1000
    assert f.user.host_uid == 1000
    assert f.user.uid != sentry.uid[0]
    assert f.capabilities.effective == ()  # the Sentry holds capabilities of its own
    assert sentry.cap_effective != ()
    assert f.source_of("user") == f.source_of("capabilities") == SOURCE_INSIDE_GVISOR
    assert f.source_of("no_new_privs") == f.source_of("seccomp") == SOURCE_INSIDE_GVISOR
    assert not [m for m in f.mismatches if m.source == "inside"]


def test_limits_observed_on_the_sandbox_cgroup(sandboxed: Container) -> None:
    f = sandboxed.facts()
    assert f.source_of("cgroup") == SOURCE_HOST_SANDBOX
    assert f.cgroup.memory_max == 128 * 1024 * 1024
    assert f.cgroup.pids_max == 512
    assert not [m for m in f.mismatches if m.field.startswith("cgroup")]


def test_mounts_access_and_namespaces_from_inside(sandboxed: Container) -> None:
    f = sandboxed.facts()
    host = {m.mountpoint: m for m in f.mounts}
    assert host["/hostimages"].read_only
    assert host["/hostimages"].host_path == "/var/lib/containersec/images"
    assert f.access["/etc/shadow:r"].errno == "EACCES"  # as uid 1000, inside the sandbox
    assert f.namespaces.get("pid") == "private"
    assert f.namespaces.get("user") == "private"
    assert "CAP_NET_RAW" not in f.capabilities.bounding
    # what runsc really enforces: Docker/Podman declare a seccomp profile that runsc does
    # not load (no --oci-seccomp): a declared mismatch, not a silent pass
    if f.seccomp == "disabled":
        assert ("seccomp", "declared") in {(m.field, m.source) for m in f.mismatches}


def test_rootless_podman_runsc_runs_or_says_why() -> None:
    rt = runtime_or_skip("podman-rootless:runsc")
    refused: RuntimeUnavailable | None = None
    try:
        c = rt.start(ContainerSpec())
    except RuntimeUnavailable as exc:  # rootless runsc on cgroup v1: no cgroup of its own
        refused = exc
    if refused is not None:
        assert "runsc refuses this host" in refused.reason
        return
    with c:
        assert c.facts().source_of("user") == SOURCE_INSIDE_GVISOR
