"""The portable runtime without starting anything: portable_profile validation, the spec ->
drop-in mapping over each profile's recorded drop-in (systemd 252's, tests/data/portable),
the unit file's quoting, and every other runtime refusing a profile."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_containersec.cli.cli import parser, spec_from_args
from pytest_containersec.errors import SpecError, UnsupportedSpec
from pytest_containersec.linux import caps
from pytest_containersec.runtimes import KNOWN_NAMES, RUNTIME_NAMES
from pytest_containersec.runtimes.containerd import containerd_spec
from pytest_containersec.runtimes.docker.docker import host_config
from pytest_containersec.runtimes.lxc import lxc_spec
from pytest_containersec.runtimes.nspawn import nspawn_spec
from pytest_containersec.runtimes.podman import podman_spec
from pytest_containersec.runtimes.systemd import portable_spec as m
from pytest_containersec.runtimes.systemd import systemd_run_declared as decl
from pytest_containersec.spec import CORE_FIELDS, PORTABLE_PROFILES, SPEC_FIELDS, ContainerSpec

DATA = Path(__file__).parent.parent / "data" / "portable"


def profile(name: str) -> frozenset[str]:
    return m.profile_capabilities((DATA / f"{name}-252.conf").read_text())


def dropin(spec: ContainerSpec, host: bool = False, profile_name: str = "default") -> list[str]:
    return [f"{k}={v}" for k, v in m.dropin(spec, profile(profile_name), host)]


# -- the field -------------------------------------------------------------------------


def test_registered_and_a_spec_field() -> None:
    assert "portable" in RUNTIME_NAMES
    assert "portable" in KNOWN_NAMES
    assert "portable_profile" in SPEC_FIELDS
    assert ContainerSpec().portable_profile == "default"
    assert PORTABLE_PROFILES == ("default", "strict", "nonetwork", "trusted")


@pytest.mark.parametrize("value", ["", "Strict", "custom", "default ", None, 1])
def test_profile_is_validated(value: object) -> None:
    with pytest.raises(SpecError) as info:
        ContainerSpec(portable_profile=value)  # type: ignore[arg-type]
    assert info.value.field == "portable_profile"
    assert "default, strict, nonetwork, trusted" in str(info.value)


def test_cli_flag() -> None:
    a = parser().parse_args(["facts", "--portable-profile", "strict"])
    assert spec_from_args(a).portable_profile == "strict"
    with pytest.raises(SystemExit):
        parser().parse_args(["facts", "--portable-profile", "bogus"])


def test_every_other_runtime_refuses_a_profile() -> None:
    spec = ContainerSpec(portable_profile="strict")
    calls: dict[str, Callable[[], object]] = {
        "docker": lambda: host_config(spec, "docker", "/p"),
        "podman": lambda: podman_spec.create_kwargs(spec, "podman", probe="/p"),
        "nspawn": lambda: nspawn_spec.spec_args(spec, False),
        "systemd-run": lambda: decl.unit_properties(spec, False),
    }
    for runtime, call in calls.items():
        with pytest.raises(UnsupportedSpec) as info:
            call()
        assert (info.value.field, info.value.runtime) == ("portable_profile", runtime)
    for mod in (containerd_spec, lxc_spec):
        src = Path(mod.__file__ or "").read_text()
        assert "refuse_unmapped(spec, NAME, CORE_FIELDS)" in src  # portable_profile not in it
    assert "portable_profile" not in CORE_FIELDS


# -- the profiles' bounding sets -----------------------------------------------------------


def test_profile_bounding_sets_from_the_recorded_drop_ins() -> None:
    assert profile("strict") == frozenset()  # CapabilityBoundingSet= (empty)
    assert profile("trusted") == caps.ALL_CAPS  # no line: systemd's default, every one
    d = profile("default")
    assert len(d) == 19
    assert "CAP_SYS_ADMIN" in d
    assert "CAP_NET_RAW" not in d
    assert profile("nonetwork") == d - {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE",
                                        "CAP_NET_BROADCAST"}  # fmt: skip


def test_bounding_set_rules() -> None:
    pc = m.profile_capabilities
    assert pc("[Service]\nCapabilityBoundingSet=CAP_CHOWN\nCapabilityBoundingSet=CAP_KILL\n") == {
        "CAP_CHOWN", "CAP_KILL"}  # fmt: skip
    assert pc("CapabilityBoundingSet=~CAP_CHOWN\n") == caps.ALL_CAPS - {"CAP_CHOWN"}
    assert pc("CapabilityBoundingSet=CAP_CHOWN CAP_KILL\nCapabilityBoundingSet=~CAP_KILL\n") == {
        "CAP_CHOWN"}  # fmt: skip
    assert pc("CapabilityBoundingSet=CAP_CHOWN \\\n\tCAP_KILL\n# CapabilityBoundingSet=\n") == {
        "CAP_CHOWN", "CAP_KILL"}  # fmt: skip
    assert pc("CapabilityBoundingSet=CAP_CHOWN\nCapabilityBoundingSet=\n") == frozenset()
    assert pc("CapabilityBoundingSet=\nCapabilityBoundingSet=CAP_KILL\n") == {"CAP_KILL"}


# -- the drop-in ------------------------------------------------------------------------------


def test_default_spec_only_takes_the_network_away() -> None:
    assert dropin(ContainerSpec()) == ["PrivateNetwork=yes", "IPAddressDeny=any"]
    assert dropin(ContainerSpec(network="host")) == ["PrivateNetwork=no", "IPAddressDeny="]


def test_capabilities_are_dockers_arithmetic_over_the_profile() -> None:
    out = dropin(ContainerSpec(cap_drop=["SYS_ADMIN", "NET_ADMIN"], cap_add=["NET_RAW"]))
    keep = (profile("default") - {"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}) | {"CAP_NET_RAW"}
    i = out.index("CapabilityBoundingSet=")  # reset first: a list would be OR'ed
    assert out[i + 1] == "CapabilityBoundingSet=" + " ".join(sorted(keep))
    assert "AmbientCapabilities=CAP_NET_RAW" in out  # the dynamic user is not root
    assert m.profile_capabilities("\n".join(out)) == keep  # what systemd makes of it
    strict = dropin(ContainerSpec(cap_add=["NET_BIND_SERVICE"]), profile_name="strict")
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in strict
    drop_all = dropin(ContainerSpec(cap_drop=["ALL"]))
    assert [x for x in drop_all if x.startswith("Cap")] == ["CapabilityBoundingSet="]
    root = dropin(ContainerSpec(cap_add=["NET_RAW"], portable_profile="trusted"),
                  profile_name="trusted")  # fmt: skip
    assert not [x for x in root if x.startswith("Ambient")]  # root keeps its bounding set


def test_fields_to_settings() -> None:
    spec = ContainerSpec(
        user="1000:1000", no_new_privileges=True, read_only=True, memory="64m",
        pids_limit=32, cpus=0.5, userns="auto", env={"A": 'x y"$z%'}, group_add=[5],
        ulimits={"nofile": "10:20"}, tmpfs=["/scratch:size=1m"], apparmor="my-profile",
    )  # fmt: skip
    assert dropin(spec) == [
        "User=1000", "Group=1000", "NoNewPrivileges=yes", "ProtectSystem=strict",
        f"MemoryMax={64 * 1024**2}", "TasksMax=32", "CPUQuota=50%", "PrivateUsers=yes",
        "PrivateNetwork=yes", "IPAddressDeny=any", 'Environment="A=x y\\"$z%%"',
        "SupplementaryGroups=5", "LimitNOFILE=10:20", "TemporaryFileSystem=/scratch:size=1m,nodev,noexec,nosuid",
        "AppArmorProfile=my-profile",
    ]  # fmt: skip
    assert "PrivateUsers=no" in dropin(ContainerSpec(userns="host"))


def test_properties_replace_a_mapped_setting_and_protected_ones_are_refused() -> None:
    out = dropin(ContainerSpec(pids_limit=8, properties={"TasksMax": "99", "ProtectHome": True}))
    assert "TasksMax=8" not in out
    assert out[-2:] == ["ProtectHome=yes", "TasksMax=99"]
    for key in ("RootDirectory", "ExecStart", "RootImage", "Type"):
        with pytest.raises(UnsupportedSpec, match=key):
            dropin(ContainerSpec(properties={key: "/x"}))


def test_what_only_a_systemd_host_can_give() -> None:
    spec = ContainerSpec(volumes=["/srv:/data:ro", "/tmp:/t"], pid="host", unmask=True)
    out = dropin(spec, host=True)
    assert out[2:] == ["BindReadOnlyPaths=/srv:/data", "BindPaths=/tmp:/t",
                       "ProtectKernelTunables=no", "ProtectControlGroups=no"]  # fmt: skip
    cases: tuple[tuple[str, object], ...] = (
        ("volumes", ["/srv:/data"]), ("pid", "host"), ("unmask", True))  # fmt: skip
    for field, value in cases:
        with pytest.raises(UnsupportedSpec) as info:
            dropin(ContainerSpec(**{field: value}), host=False)  # type: ignore[arg-type]
        assert info.value.field == field
        assert "booted in nspawn" in str(info.value)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"privileged": True}, "privileged"),
        ({"seccomp": "unconfined"}, "seccomp"),
        ({"seccomp": "/etc/profile.json"}, "seccomp"),
        ({"userns": "0:100000:65536"}, "userns"),
        ({"userns": "keep-id"}, "userns"),
        ({"devices": ["/dev/fuse"]}, "devices"),
        ({"sysctls": {"net.ipv4.ip_forward": 1}}, "sysctls"),
        ({"label": ["disable"]}, "label"),
        ({"env": {"1A": "x"}}, "env"),
    ],
)
def test_refused_fields_name_themselves(fields: dict[str, object], field: str) -> None:
    with pytest.raises(UnsupportedSpec) as info:
        m.dropin(ContainerSpec(**fields), profile("default"), True)  # type: ignore[arg-type]
    assert (info.value.field, info.value.runtime) == (field, "portable")


def test_trusted_allows_privileged_and_unconfined_seccomp_without_settings() -> None:
    spec = ContainerSpec(privileged=True, seccomp="unconfined", portable_profile="trusted")
    assert dropin(spec, profile_name="trusted") == ["PrivateNetwork=yes", "IPAddressDeny=any"]


def test_root_or_not() -> None:
    assert not m.is_root(ContainerSpec())  # DynamicUser= of the profile
    assert m.is_root(ContainerSpec(portable_profile="trusted"))
    assert m.is_root(ContainerSpec(user="root"))
    assert not m.is_root(ContainerSpec(user="1000", portable_profile="trusted"))


def test_tasks_max_that_leaves_no_room_for_the_probe() -> None:
    assert "TasksMax=4" in str(m.tasks_problem("4"))
    assert "pids_limit" in str(m.tasks_problem("4"))
    assert m.tasks_problem(str(m.MIN_TASKS)) is None
    assert m.tasks_problem("infinity") is None
    assert m.tasks_problem("") is None


# -- unit file syntax ------------------------------------------------------------------------


def test_quote_escapes_what_systemd_would_interpret() -> None:
    assert m.quote('a"b') == '"a\\"b"'
    assert m.quote("100%") == '"100%%"'
    assert m.quote("$HOME ${X}") == '"$$HOME $${X}"'
    assert m.quote("$HOME", expand=False) == '"$HOME"'
    assert m.quote("a\\nb\nc\td\x01") == '"a\\\\nb\\nc\\td\\x01"'


def test_unit_file_keeps_each_word() -> None:
    argv = ["/.containersec/busybox", "sh", "-c", 'echo "$1"; exit 3', "x", ";", "a b"]
    text = m.unit_file("img", argv)
    assert "Type=exec\n" in text
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    # shlex's POSIX rules agree with systemd's on this subset (no escapes but \" and \\)
    words = shlex.split(line.removeprefix("ExecStart=").replace("$$", "$"))
    assert words == argv
    for bad in ([], ["sh"], ["/bin/a b"], ["/x", "a\0b"]):
        with pytest.raises(ValueError):
            m.exec_line(bad)


def test_render() -> None:
    assert m.render([("A", "1"), ("B", "")]).splitlines()[1:] == ["[Service]", "A=1", "B="]
    with pytest.raises(ValueError):
        m.render([("A", "1\n[Service]")])
