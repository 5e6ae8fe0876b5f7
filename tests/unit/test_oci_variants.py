"""ENGINE:OCI runtime variants: names, the host refusals that make one unavailable."""

from __future__ import annotations

import pytest

from pytest_containersec.errors import RuntimeUnavailable
from pytest_containersec.runtimes import (
    KNOWN_NAMES,
    MANIFEST_RUNTIMES,
    RUNTIME_NAMES,
    VARIANT_NAMES,
    _create,
)
from pytest_containersec.runtimes import oci_variants as v
from pytest_containersec.runtimes.docker import host_config
from pytest_containersec.session import Session
from pytest_containersec.spec import ContainerSpec


def test_names_and_adapters() -> None:
    assert {"podman:crun", "podman:runc", "docker:runc", "docker:runsc"} <= set(VARIANT_NAMES)
    assert KNOWN_NAMES == RUNTIME_NAMES + MANIFEST_RUNTIMES + VARIANT_NAMES
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
    assert v.host_refusal("podman", None, "crun: cgroups in hybrid mode not supported") is None


def test_gvisor_is_unavailable_until_facts_say_which_side() -> None:
    with pytest.raises(RuntimeUnavailable, match="Sentry") as info:
        v.require_binary("docker:runsc", "runsc")
    assert info.value.runtime == "docker:runsc"
    av = _create("podman:runsc").availability()
    assert not av.available
    assert "Sentry" in av.reason or "not installed" in av.reason
