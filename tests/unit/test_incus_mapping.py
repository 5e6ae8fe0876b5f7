"""The incus runtime's pure parts: spec -> instance config, and the declared view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_containersec.errors import UnsupportedSpec
from pytest_containersec.linux import caps
from pytest_containersec.runtimes import OPTIONAL_NAMES, RUNTIME_NAMES, default_names, get_runtime
from pytest_containersec.runtimes.incus import incus_spec as m
from pytest_containersec.spec import ContainerSpec

DATA = Path(__file__).parent.parent / "data" / "incus"


def config(spec: ContainerSpec, ids: tuple[int, int] | None = None) -> dict[str, str]:
    return m.instance_config(spec, owner="1.2", session="s", ids=ids, env=dict(spec.env))


def raw(cfg: dict[str, str]) -> list[str]:
    return cfg["raw.lxc"].splitlines()


def test_incus_is_named_only_not_a_default_engine() -> None:
    assert OPTIONAL_NAMES == ("incus",)
    assert "incus" not in RUNTIME_NAMES
    assert "incus" not in default_names()
    assert get_runtime("incus").name == "incus"


def test_default_spec() -> None:
    cfg = config(ContainerSpec())
    assert cfg[m.OWNER_KEY] == "1.2"
    assert cfg[m.SESSION_KEY] == "s"
    assert not any(k.startswith(("limits.", "security.")) for k in cfg)
    keep = " ".join(sorted(c.removeprefix("CAP_").lower() for c in m.default_caps()))
    assert raw(cfg) == [
        "lxc.cap.drop =", f"lxc.cap.keep = {keep}",
        "lxc.init.cmd = /.containersec/busybox sh /.containersec/run/init",
    ]  # fmt: skip


def test_limits_user_and_flags() -> None:
    spec = ContainerSpec(memory="64m", pids_limit=50, cpus=0.5, read_only=True,
                         no_new_privileges=True, user="1000", env={"A": "b c"})  # fmt: skip
    cfg = config(spec, ids=(1000, 1000))
    assert cfg["limits.memory"] == str(64 * 1024 * 1024)
    assert cfg["limits.processes"] == "50"
    assert cfg["limits.cpu.allowance"] == "50ms/100ms"
    assert cfg["environment.A"] == "b c"
    lines = raw(cfg)
    for want in ("lxc.no_new_privs = 1", "lxc.rootfs.options = ro", "lxc.init.uid = 1000",
                 "lxc.init.gid = 1000"):  # fmt: skip
        assert want in lines
    assert lines[-1].startswith("lxc.init.cmd = ")


def test_caps_are_dockers_arithmetic_over_incus_defaults() -> None:
    cfg = config(ContainerSpec(cap_drop=["ALL"], cap_add=["NET_BIND_SERVICE"]))
    assert "lxc.cap.keep = net_bind_service" in raw(cfg)
    assert "lxc.cap.keep = none" in raw(config(ContainerSpec(cap_drop=["ALL"])))
    cfg = config(ContainerSpec(cap_add=["SYS_TIME"]))
    keep = next(x for x in raw(cfg) if x.startswith("lxc.cap.keep"))
    assert "sys_time" in keep.split()
    assert "sys_module" not in keep.split()


def test_privileged_seccomp_and_userns() -> None:
    cfg = config(ContainerSpec(privileged=True))
    assert cfg["security.syscalls.deny_default"] == "false"
    assert cfg["security.syscalls.deny_compat"] == "false"
    assert "security.privileged" not in cfg  # Docker's privileged: Incus's userns stays
    lines = raw(cfg)
    assert not any(x.startswith("lxc.cap.keep") for x in lines)  # everything
    assert "lxc.apparmor.profile = unconfined" in lines
    assert "lxc.mount.auto = proc:rw sys:rw cgroup:rw" in lines
    assert config(ContainerSpec(seccomp="unconfined"))["security.syscalls.deny_default"] == "false"
    assert config(ContainerSpec(userns="host"))["security.privileged"] == "true"
    cfg = config(ContainerSpec(userns="0:300000:65536"))
    assert (cfg["security.idmap.isolated"], cfg["security.idmap.base"],
            cfg["security.idmap.size"]) == ("true", "300000", "65536")  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ContainerSpec(network="host"), "network"),
        (ContainerSpec(userns="keep-id"), "userns"),
        (ContainerSpec(userns="0:300000:1000,1000:400000:10"), "userns"),
        (ContainerSpec(cpus=0.0005), "cpus"),
        (ContainerSpec(properties={"MemoryMax": "1G"}), "properties"),
        (ContainerSpec(env={"A-B": "x"}), "env"),
    ],
)
def test_unmappable_fields_are_refused(spec: ContainerSpec, field: str) -> None:
    with pytest.raises(UnsupportedSpec) as info:
        config(spec)
    assert info.value.field == field


def test_a_seccomp_profile_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text("{}")
    with pytest.raises(UnsupportedSpec) as info:
        config(ContainerSpec(seccomp=str(p)))
    assert info.value.field == "seccomp"


def test_devices_and_create_request(tmp_path: Path) -> None:
    spec = ContainerSpec(volumes=[f"{tmp_path}:/data:ro", f"{tmp_path}:/rw"])
    devs = m.devices(spec, probe_dir="/p", run_dir="/r", is_dir={str(tmp_path): True})
    assert devs["root"] == {"type": "disk", "path": "/", "pool": "default"}
    assert devs[m.PROBE_DEVICE] == {"type": "disk", "source": "/p", "path": "/.containersec",
                                    "readonly": "true"}  # fmt: skip
    assert devs["containersec-vol0"]["readonly"] == "true"
    assert "readonly" not in devs["containersec-vol1"]
    assert not any(d["type"] == "nic" for d in devs.values())
    body = m.create_request("n", "a", {"k": "v"}, devs)
    assert body["profiles"] == []  # nothing from a profile: no nic whatever it says
    assert body["source"] == {"type": "image", "alias": "a"}
    with pytest.raises(UnsupportedSpec, match="volumes"):
        m.devices(spec, probe_dir="/p", run_dir="/r", is_dir={})


def test_image_alias_matches_the_setup_step() -> None:
    # setup.d/90-incus.sh: printf '%s' "$stamp" | sha256sum | cut -c1-12
    assert (
        m.image_alias("containersec_probe", "abc-v1")
        == "containersec/containersec_probe/"
        + (__import__("hashlib").sha256(b"abc-v1").hexdigest()[:12])
    )


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def test_declared_from_a_recorded_instance() -> None:
    """``incus query /1.0/instances/NAME`` of the VM's many-fields container."""
    inst = recorded("instance-many.json")
    spec = ContainerSpec(user="1000", memory="64m", pids_limit=50, cpus=0.5, read_only=True,
                         no_new_privileges=True, cap_drop=["NET_RAW", "CHOWN"],
                         cap_add=["SYS_TIME"])  # fmt: skip
    d = m.declared_from_instance(inst, spec)
    assert d["engine"] == "incus"
    assert d["memory"] == 64 * 1024 * 1024
    assert d["pids_limit"] == 50
    assert d["cpus"] == 0.5
    assert d["read_only"] is True
    assert d["no_new_privileges"] is True
    assert d["user"] == "1000"
    assert d["seccomp"] == "default"
    assert d["userns_mode"] == "auto"
    assert d["network_mode"] == "none"
    want = caps.tweak(m.default_caps(), spec.cap_add, spec.cap_drop, False)
    assert set(d["capabilities"]) == want
    assert not any(c.startswith("volatile.") for c in d["config"])


def test_declared_defaults_and_variants() -> None:
    base: dict[str, Any] = {"expanded_config": {}, "expanded_devices": {}}
    d = m.declared_from_instance(base, ContainerSpec())
    assert d["capabilities"] == sorted(m.default_caps())
    assert (d["seccomp"], d["userns_mode"], d["network_mode"]) == ("default", "auto", "none")
    assert (d["memory"], d["cpus"], d["pids_limit"]) == (None, None, None)
    cfg = {"security.privileged": "true", "security.syscalls.deny_default": "false",
           "security.syscalls.deny_compat": "false",
           "raw.lxc": "lxc.cap.drop =\nlxc.apparmor.profile = unconfined\n"}  # fmt: skip
    devs = {"eth0": {"type": "nic", "nictype": "bridged"},
            "v": {"type": "disk", "source": "/s", "path": "/d", "readonly": "true"}}  # fmt: skip
    d = m.declared_from_instance(
        {"expanded_config": cfg, "expanded_devices": devs}, ContainerSpec()
    )
    assert d["capabilities"] == sorted(caps.ALL_CAPS)
    assert (d["seccomp"], d["userns_mode"]) == ("unconfined", "host")
    assert d["apparmor_profile"] == "unconfined"
    assert d["network_mode"] == "eth0"  # a nic Incus would give it: never reported as none
    assert d["binds"] == ["/s:/d:ro"]
    cfg = {"security.idmap.isolated": "true", "security.idmap.base": "300000",
           "security.idmap.size": "65536", "raw.seccomp": "2\ndenylist\n"}  # fmt: skip
    d = m.declared_from_instance({"expanded_config": cfg}, ContainerSpec())
    assert (d["userns_mode"], d["seccomp"]) == ("0:300000:65536", "custom")


def test_an_apparmor_stack_across_a_namespace_is_seen_from_inside_as_its_own_part() -> None:
    from pytest_containersec.observe.facts import apparmor_ns_view

    host = "incus-c_</var/lib/incus>//&:incus-c_<var-lib-incus>:unconfined (enforce)"
    assert apparmor_ns_view(host, "unconfined") == "unconfined"  # measured on the VM
    assert apparmor_ns_view(host, "docker-default (enforce)") == host  # a real difference
    assert apparmor_ns_view(host, None) == host
    assert apparmor_ns_view("lxc-container-default-cgns (enforce)", "unconfined") == (
        "lxc-container-default-cgns (enforce)"
    )
    inner = "a//&:ns:inner (enforce)"
    assert apparmor_ns_view(inner, "inner (enforce)") == "inner (enforce)"


@pytest.mark.parametrize("image", ["containersec/nginx", "containersec/probe", "a'b: c\"d #e"])
def test_metadata_yaml_parses_for_any_image_name(image: str) -> None:
    """The description was `'containersec/nginx' exported by ...`: a quoted scalar with text
    after it, which Incus's YAML parser refused ("did not find expected key")."""
    meta = yaml.safe_load(m.metadata_yaml("x86_64", 1700000000, image))
    assert meta["architecture"] == "x86_64"
    assert meta["creation_date"] == 1700000000
    assert meta["properties"]["description"] == f"{image} exported by pytest-containersec"
    assert meta["properties"]["os"] == "containersec"
