"""ContainerSpec validation and normalization."""

from __future__ import annotations

import pytest

from pytest_containersec.errors import SpecError
from pytest_containersec.spec import ContainerSpec, Volume, parse_size


def test_normalizes_fields() -> None:
    s = ContainerSpec(
        image="x", cap_add=["sys_admin", "CAP_NET_RAW"], cap_drop="ALL", memory="64m",
        cpus=1, volumes=["/a:/b:ro"], env={"B": "2", "A": "1"}, command=["sleep", "1"],
    )  # fmt: skip
    assert s.cap_add == ("CAP_NET_RAW", "CAP_SYS_ADMIN")
    assert s.cap_drop == ("ALL",)
    assert s.memory == 64 * 1024**2
    assert s.cpus == 1.0
    assert s.volumes == (Volume("/a", "/b", True),)
    assert s.env == (("A", "1"), ("B", "2"))
    assert s.command == ("sleep", "1")
    assert hash(s) == hash(ContainerSpec(**{**s.__dict__}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image", ""),
        ("user", "root; rm -rf /"),
        ("cap_add", ["CAP_FLY"]),
        ("privileged", "yes"),
        ("seccomp", "strict"),
        ("memory", "64x"),
        ("memory", 0),
        ("cpus", -1),
        ("cpus", "many"),
        ("pids_limit", 0),
        ("pids_limit", True),
        ("userns", "private"),
        ("userns", "0:100000"),
        ("volumes", ["relative:/x"]),
        ("volumes", ["/a:/b:rx"]),
        ("network", "bridge"),
    ],
)
def test_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(SpecError) as info:
        ContainerSpec(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64m", 64 * 1024**2),
        ("1g", 1024**3),
        ("512k", 524288),
        ("1000", 1000),
        ("1.5g", 1610612736),
        ("128MiB", 128 * 1024**2),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_userns_maps() -> None:
    s = ContainerSpec(userns="0:100000:5000,5000:200000:10")
    assert s.uid_maps == ((0, 100000, 5000), (5000, 200000, 10))
    assert ContainerSpec(userns="auto").uid_maps == ()


def test_to_dict_and_non_defaults() -> None:
    s = ContainerSpec(user="1000", read_only=True)
    assert s.non_default_fields() == {"user": "1000", "read_only": True}
    assert s.to_dict()["volumes"] == []


@pytest.mark.parametrize(
    "field_value", [("tmpfs", ["/run"]), ("pid", "host"), ("ulimits", {"nofile": "1:2"})]
)
def test_lxc_and_containerd_refuse_the_fields_they_do_not_map(
    field_value: tuple[str, object],
) -> None:
    from pathlib import Path

    from pytest_containersec.errors import UnsupportedSpec
    from pytest_containersec.runtimes.containerd import containerd_spec
    from pytest_containersec.runtimes.lxc import lxc_spec

    name, value = field_value
    spec = ContainerSpec(**{name: value})  # type: ignore[arg-type]
    with pytest.raises(UnsupportedSpec, match=name):
        containerd_spec.run_argv(
            spec, name="x", log=Path("/l"), pid_file=Path("/p"), probe_dir=Path("/d"),
            tools=None, prefix=[], labels={},
        )  # fmt: skip
    with pytest.raises(UnsupportedSpec, match=name):
        lxc_spec.config_lines(
            spec, name="x", rootfs=Path("/r"), probe_dir=Path("/d"), run_dir=Path("/u"),
            log=Path("/l"), idmap=None, cgroup_version=2, ids=None, env={}, apparmor=False,
        )  # fmt: skip


@pytest.mark.parametrize("command", ["facts", "compare"])
def test_an_unknown_runtime_is_a_usage_error_in_the_cli(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_containersec.cli import cli

    assert cli.main([command, "--runtime", "nosuch", "containersec/probe"]) == cli.EXIT_USAGE
    assert "unknown runtime(s) nosuch" in capsys.readouterr().err
