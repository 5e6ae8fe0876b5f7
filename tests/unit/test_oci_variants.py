"""ENGINE:OCI runtime variants: names, the host refusals that make one unavailable."""

from __future__ import annotations

import pytest

from pytest_containersec.errors import RuntimeUnavailable
from pytest_containersec.linux.session import Session
from pytest_containersec.runtimes import (
    KNOWN_NAMES,
    MANIFEST_RUNTIMES,
    OPTIONAL_NAMES,
    RUNTIME_NAMES,
    VARIANT_NAMES,
    _create,
)
from pytest_containersec.runtimes.docker.docker import host_config
from pytest_containersec.runtimes.oci import oci_variants as v
from pytest_containersec.spec import ContainerSpec


def test_names_and_adapters() -> None:
    assert {"podman:crun", "podman:runc", "docker:runc", "docker:runsc"} <= set(VARIANT_NAMES)
    assert KNOWN_NAMES == RUNTIME_NAMES + OPTIONAL_NAMES + MANIFEST_RUNTIMES + VARIANT_NAMES
    assert v.split("podman-rootless:crun") == ("podman-rootless", "crun")
    assert v.split("lxc") == ("lxc", None)
    for name in ("docker:runsc", "podman:crun", "containerd:crun"):
        rt = _create(name)
        assert rt.name == name
    assert host_config(ContainerSpec(), "docker:runsc", "/p", "runsc")["runtime"] == "runsc"
    assert "runtime" not in host_config(ContainerSpec(), "docker", "/p")
    # engines allow no ':' in container names
    assert ":" not in Session().next_name("podman:crun")


def test_crun_refusing_a_hybrid_host_is_unavailable_not_a_crash() -> None:
    for text in (
        "OCI runtime error: crun: cgroups in hybrid mode not supported, drop all controllers "
        "from cgroupv2",
        "ctr: failed to create shim task: OCI runtime create failed: cgroups in hybrid mode "
        "not supported, drop all controllers from cgroupv2: unknown",
    ):
        err = v.host_refusal("podman:crun", "crun", f"podman:crun: failed:\n{text}\n")
        assert isinstance(err, RuntimeUnavailable)
        assert "crun refuses this host" in err.reason
        assert "hybrid" in err.reason
        assert "runc variant" in err.hint
    assert v.host_refusal("podman:crun", "crun", "no such image") is None
    rootless = ("runsc: creating container: cannot set up cgroup for root: configuring cgroup: "
                "mkdir /sys/fs/cgroup/blkio/3af7: permission denied: OCI permission denied")  # fmt: skip
    # the same on cgroup v2 under systemd (trixie VM, Podman 5.4, runsc 2025)
    systemd = ("runsc: creating container: systemd error: Permission denied: OCI permission "
               "denied")  # fmt: skip
    for message in (rootless, systemd):
        err = v.host_refusal("podman-rootless:runsc", "runsc", message)
        assert err is not None
        assert "runsc refuses this host" in err.reason
        assert "rootful podman:runsc" in err.hint
    assert (
        v.host_refusal("podman:runsc", "runsc", "runsc: creating container: no such file") is None
    )
    assert v.host_refusal("podman", None, "crun: cgroups in hybrid mode not supported") is None


def test_containerd_gvisor_needs_its_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v, "_which", lambda b: None if b == v.GVISOR_SHIM else f"/usr/bin/{b}")
    with pytest.raises(RuntimeUnavailable, match=v.GVISOR_SHIM) as info:
        v.require_binary("containerd:runsc", "runsc")
    assert info.value.runtime == "containerd:runsc"
    v.require_binary("docker:runsc", "runsc")  # docker and podman need no shim
    v.require_binary("podman:runsc", "runsc")
