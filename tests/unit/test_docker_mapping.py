"""ContainerSpec -> docker SDK kwargs, and docker inspect -> declared (pure; no daemon)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec.errors import UnsupportedSpec
from pytest_containersec.runtimes.base import PROBE_BUSYBOX, PROBE_DIR
from pytest_containersec.runtimes.docker.docker import declared_from_inspect, host_config
from pytest_containersec.spec import ContainerSpec


def test_defaults_idle_probe_and_no_network() -> None:
    kw = host_config(ContainerSpec(), "docker", "/host/probe")
    assert kw["entrypoint"] == [PROBE_BUSYBOX]
    assert kw["command"] == ["sleep", "2147483647"]
    assert kw["volumes"] == [f"/host/probe:{PROBE_DIR}:ro"]
    assert kw["network_mode"] == "none"
    assert kw["privileged"] is False
    assert "security_opt" not in kw


def test_every_field(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    spec = ContainerSpec(
        command=["httpd", "-f"], user="1000:1000", cap_add=["NET_ADMIN"], cap_drop=["ALL"],
        seccomp=str(profile), no_new_privileges=True, read_only=True, memory="64m",
        cpus=0.5, pids_limit=50, userns="host", volumes=["/srv:/data:ro"], network="host",
        env={"A": "1"},
    )  # fmt: skip
    kw = host_config(spec, "docker", "/host/probe")
    assert "entrypoint" not in kw  # the image's entrypoint stays, as with docker run
    assert kw["command"] == ["httpd", "-f"]
    assert kw["user"] == "1000:1000"
    assert kw["cap_add"] == ["CAP_NET_ADMIN"]
    assert kw["cap_drop"] == ["ALL"]
    assert kw["security_opt"] == [
        'seccomp={"defaultAction": "SCMP_ACT_ALLOW"}',
        "no-new-privileges:true",
    ]
    assert kw["read_only"] is True
    assert kw["mem_limit"] == 64 * 1024**2
    assert kw["nano_cpus"] == 500_000_000
    assert kw["pids_limit"] == 50
    assert kw["userns_mode"] == "host"
    assert kw["volumes"][1:] == ["/srv:/data:ro"]
    assert kw["network_mode"] == "host"
    assert kw["environment"] == {"A": "1"}


def test_unconfined_and_privileged() -> None:
    kw = host_config(ContainerSpec(seccomp="unconfined", privileged=True), "docker", "/host/probe")
    assert kw["security_opt"] == ["seccomp=unconfined"]
    assert kw["privileged"] is True


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ContainerSpec(userns="auto"), "userns"),
        (ContainerSpec(userns="keep-id"), "userns"),
        (ContainerSpec(userns="0:100000:65536"), "userns"),
        (ContainerSpec(seccomp="/nonexistent/profile.json"), "seccomp"),
        (ContainerSpec(properties={"ProtectHome": "yes"}), "properties"),
    ],
)
def test_unsupported_fields_name_field_and_runtime(spec: ContainerSpec, field: str) -> None:
    with pytest.raises(UnsupportedSpec) as info:
        host_config(spec, "docker-userns", "/host/probe")
    assert (info.value.field, info.value.runtime) == (field, "docker-userns")


def inspect(**host: Any) -> dict[str, Any]:
    return {"HostConfig": host, "Config": {"User": "1000"}}


def test_declared_from_inspect() -> None:
    d = declared_from_inspect(
        inspect(
            CapDrop=["ALL"], SecurityOpt=["no-new-privileges:true"], ReadonlyRootfs=True,
            Memory=67108864, NanoCpus=500_000_000, PidsLimit=50, NetworkMode="none",
            Binds=[f"/var/lib/containersec/probe/x:{PROBE_DIR}:ro", "/srv:/data:ro"],
        ),
        ("name=seccomp,profile=default", "name=userns"),
    )  # fmt: skip
    assert d["user"] == "1000"
    assert d["cap_drop"] == ["ALL"]
    assert d["no_new_privileges"] is True
    assert (d["read_only"], d["memory"], d["cpus"], d["pids_limit"]) == (True, 67108864, 0.5, 50)
    assert d["userns_mode"] == "remap"
    assert d["binds"] == ["/srv:/data:ro"]  # the probe's mount is ours, not the user's
    assert d["seccomp"] == "default"


@pytest.mark.parametrize(
    ("opts", "nnp", "seccomp"),
    [
        (["no-new-privileges"], True, "default"),
        (["no-new-privileges=true"], True, "default"),
        (["no-new-privileges:false"], False, "default"),
        (["seccomp=unconfined"], False, "unconfined"),
        (['seccomp={"defaultAction":"SCMP_ACT_ERRNO"}'], False, "custom"),
    ],
)
def test_declared_security_options(opts: list[str], nnp: bool, seccomp: str) -> None:
    d = declared_from_inspect(inspect(SecurityOpt=opts), ())
    assert d["no_new_privileges"] is nnp
    assert d["seccomp"] == seccomp


def test_privileged_declares_no_seccomp_and_no_pids_limit_is_none() -> None:
    d = declared_from_inspect(inspect(Privileged=True, PidsLimit=-1), ())
    assert d["seccomp"] == "unconfined"
    assert d["pids_limit"] is None
