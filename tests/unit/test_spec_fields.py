"""The spec fields group_add, devices, pid/ipc/uts, ulimits, sysctls, tmpfs, unmask,
gidmap, apparmor, label and entrypoint: validation, and each adapter's pure mapping."""

from __future__ import annotations

from typing import Any

import pytest
from podman.domain.containers_create import CreateMixin

from pytest_containersec.cli.cli import parser, spec_from_args
from pytest_containersec.errors import SpecError, UnsupportedSpec
from pytest_containersec.model import Declared, Mount
from pytest_containersec.observe.facts import declared_mismatches
from pytest_containersec.runtimes.docker.docker import host_config
from pytest_containersec.runtimes.nspawn import nspawn_spec
from pytest_containersec.runtimes.oci import oci, oci_fields
from pytest_containersec.runtimes.podman.podman_service import RootlessIds
from pytest_containersec.runtimes.podman.podman_spec import conf_default_ulimits, create_kwargs
from pytest_containersec.runtimes.systemd import systemd_run_declared as decl
from pytest_containersec.spec import ContainerSpec, Device, Tmpfs, Ulimit

from .factories import facts

FULL = ContainerSpec(
    group_add=["audio", 1234],
    devices=["/dev/fuse", "/dev/kmsg:/dev/k:r"],
    pid="host",
    ipc="host",
    ulimits={"nofile": "1024:2048", "nproc": 64},
    sysctls={"net.ipv4.ip_unprivileged_port_start": 80},
    tmpfs=["/tmp:size=16m,mode=1777"],
    unmask=True,
)


def test_normalized_and_hashable() -> None:
    s = FULL
    assert s.group_add == ("audio", "1234")
    assert s.devices == (
        Device("/dev/fuse", "/dev/fuse", "rwm"),
        Device("/dev/kmsg", "/dev/k", "r"),
    )
    assert s.ulimits == (Ulimit("nofile", 1024, 2048), Ulimit("nproc", 64, 64))
    assert s.sysctls == (("net.ipv4.ip_unprivileged_port_start", "80"),)
    assert s.tmpfs == (Tmpfs("/tmp", ("size=16m", "mode=1777")),)
    assert s.namespaces_host == ("pid", "ipc")
    assert hash(s) == hash(ContainerSpec(**{**s.__dict__}))
    assert s.to_dict()["ulimits"] == {"nofile": "1024:2048", "nproc": "64:64"}
    u = ContainerSpec(ulimits=["core=unlimited", "nofile=10:20"]).ulimits
    assert u == (Ulimit("core", -1, -1), Ulimit("nofile", 10, 20))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("group_add", ["bad name"]),
        ("devices", ["dev/fuse"]),
        ("devices", ["/dev/fuse:/dev/fuse:rwx"]),
        ("pid", "container:web"),
        ("uts", "shareable"),
        ("ulimits", {"nofiles": 10}),
        ("ulimits", {"nofile": "20:10"}),
        ("ulimits", ["nofile"]),
        ("sysctls", {"kernel core_pattern": "x"}),
        ("sysctls", {"net.ipv4.ip_forward": "1\n0"}),
        ("tmpfs", ["tmp"]),
        ("tmpfs", ["/tmp:size=lots"]),
        ("tmpfs", ["/tmp:uid=0"]),
        ("unmask", "yes"),
        ("gidmap", "0:100000:65536"),  # needs explicit userns maps
        ("apparmor", "bad profile"),
        ("label", ["type"]),
    ],
)
def test_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(SpecError) as info:
        ContainerSpec(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field


def test_gid_maps_apart_from_uid_maps() -> None:
    s = ContainerSpec(userns="0:100000:65536", gidmap="0:200000:1000,1000:300000:10")
    assert s.uid_maps == ((0, 100000, 65536),)
    assert s.gid_maps == ((0, 200000, 1000), (1000, 300000, 10))
    assert ContainerSpec(userns="0:100000:65536").gid_maps == s.uid_maps


# -- docker ------------------------------------------------------------------------------


def test_docker_mapping() -> None:
    kw = host_config(FULL.replace(apparmor="unconfined", label=["disable"]), "docker", "/p")
    assert kw["group_add"] == ["audio", "1234"]
    assert kw["devices"] == ["/dev/fuse:/dev/fuse:rwm", "/dev/kmsg:/dev/k:r"]
    assert (kw["pid_mode"], kw["ipc_mode"], "uts_mode" in kw) == ("host", "host", False)
    assert kw["ulimits"] == [
        {"Name": "nofile", "Soft": 1024, "Hard": 2048},
        {"Name": "nproc", "Soft": 64, "Hard": 64},
    ]
    assert kw["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "80"}
    assert kw["tmpfs"] == {"/tmp": "size=16m,mode=1777"}
    assert kw[oci_fields.HOST_CONFIG_EXTRA] == {"MaskedPaths": [], "ReadonlyPaths": []}
    assert kw["security_opt"] == ["apparmor=unconfined", "label=disable"]
    with pytest.raises(UnsupportedSpec) as info:
        host_config(ContainerSpec(userns="0:1:1", gidmap="0:2:1"), "docker", "/p")
    assert info.value.field in ("userns", "gidmap")


def test_entrypoint_replaces_the_images_and_its_cmd() -> None:
    assert oci.entrypoint_and_command(ContainerSpec(entrypoint=["/e"])) == (["/e"], [])
    assert oci.entrypoint_and_command(ContainerSpec(entrypoint=["/e"], command=["a"])) == (
        ["/e"],
        ["a"],
    )
    assert oci.entrypoint_and_command(ContainerSpec(command=["a"])) == (None, ["a"])


# -- podman ------------------------------------------------------------------------------


def payload(kw: dict[str, Any]) -> dict[str, Any]:
    kw = {k: v for k, v in kw.items() if k != oci_fields.MOUNT_OPTIONS}
    out: dict[str, Any] = CreateMixin._render_payload({"image": "x", **kw})
    return out


def test_podman_mapping_renders() -> None:
    kw = create_kwargs(FULL.replace(label=["type:spc_t"]), "podman", probe="/p")
    p = payload(kw)
    assert p["groups"] == ["audio", "1234"]
    assert p["devices"] == [{"path": "/dev/fuse:/dev/fuse:rwm"}, {"path": "/dev/kmsg:/dev/k:r"}]
    assert (p["pidns"], p["ipcns"]) == ({"nsmode": "host"}, {"nsmode": "host"})
    assert p["r_limits"] == [
        {"type": "nofile", "soft": 1024, "hard": 2048},
        {"type": "nproc", "soft": 64, "hard": 64},
    ]
    assert p["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "80"}
    assert p["unmask"] == ["ALL"]
    assert p["selinux_opts"] == ["type:spc_t"]
    assert {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": []} in p["mounts"]
    assert kw[oci_fields.MOUNT_OPTIONS] == {
        "/tmp": ["size=16m", "mode=1777", "nodev", "noexec", "nosuid"]
    }


def test_podman_keeps_engine_default_ulimits_the_spec_does_not_name(tmp_path: Any) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n')
    defaults = conf_default_ulimits([tmp_path / "missing.conf", conf])
    assert defaults == ("nofile=1024:1024", "nproc=1024:1024")
    kw = create_kwargs(
        ContainerSpec(ulimits={"nofile": 512}), "podman", probe="/p", default_ulimits=defaults
    )
    assert kw["ulimits"] == [
        {"Name": "nofile", "Soft": 512, "Hard": 512},
        {"Name": "nproc", "Soft": 1024, "Hard": 1024},
    ]
    assert "ulimits" not in create_kwargs(
        ContainerSpec(), "podman", probe="/p", default_ulimits=defaults
    )


def test_podman_gidmap_and_apparmor() -> None:
    ids = RootlessIds(uid=1001, gid=1001, subuid=(100000, 65536), subgid=(200000, 65536))
    spec = ContainerSpec(userns="0:1001:1,1:100000:1000", gidmap="0:1001:1,1:200000:10")
    kw = create_kwargs(spec, "podman-rootless", ids, probe="/p")
    assert kw["idmappings"]["GIDMap"] == [
        {"container_id": 0, "host_id": 0, "size": 1},
        {"container_id": 1, "host_id": 1, "size": 10},
    ]
    with pytest.raises(UnsupportedSpec) as info:
        create_kwargs(ContainerSpec(apparmor="unconfined"), "podman", probe="/p")
    assert (info.value.field, info.value.runtime) == ("apparmor", "podman")


# -- nspawn ------------------------------------------------------------------------------


def test_nspawn_mapping() -> None:
    spec = ContainerSpec(
        devices=["/dev/fuse"], ulimits={"nofile": "10:20", "core": "unlimited"},
        tmpfs=["/tmp:size=8m,exec"], entrypoint=["/bin/app"], command=["-v"],
    )  # fmt: skip
    args, _ = nspawn_spec.spec_args(spec, systemd=False)
    assert "--bind=/dev/fuse:/dev/fuse" in args
    assert "--rlimit=RLIMIT_NOFILE=10:20" in args
    assert "--rlimit=RLIMIT_CORE=infinity:infinity" in args
    assert "--tmpfs=/tmp:size=8m,nodev,nosuid" in args


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ContainerSpec(group_add=["audio"]), "group_add"),
        (ContainerSpec(pid="host"), "pid"),
        (ContainerSpec(uts="host"), "uts"),
        (ContainerSpec(sysctls={"net.ipv4.ip_forward": "1"}), "sysctls"),
        (ContainerSpec(unmask=True), "unmask"),
        (ContainerSpec(userns="0:100000:65536", gidmap="0:200000:65536"), "gidmap"),
        (ContainerSpec(apparmor="docker-default"), "apparmor"),
        (ContainerSpec(label=["type:spc_t"]), "label"),
        (ContainerSpec(devices=["/dev/fuse:/dev/fuse:r"]), "devices"),
    ],
)
def test_nspawn_unsupported_names_field_and_runtime(spec: ContainerSpec, field: str) -> None:
    with pytest.raises(UnsupportedSpec) as info:
        nspawn_spec.spec_args(spec, systemd=False)
    assert (info.value.field, info.value.runtime) == (field, "nspawn")


# -- systemd-run -------------------------------------------------------------------------


def test_systemd_run_mapping() -> None:
    spec = ContainerSpec(
        group_add=["audio"], devices=["/dev/fuse"], ulimits={"nofile": "10:20"},
        tmpfs=["/tmp:size=8m"], apparmor="my-profile", pid="host",
    )  # fmt: skip
    props = dict(decl.unit_properties(spec, host_systemd=True))
    assert props["SupplementaryGroups"] == "audio"
    assert props["DeviceAllow"] == "/dev/fuse rwm"
    assert props["LimitNOFILE"] == "10:20"
    assert props["TemporaryFileSystem"] == "/tmp:size=8m,nodev,noexec,nosuid"
    assert props["AppArmorProfile"] == "my-profile"
    with pytest.raises(UnsupportedSpec) as info:
        decl.unit_properties(spec, host_systemd=False)  # pid=host: the booted systemd's
    assert (info.value.field, info.value.runtime) == ("pid", "systemd-run")
    for bad, field in ((ContainerSpec(sysctls={"net.ipv4.ip_forward": 1}), "sysctls"),
                       (ContainerSpec(unmask=True), "unmask")):  # fmt: skip
        with pytest.raises(UnsupportedSpec) as info:
            decl.unit_properties(bad, host_systemd=False)
        assert info.value.field == field


# -- CLI and declared-vs-observed --------------------------------------------------------


def test_cli_docker_spelled_flags() -> None:
    a = parser().parse_args(
        ["facts", "--group-add", "audio", "--device", "/dev/fuse", "--pid", "host",
         "--ulimit", "nofile=10:20", "--sysctl", "net.ipv4.ip_forward=1", "--tmpfs", "/tmp",
         "--security-opt", "systempaths=unconfined", "--security-opt", "apparmor=unconfined",
         "--security-opt", "label=type:spc_t", "--security-opt", "no-new-privileges",
         "--entrypoint", "/bin/sh", "img", "-c", "true"]
    )  # fmt: skip
    s = spec_from_args(a)
    assert (s.group_add, s.pid, s.unmask, s.apparmor, s.label) == (
        ("audio",),
        "host",
        True,
        "unconfined",
        ("type:spc_t",),
    )
    assert (s.no_new_privileges, s.entrypoint, s.command) == (True, ("/bin/sh",), ("-c", "true"))
    with pytest.raises(SpecError):
        spec_from_args(parser().parse_args(["facts", "--security-opt", "seccomp"]))


def test_declared_namespaces_groups_and_tmpfs_are_compared() -> None:
    f = facts()
    f = f.__class__(**{**f.__dict__, "namespaces": {"pid": "private", "ipc": "private"}})
    declared: Declared = {"pid_mode": "host", "group_add": ["1234"], "tmpfs": ["/tmp"]}
    found = {m.field for m in declared_mismatches(f, declared)}
    assert {"namespaces.pid", "user.groups", "mounts./tmp"} <= found
    ok = f.__class__(**{**f.__dict__,
                        "namespaces": {**f.namespaces, "pid": "host"},
                        "user": f.user.__class__(**{**f.user.__dict__, "groups": (1234,)}),
                        "mounts": (*f.mounts, Mount("/tmp", "tmpfs", "tmpfs", "/", False))})  # fmt: skip
    assert declared_mismatches(ok, declared) == []


def test_declared_from_docker_inspect_new_keys() -> None:
    from pytest_containersec.runtimes.oci.oci import declared_from_inspect

    attrs = {
        "Config": {},
        "Mounts": [{"Type": "tmpfs", "Destination": "/cache"}],
        "HostConfig": {
            "PidMode": "host", "IpcMode": "shareable", "UTSMode": "", "GroupAdd": ["1234"],
            "Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse",
                         "CgroupPermissions": "rwm"}],
            "Tmpfs": {"/tmp": "size=8m"}, "Ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 2}],
            "Sysctls": {"net.ipv4.ip_forward": "1"}, "MaskedPaths": [], "ReadonlyPaths": [],
        },
    }  # fmt: skip
    d = declared_from_inspect(attrs, "docker")
    assert (d["pid_mode"], d["ipc_mode"], d["uts_mode"]) == ("host", "shareable", None)
    assert d["group_add"] == ["1234"]
    assert d["devices"] == ["/dev/fuse:/dev/fuse:rwm"]
    assert d["tmpfs"] == ["/cache", "/tmp"]
    assert (d["ulimits"], d["sysctls"], d["unmask"]) == (
        {"nofile": "1:2"}, {"net.ipv4.ip_forward": "1"}, True
    )  # fmt: skip


def test_podman_generated_passwd_is_engine_managed() -> None:
    from pytest_containersec.checks.checks import no_sensitive_mounts

    f = facts()
    hp = "/var/lib/containers/storage/overlay-containers/abc/userdata/passwd"
    ok = f.__class__(
        **{**f.__dict__, "mounts": (Mount("/etc/passwd", "ext4", "/dev/sda", "/x", True, (), hp),)}
    )
    assert no_sensitive_mounts(ok) == []
    bad = f.__class__(
        **{
            **f.__dict__,
            "mounts": (
                Mount("/etc/passwd", "ext4", "/dev/sda", "/etc/passwd", True, (), "/etc/passwd"),
            ),
        }
    )
    assert no_sensitive_mounts(bad) != []
