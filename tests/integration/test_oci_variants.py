"""ENGINE:OCI variants on real engines: the runtime each container really ran with, crun's
refusal of a cgroup v1 hybrid host as RuntimeUnavailable (nothing left behind)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_containersec.errors import RuntimeUnavailable
from pytest_containersec.linux import hostinfo
from pytest_containersec.runtimes import get_runtime
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip


def hybrid() -> bool:
    """cgroup v1 with a cgroup2 hierarchy beside it (where crun refuses to run)."""
    mounts = Path("/proc/self/mounts").read_text()
    return hostinfo.cgroup_version() == 1 and " cgroup2 " in mounts


@pytest.mark.parametrize(
    ("name", "engine_says"), [("podman:runc", "runc"), ("docker:runc", "runc")]
)
def test_runc_variants_run_with_runc(name: str, engine_says: str) -> None:
    rt = runtime_or_skip(name)
    with rt.start(ContainerSpec(cap_drop=["ALL"], pids_limit=30)) as c:
        f = c.facts()
        assert f.runtime == name
        assert f.declared["oci_runtime"] == engine_says
        assert f.capabilities.bounding == ()
        assert f.cgroup.pids_max == 30


@pytest.mark.parametrize("name", ["podman:crun", "docker:crun", "containerd:crun"])
def test_crun_runs_or_names_why_it_refuses_this_host(name: str) -> None:
    rt = runtime_or_skip(name)
    if not hybrid():
        with rt.start(ContainerSpec()) as c:
            assert c.facts().seccomp == "filter"
        return
    with pytest.raises(RuntimeUnavailable, match=r"crun refuses this host: .*hybrid") as info:
        rt.start(ContainerSpec())
    assert info.value.runtime == name
    assert "runc variant" in info.value.hint


def test_containerd_gvisor_needs_the_shim_or_runs() -> None:
    import shutil

    av = get_runtime("containerd:runsc").availability()
    if shutil.which("containerd-shim-runsc-v1") is None:
        assert not av.available
        assert "containerd-shim-runsc-v1" in av.reason
