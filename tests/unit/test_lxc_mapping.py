"""ContainerSpec -> LXC container config, without starting anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pytest_containersec.errors import UnsupportedSpec
from pytest_containersec.linux import caps
from pytest_containersec.runtimes.base import PROBE_BUSYBOX
from pytest_containersec.runtimes.lxc import lxc_spec as m
from pytest_containersec.spec import ContainerSpec

ROOT_RANGE = [(231072, 65536)]


def config(spec: ContainerSpec, version: int = 1, apparmor: bool = False) -> list[str]:
    idmap = m.idmap_for(spec, ROOT_RANGE, ROOT_RANGE)
    ids = (1000, 1000) if spec.user else None
    return m.config_lines(
        spec, name="c", rootfs=Path("/s/c/rootfs"), probe_dir=Path("/s/probe"),
        run_dir=Path("/s/c/run"), log=Path("/s/c/console.log"), idmap=idmap,
        cgroup_version=version, ids=ids, env=dict(spec.env), apparmor=apparmor,
    )  # fmt: skip


def values(lines: list[str], key: str) -> list[str]:
    return [
        line.partition("=")[2].strip() for line in lines if line.partition("=")[0].strip() == key
    ]


def test_defaults_are_lxcs_unprivileged_template_with_roots_range() -> None:
    lines = config(ContainerSpec())
    assert values(lines, "lxc.include") == [
        "/usr/share/lxc/config/common.conf", "/usr/share/lxc/config/userns.conf",
    ]  # fmt: skip
    assert values(lines, "lxc.idmap") == ["u 0 231072 65536", "g 0 231072 65536"]
    assert values(lines, "lxc.rootfs.options") == ["idmap=container"]
    assert values(lines, "lxc.net.0.type") == ["empty"]
    assert values(lines, "lxc.seccomp.profile") == [m.SECCOMP_DEFAULT]
    assert values(lines, "lxc.cap.keep") == []  # everything, in the user namespace
    assert values(lines, "lxc.cap.drop") == [""]
    assert values(lines, "lxc.init.cmd") == [f"{PROBE_BUSYBOX} sh {m.INIT_SCRIPT}"]
    assert "lxc.mount.entry = /s/probe .containersec none bind,ro,create=dir 0 0" in lines
    assert not any(k.startswith(("lxc.cgroup", "lxc.no_new", "lxc.init.uid")) for k in lines)
    d = m.declared_from_config(lines, ContainerSpec())
    assert d["capabilities"] == sorted(caps.ALL_CAPS)
    assert d["seccomp"] == "default"
    assert d["userns_mode"] == "0:231072:65536"
    assert d["network_mode"] == "none"
    assert d["binds"] == []


def test_caps_follow_dockers_arithmetic_over_lxcs_default() -> None:
    drop_all = config(ContainerSpec(cap_drop=["ALL"], cap_add=["NET_BIND_SERVICE"]))
    assert values(drop_all, "lxc.cap.keep") == ["net_bind_service"]
    nothing = config(ContainerSpec(cap_drop=["ALL"]))
    assert values(nothing, "lxc.cap.keep") == ["none"]
    assert m.declared_from_config(nothing, ContainerSpec())["capabilities"] == []
    one = config(ContainerSpec(cap_drop=["SYS_ADMIN"]))
    kept = values(one, "lxc.cap.keep")[0].split()
    assert "sys_admin" not in kept
    assert len(kept) == 40
    # without a user namespace LXC's common.conf drops five
    host = ContainerSpec(userns="host")
    assert m.capability_set(host, idmapped=False) == caps.ALL_CAPS - m.COMMON_DROPS
    assert "lxc.include = /usr/share/lxc/config/userns.conf" not in config(host)


def test_privileged_opens_everything_but_the_user_namespace() -> None:
    lines = config(ContainerSpec(privileged=True), apparmor=True)
    assert values(lines, "lxc.seccomp.profile") == [""]
    assert values(lines, "lxc.cap.keep") == []
    assert values(lines, "lxc.mount.auto")[-1] == "proc:rw sys:rw cgroup:rw"
    assert values(lines, "lxc.apparmor.profile") == ["unconfined"]
    assert values(lines, "lxc.idmap")  # stays
    d = m.declared_from_config(lines, ContainerSpec(privileged=True))
    assert d["seccomp"] == "unconfined"
    assert d["privileged"]


def test_seccomp_profiles(tmp_path: Path) -> None:
    assert values(config(ContainerSpec(seccomp="unconfined")), "lxc.seccomp.profile") == [""]
    own = tmp_path / "own.seccomp"
    own.write_text("2\ndenylist\n[all]\nmkdir errno 1\n")
    lines = config(ContainerSpec(seccomp=str(own)))
    assert values(lines, "lxc.seccomp.profile") == [str(own)]
    assert m.declared_from_config(lines, ContainerSpec())["seccomp"] == "custom"
    oci = tmp_path / "oci.json"
    oci.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    with pytest.raises(UnsupportedSpec, match="OCI JSON") as info:
        config(ContainerSpec(seccomp=str(oci)))
    assert info.value.runtime == "lxc"
    with pytest.raises(UnsupportedSpec, match="cannot read"):
        config(ContainerSpec(seccomp=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (1, ["lxc.cgroup.memory.limit_in_bytes = 67108864", "lxc.cgroup.pids.max = 50",
             "lxc.cgroup.cpu.cfs_period_us = 100000", "lxc.cgroup.cpu.cfs_quota_us = 50000"]),
        (2, ["lxc.cgroup2.memory.max = 67108864", "lxc.cgroup2.pids.max = 50",
             "lxc.cgroup2.cpu.max = 50000 100000"]),
    ],
)  # fmt: skip
def test_limits_per_cgroup_version(version: int, expected: list[str]) -> None:
    spec = ContainerSpec(memory="64m", pids_limit=50, cpus=0.5)
    lines = config(spec, version)
    assert [line for line in lines if line.startswith("lxc.cgroup")] == expected
    d = m.declared_from_config(lines, spec)
    assert (d["memory"], d["pids_limit"], d["cpus"]) == (64 * 1024**2, 50, 0.5)


def test_flags_user_env_volumes_network(tmp_path: Path) -> None:
    spec = ContainerSpec(
        user="1000", read_only=True, no_new_privileges=True, network="host",
        env={"A": "b c"}, volumes=[f"{tmp_path}:/data:ro"],
    )  # fmt: skip
    lines = config(spec)
    assert values(lines, "lxc.rootfs.options") == ["idmap=container,ro"]
    assert values(lines, "lxc.no_new_privs") == ["1"]
    assert values(lines, "lxc.net.0.type") == ["none"]  # LXC's "none" is the host's
    assert values(lines, "lxc.init.uid") == ["1000"]
    assert values(lines, "lxc.init.gid") == ["1000"]
    assert values(lines, "lxc.environment") == ["A=b c"]
    assert f"lxc.mount.entry = {tmp_path} data none bind,ro,create=dir 0 0" in lines
    d = m.declared_from_config(lines, spec)
    assert d["read_only"]
    assert d["no_new_privileges"]
    assert d["user"] == "1000"
    assert d["network_mode"] == "host"
    assert d["binds"] == [f"{tmp_path}:/data:ro"]


def test_what_lxc_cannot_express() -> None:
    with pytest.raises(UnsupportedSpec, match="properties"):
        config(ContainerSpec(properties={"ProtectHome": "yes"}))
    with pytest.raises(UnsupportedSpec, match="fstab"):
        config(ContainerSpec(volumes=["/a b:/c"]))
    with pytest.raises(UnsupportedSpec, match="NAME=one line"):
        config(ContainerSpec(env={"A": "x\ny"}))
    with pytest.raises(UnsupportedSpec, match="keep-id"):
        config(ContainerSpec(userns="keep-id"))
    with pytest.raises(UnsupportedSpec, match="one range"):
        config(ContainerSpec(userns="0:231072:10,10:231082:10"))


def test_idmaps_must_be_roots_subordinate_ranges() -> None:
    assert m.idmap_for(ContainerSpec(userns="0:231072:1000"), ROOT_RANGE, ROOT_RANGE) == (
        0, 231072, 1000,
    )  # fmt: skip
    assert m.idmap_for(ContainerSpec(userns="host"), [], []) is None
    with pytest.raises(UnsupportedSpec, match="root:100000:65536 to /etc/subuid"):
        m.idmap_for(ContainerSpec(userns="0:100000:65536"), ROOT_RANGE, ROOT_RANGE)
    with pytest.raises(UnsupportedSpec, match="/etc/subgid"):
        m.idmap_for(ContainerSpec(userns="0:231072:100"), ROOT_RANGE, [(1, 2)])
    with pytest.raises(UnsupportedSpec, match="make setup"):
        m.idmap_for(ContainerSpec(), [], [])
    text = "containersec:100000:65536\nroot:231072:65536\nroot:x:1\n"
    assert m.parse_subids(text) == [(231072, 65536)]


def test_init_script_quotes_every_argument() -> None:
    script = m.init_script(ContainerSpec(command=["echo", "a b", "$(x)", "'q'"]))
    out = subprocess.run(
        ["sh", "-c", script.replace('exec "$r" "$@"', 'printf "%s|" "$r" "$@"')],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split("|")[1:4] == ["a b", "$(x)", "'q'"]
    idle = m.init_script(ContainerSpec())
    assert f"set -- {PROBE_BUSYBOX} sleep 2147483647" in idle


def test_log_outcome_reads_the_exit_status_and_errors() -> None:
    log = (
        "lxc-start c 2026 INFO     error - ../src/lxc/error.c:lxc_error_set_and_log:31 - "
        "Child <22474> ended on error (3)\n"
        "lxc-start c 2026 ERROR    conf - ../src/lxc/conf.c:lxc_map_ids:3708 - newuidmap failed\n"
        "lxc-start c 2026 WARN     cgfsng - x - noise\n"
    )
    assert m.log_outcome(log) == (3, ["newuidmap failed"])
    assert m.log_outcome("") == (None, [])
