"""ContainerSpec -> systemd-nspawn argv, without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_containersec.errors import UnsupportedSpec
from pytest_containersec.linux import caps
from pytest_containersec.runtimes.base import PROBE_BUSYBOX, PROBE_DIR
from pytest_containersec.runtimes.nspawn import nspawn_agent as agent
from pytest_containersec.runtimes.nspawn import nspawn_cgroup as cg
from pytest_containersec.runtimes.nspawn.nspawn_spec import (
    NSPAWN_DEFAULT_CAPS,
    capability_set,
    declared_from_argv,
    nspawn_argv,
    spec_args,
)
from pytest_containersec.spec import ContainerSpec


def argv_for(spec: ContainerSpec, systemd: bool = False) -> tuple[list[str], dict[str, str]]:
    options, env = spec_args(spec, systemd)
    argv = nspawn_argv(
        spec,
        options,
        name="containersec-x-nspawn-1",
        rootfs=Path("/state/rootfs"),
        run=Path("/state/run"),
        probe_dir="/state/probe",
        tools=None,
        systemd=systemd,
        extra_env={},
    )
    return argv, env


def flag(argv: list[str], prefix: str) -> set[str]:
    return {c for a in argv if a.startswith(prefix) for c in a[len(prefix) :].split(",")}


def test_defaults_fixed_options_probe_and_idle_payload() -> None:
    argv, env = argv_for(ContainerSpec())
    assert argv[0] == "systemd-nspawn"
    for opt in ("--quiet", "--register=no", "--keep-unit", "--console=pipe", "--as-pid2"):
        assert opt in argv
    assert "--machine=containersec-x-nspawn-1" in argv
    assert "--private-users=pick" in argv
    assert "--private-users-ownership=map" in argv
    assert "--private-network" in argv
    assert f"--bind-ro=/state/probe:{PROBE_DIR}" in argv
    assert f"--bind=/state/run:{agent.RUN_DIR}:idmap" in argv
    assert argv[-3:] == [PROBE_BUSYBOX, "sleep", "2147483647"]
    assert env == {}
    assert flag(argv, "--capability=") == NSPAWN_DEFAULT_CAPS


def test_command_is_the_main_process_argv() -> None:
    argv, _ = argv_for(ContainerSpec(command=["sleep", "1 2"]))
    i = argv.index(agent.AGENT_ARGV0)
    assert argv[i + 1 :] == [agent.RUN_DIR, "sleep", "1 2"]


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        ((), ("ALL",), set()),
        (("NET_ADMIN",), ("ALL",), {"CAP_NET_ADMIN"}),
        (("ALL",), ("CHOWN",), set(caps.ALL_CAPS) - {"CAP_CHOWN"}),
        (("SYS_TIME",), ("KILL",), (set(NSPAWN_DEFAULT_CAPS) - {"CAP_KILL"}) | {"CAP_SYS_TIME"}),
    ],
)
def test_capabilities_follow_docker_arithmetic(
    add: tuple[str, ...], drop: tuple[str, ...], expected: set[str]
) -> None:
    spec = ContainerSpec(cap_add=add, cap_drop=drop)
    assert capability_set(spec) == expected
    argv, _ = argv_for(spec)
    assert flag(argv, "--capability=") - {""} == expected
    assert flag(argv, "--drop-capability=") - {""} == set(caps.ALL_CAPS) - expected


def test_user_keeps_the_switch_helpers_in_nspawns_set() -> None:
    argv, _ = argv_for(ContainerSpec(user="1000", cap_drop=["ALL"]))
    assert flag(argv, "--capability=") == set(agent.HELPER_CAPS)


def test_privileged_is_all_caps_and_seccomp_off() -> None:
    argv, env = argv_for(ContainerSpec(privileged=True))
    assert flag(argv, "--capability=") == set(caps.ALL_CAPS)
    assert not any(a.startswith("--drop-capability=") for a in argv)
    assert env == {"SYSTEMD_SECCOMP": "0"}


def test_seccomp_unconfined_goes_to_nspawns_environment() -> None:
    _, env = argv_for(ContainerSpec(seccomp="unconfined"))
    assert env == {"SYSTEMD_SECCOMP": "0"}


def test_simple_flags() -> None:
    spec = ContainerSpec(
        no_new_privileges=True,
        read_only=True,
        network="host",
        volumes=["/srv:/data:ro", "/tmp:/scratch"],
        env={"A": "1 2", "B": "x=y"},
    )
    argv, _ = argv_for(spec)
    assert "--no-new-privileges=yes" in argv
    assert "--read-only" in argv
    assert "--private-network" not in argv
    assert "--bind-ro=/srv:/data" in argv
    assert "--bind=/tmp:/scratch" in argv
    assert "--setenv=A=1 2" in argv
    assert "--setenv=B=x=y" in argv


@pytest.mark.parametrize(
    ("userns", "expected"),
    [
        (None, ["--private-users=pick", "--private-users-ownership=map"]),
        ("auto", ["--private-users=pick", "--private-users-ownership=map"]),
        ("host", ["--private-users=no"]),
        ("0:300000:65536", ["--private-users=300000:65536", "--private-users-ownership=map"]),
    ],
)
def test_userns(userns: str | None, expected: list[str]) -> None:
    argv, _ = argv_for(ContainerSpec(userns=userns))
    assert [a for a in argv if a.startswith("--private-users")] == expected
    assert ("idmap" in " ".join(argv)) == (userns != "host")


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("userns", {"userns": "keep-id"}),
        ("userns", {"userns": "0:100000:1000,1000:200000:1000"}),
        ("userns", {"userns": "1:100000:65536"}),
        ("seccomp", {"seccomp": "/etc/profile.json"}),
        ("volumes", {"volumes": ["/a\\b:/c"]}),
        ("env", {"env": {"1BAD": "x"}}),
        ("env", {"env": {"A-B": "x"}}),
    ],
)
def test_unsupported_spec_names_field_and_runtime(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(UnsupportedSpec) as info:
        spec_args(ContainerSpec(**kwargs), systemd=False)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.runtime == "nspawn"
    assert info.value.reason


def test_limits_without_systemd_are_cgroup_files() -> None:
    assert cg.limit_files(1, 64 << 20, 50, 0.5) == [
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("pids", "pids.max", "50"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
    ]
    assert cg.limit_files(2, 1024, 7, 1.5) == [
        ("memory", "memory.max", "1024"),
        ("pids", "pids.max", "7"),
        ("cpu", "cpu.max", "150000 100000"),
    ]
    argv, _ = argv_for(ContainerSpec(memory="64m"), systemd=False)
    assert not any(a.startswith("--property=") for a in argv)


def test_limits_with_systemd_are_properties_with_registration() -> None:
    argv, _ = argv_for(ContainerSpec(memory="64m", pids_limit=50, cpus=0.5), systemd=True)
    assert "--register=yes" in argv
    assert "--keep-unit" not in argv
    assert {a for a in argv if a.startswith("--property=")} == {
        "--property=MemoryMax=67108864",
        "--property=TasksMax=50",
        "--property=CPUQuota=50%",
    }


def test_v1_mounts_hybrid_layout() -> None:
    mountinfo = "\n".join(
        [
            "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
            "33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
            "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids",
            "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
            "22 1 0:21 / /proc rw - proc proc rw",
        ]
    )
    assert cg.v1_mounts(mountinfo) == {
        "cpu": Path("/sys/fs/cgroup/cpu"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "pids": Path("/sys/fs/cgroup/pids"),
        "systemd": Path("/sys/fs/cgroup/systemd"),
        "unified": Path("/sys/fs/cgroup/unified"),
    }


PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
GROUP = "root:x:0:\nuser:x:1000:\nwheel:x:10:user,other\nstaff:x:50:\n"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("user", (1000, 1000, [10], "user", "/home/user")),
        ("1000", (1000, 1000, [10], "user", "/home/user")),
        ("1234", (1234, 0, [], None, None)),
        ("user:staff", (1000, 50, [], "user", "/home/user")),
        ("1234:77", (1234, 77, [], None, None)),
        ("root", (0, 0, [], "root", "/root")),
    ],
)
def test_resolve_user_like_docker(user: str, expected: tuple[object, ...]) -> None:
    assert agent.resolve_user(user, PASSWD, GROUP) == expected


@pytest.mark.parametrize("user", ["nobody", "user:nogroup"])
def test_resolve_user_unknown_names(user: str) -> None:
    with pytest.raises(ValueError, match="unable to find"):
        agent.resolve_user(user, PASSWD, GROUP)


def test_drop_prefix() -> None:
    p = agent.drop_prefix(1000, 1000, [], frozenset({"CAP_SETUID", "CAP_SETGID"}))
    assert p[-1] == "--"
    assert "--reuid=1000" in p
    assert "--regid=1000" in p
    assert "--clear-groups" in p
    assert "--inh-caps=-all" in p
    assert "--bounding-set=-setgid,-setuid" in p
    root = agent.drop_prefix(0, 0, [10], frozenset())
    assert "--groups=10" in root
    assert "--inh-caps=-all" not in root
    assert not any(a.startswith("--bounding-set") for a in root)


def test_write_nul_rejects_nul(tmp_path: Path) -> None:
    agent.write_nul(tmp_path / "argv", ["a b", "", "c\nd"])
    assert (tmp_path / "argv").read_bytes() == b"a b\0\0c\nd\0"
    with pytest.raises(ValueError, match="NUL"):
        agent.write_nul(tmp_path / "argv", ["a\0b"])


def test_declared_from_argv() -> None:
    spec = ContainerSpec(
        user="1000",
        cap_drop=["ALL"],
        memory="64m",
        pids_limit=50,
        read_only=True,
        volumes=["/srv:/data:ro"],
    )
    argv, env = argv_for(spec)
    d = declared_from_argv(argv, env, spec)
    assert d["argv"] == argv
    assert d["user"] == "1000"
    assert d["capabilities"] == []
    assert d["read_only"] is True
    assert d["no_new_privileges"] is False
    assert d["seccomp"] == "default"
    assert d["memory"] == 64 << 20
    assert d["pids_limit"] == 50
    assert d["cpus"] is None
    assert d["userns_mode"] == "auto"
    assert d["network_mode"] == "none"
    assert d["binds"] == ["/srv:/data:ro"]
    assert d["privileged"] is False
    sd, sd_env = argv_for(ContainerSpec(cpus=1.5, seccomp="unconfined"), systemd=True)
    d2 = declared_from_argv(sd, sd_env, ContainerSpec(cpus=1.5, seccomp="unconfined"))
    assert d2["cpus"] == 1.5
    assert d2["seccomp"] == "unconfined"
