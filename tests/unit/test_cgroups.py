"""Cgroup limit parsers and read_limits on recorded (v1) and hand-written (v2) trees."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_containersec.errors import ProbeParseError
from pytest_containersec.linux import cgroups
from pytest_containersec.linux.cgroups import CgroupMount
from pytest_containersec.model import Cgroup

DATA = Path(__file__).parent.parent / "data"
TREES = DATA / "cgroup"
DOCKER_ID = "7fb87d69f226f5f5a6594a626d6faa335db6ca0265d5a8a58809d102a462cc9e"
PODMAN_ID = "92b8fceec92f72a392a4e54140fa2bf9b4b253b82bb6be4c56842d1a5cef8a01"
V2_DOCKER = "3f1c9a7e5b2d48c6a0e1f7b9d3c5a8e2f4b6d8a0c2e4f6a8b0d2e4f6a8c0e2f4"
V2_ROOTLESS = "8b2e4d6f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b"
V2_STRICT = "c4a6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6"
HARNESS = "/process_api/2062cfd1b00df39ca9e4325ad7e19a91"  # where rootless podman stayed


# -- pure parsers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("67108864\n", 67108864), ("9223372036854771712\n", None), (f"{2**62}", None),
     (f"{2**62 - 1}\n", 2**62 - 1), ("0\n", 0)],
)  # fmt: skip
def test_v1_memory(text: str, expected: int | None) -> None:
    assert cgroups.parse_v1_memory_limit(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("max\n", None), ("50\n", 50), ("0", 0)])
def test_pids_max(text: str, expected: int | None) -> None:
    assert cgroups.parse_pids_max(text) == expected


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("-1\n", "100000\n", None), ("50000\n", "100000\n", 0.5), ("150000", "100000", 1.5),
     ("1000", "1000", 1.0)],
)  # fmt: skip
def test_v1_cpu(quota: str, period: str, expected: float | None) -> None:
    assert cgroups.parse_v1_cpu(quota, period) == expected


@pytest.mark.parametrize(("text", "expected"), [("max\n", None), ("134217728\n", 134217728)])
def test_v2_memory(text: str, expected: int | None) -> None:
    assert cgroups.parse_v2_memory_max(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max 100000\n", None), ("50000 100000\n", 0.5), ("200000 100000", 2.0)],
)
def test_v2_cpu(text: str, expected: float | None) -> None:
    assert cgroups.parse_v2_cpu_max(text) == expected


@pytest.mark.parametrize(
    ("parser", "bad"),
    [(cgroups.parse_v1_memory_limit, "-1"), (cgroups.parse_v1_memory_limit, "max"),
     (cgroups.parse_v1_memory_limit, ""), (cgroups.parse_v1_memory_limit, "1\n2\n"),
     (cgroups.parse_v1_memory_limit, "012"), (cgroups.parse_pids_max, "-1"),
     (cgroups.parse_pids_max, " max"), (cgroups.parse_v2_memory_max, "1.5"),
     (cgroups.parse_v2_cpu_max, "max"), (cgroups.parse_v2_cpu_max, "50000 0"),
     (cgroups.parse_v2_cpu_max, "0 100000"), (cgroups.parse_v2_cpu_max, "1 2 3"),
     (lambda t: cgroups.parse_v1_cpu(t, "100000"), "0"),
     (lambda t: cgroups.parse_v1_cpu("-1", t), "0"),
     (lambda t: cgroups.parse_v1_cpu(t, "100000"), "-2")],
)  # fmt: skip
def test_parsers_reject(parser: Callable[[str], Any], bad: str) -> None:
    with pytest.raises(ProbeParseError):
        parser(bad)


# -- where hierarchies are mounted -------------------------------------------------------------


def test_cgroup_mounts_hybrid_host() -> None:
    text = (TREES / "docker-v1-limits/proc/self/mountinfo").read_text()
    m = cgroups.parse_cgroup_mounts(text)
    assert set(m.v1) == {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                         "blkio", "pids", "name=systemd"}  # fmt: skip
    assert m.v1["memory"] == (CgroupMount("/sys/fs/cgroup/memory", "/"),)
    assert m.v2 == (CgroupMount("/sys/fs/cgroup/unified", "/"),)


def test_cgroup_mounts_bound_sub_hierarchies() -> None:
    # nspawn's view: memory and name=systemd are bind mounts of sub-hierarchies
    text = (DATA / "proc/nspawn-private-users/mountinfo").read_text()
    m = cgroups.parse_cgroup_mounts(text)
    assert m.v1["memory"] == (CgroupMount("/sys/fs/cgroup/memory", HARNESS),)
    assert m.v1["name=systemd"] == (CgroupMount("/sys/fs/cgroup/systemd", "/payload"),)
    assert m.v2 == ()
    assert cgroups.locate(m.v1["memory"], HARNESS + "/x/y") == (m.v1["memory"][0], "x/y")
    assert cgroups.locate(m.v1["memory"], HARNESS) == (m.v1["memory"][0], "")
    assert cgroups.locate(m.v1["memory"], "/process_api/other") is None


def test_cgroup_mounts_comounted_and_options() -> None:
    text = (
        "30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:28 / /sys/fs/cgroup/x rw - cgroup cgroup rw,xattr,release_agent=/a,name=x\n"
        "32 25 0:29 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
        "33 25 0:29 /a /mnt/a rw - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    m = cgroups.parse_cgroup_mounts(text)
    assert set(m.v1) == {"cpu", "cpuacct", "name=x"}
    assert m.v1["cpu"] == m.v1["cpuacct"]
    assert cgroups.locate(m.v2, "/a/b") == (CgroupMount("/sys/fs/cgroup", "/"), "a/b")


# -- read_limits on whole trees ----------------------------------------------------------------

EXPECTED = {
    "docker-v1-limits": (6441, Cgroup(1, f"/docker/{DOCKER_ID}", 67108864, 50, 0.5)),
    "podman-rootful-v1": (6620, Cgroup(1, f"/libpod_parent/libpod-{PODMAN_ID}", None, 2048, None)),
    "podman-rootless-v1": (6858, Cgroup(1, HARNESS, None, None, None)),
    "docker-v2-systemd": (
        4321, Cgroup(2, f"/system.slice/docker-{V2_DOCKER}.scope", 134217728, 64, 1.5)
    ),
    "podman-rootless-v2": (
        5678,
        Cgroup(2, "/user.slice/user-1000.slice/user@1000.service/user.slice/"
                  f"libpod-{V2_ROOTLESS}.scope", 268435456, 2048, None),
    ),
    "parent-stricter-v2": (
        9012, Cgroup(2, f"/machine.slice/libpod-{V2_STRICT}.scope", 536870912, 100, 0.5)
    ),
}  # fmt: skip


def test_every_tree_has_an_expectation() -> None:
    assert sorted(p.name for p in TREES.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_read_limits(case: str) -> None:
    pid, expected = EXPECTED[case]
    assert cgroups.read_limits(pid, root=TREES / case) == expected


def test_proc_root_is_separate(tmp_path: Path) -> None:
    shutil.copytree(TREES / "docker-v1-limits/proc", tmp_path / "elsewhere")
    got = cgroups.read_limits(
        6441, proc_root=tmp_path / "elsewhere", root=TREES / "docker-v1-limits"
    )
    assert got == EXPECTED["docker-v1-limits"][1]


@pytest.fixture
def docker_tree(tmp_path: Path) -> Path:
    shutil.copytree(TREES / "docker-v1-limits", tmp_path / "t")
    return tmp_path / "t"


def _drop_mount(root: Path, mountpoint: str) -> None:
    info = root / "proc/self/mountinfo"
    rows = [r for r in info.read_text().splitlines() if r.split(" ")[4] != mountpoint]
    info.write_text("\n".join(rows) + "\n")


def test_unmounted_controller_is_no_limit(docker_tree: Path) -> None:
    _drop_mount(docker_tree, "/sys/fs/cgroup/pids")  # and unified lists only hugetlb
    got = cgroups.read_limits(6441, root=docker_tree)
    assert (got.version, got.memory_max, got.pids_max, got.cpu_max) == (1, 67108864, None, 0.5)


def test_controller_on_unified_in_hybrid(docker_tree: Path) -> None:
    _drop_mount(docker_tree, "/sys/fs/cgroup/pids")
    (docker_tree / "sys/fs/cgroup/unified/cgroup.controllers").write_text("pids hugetlb\n")
    leaf = docker_tree / f"sys/fs/cgroup/unified/docker/{DOCKER_ID}"
    leaf.mkdir(parents=True)
    (leaf / "pids.max").write_text("33\n")
    assert cgroups.read_limits(6441, root=docker_tree).pids_max == 33


def test_parent_limit_applies_in_v1(docker_tree: Path) -> None:
    (docker_tree / "sys/fs/cgroup/memory/docker/memory.limit_in_bytes").write_text("1048576\n")
    (docker_tree / "sys/fs/cgroup/cpu/docker/cpu.cfs_quota_us").write_text("25000\n")
    got = cgroups.read_limits(6441, root=docker_tree)
    assert (got.memory_max, got.cpu_max) == (1048576, 0.25)


def test_unreadable_file_names_it(docker_tree: Path) -> None:
    f = docker_tree / f"sys/fs/cgroup/pids/docker/{DOCKER_ID}/pids.max"
    f.unlink()
    f.mkdir()  # reading a directory fails like an unreadable file
    with pytest.raises(ProbeParseError, match=f"{DOCKER_ID}/pids.max"):
        cgroups.read_limits(6441, root=docker_tree)


def test_garbage_limit_names_file(docker_tree: Path) -> None:
    f = docker_tree / "sys/fs/cgroup/memory/docker/memory.limit_in_bytes"
    f.write_text("lots\n")
    with pytest.raises(ProbeParseError, match=r"memory/docker/memory\.limit_in_bytes"):
        cgroups.read_limits(6441, root=docker_tree)


def test_missing_cgroup_directory(docker_tree: Path) -> None:
    shutil.rmtree(docker_tree / f"sys/fs/cgroup/cpu/docker/{DOCKER_ID}")
    with pytest.raises(ProbeParseError, match="cgroup directory missing"):
        cgroups.read_limits(6441, root=docker_tree)


def test_missing_proc_files(docker_tree: Path) -> None:
    with pytest.raises(ProbeParseError, match="999/cgroup"):
        cgroups.read_limits(999, root=docker_tree)
    (docker_tree / "proc/self/mountinfo").unlink()
    with pytest.raises(ProbeParseError, match="self/mountinfo"):
        cgroups.read_limits(6441, root=docker_tree)


def test_mounted_controller_missing_from_proc_cgroup(docker_tree: Path) -> None:
    cg = docker_tree / "proc/6441/cgroup"
    cg.write_text("".join(r + "\n" for r in cg.read_text().splitlines() if ":pids:" not in r))
    with pytest.raises(ProbeParseError, match="no pids line"):
        cgroups.read_limits(6441, root=docker_tree)


def test_no_cgroup_mounted_at_all(docker_tree: Path) -> None:
    (docker_tree / "proc/self/mountinfo").write_text("27 1 254:0 / / rw - ext4 /dev/vda rw\n")
    with pytest.raises(ProbeParseError, match="no cgroup hierarchy"):
        cgroups.read_limits(6441, root=docker_tree)


# -- fuzzing -----------------------------------------------------------------------------------

LIMIT_TEXT = st.one_of(
    st.text(max_size=30),
    st.builds(lambda n, s: f"{n}{s}", st.integers(-5, 2**64), st.sampled_from(["", "\n", " "])),
    st.sampled_from(["max\n", "max 100000\n", "50000 100000\n", "-1\n", "max"]),
)


def _ok(parser: Callable[[str], Any], text: str) -> tuple[bool, Any]:
    try:
        return True, parser(text)
    except ProbeParseError:
        return False, None


@given(LIMIT_TEXT)
@settings(max_examples=200, deadline=None)
def test_fuzz_single_value_parsers(text: str) -> None:
    value = text.removesuffix("\n")
    ok, got = _ok(cgroups.parse_v1_memory_limit, text)
    if ok:
        assert (got is None) == (int(value) >= 2**62)
        assert got in (None, int(value))
    for parser in (cgroups.parse_pids_max, cgroups.parse_v2_memory_max):
        ok, got = _ok(parser, text)
        if ok:
            assert got == (None if value == "max" else int(value))


@given(LIMIT_TEXT, LIMIT_TEXT)
@settings(max_examples=200, deadline=None)
def test_fuzz_cpu_parsers(a: str, b: str) -> None:
    ok, got = _ok(cgroups.parse_v2_cpu_max, f"{a.strip()} {b}")
    if ok:
        assert got is None or got > 0
    ok, got = _ok(lambda t: cgroups.parse_v1_cpu(t, b), a)
    if ok:
        assert got is None if a.strip() == "-1" else got == int(a) / int(b)


@given(st.text(max_size=300))
@settings(max_examples=100, deadline=None)
def test_fuzz_cgroup_mounts(text: str) -> None:
    ok, got = _ok(cgroups.parse_cgroup_mounts, text)
    if ok:
        assert all(m.root.startswith("/") for ms in got.v1.values() for m in ms)


def test_bound_sub_hierarchy_walks_to_the_mount_root(tmp_path: Path) -> None:
    # memory bind-mounted with root /outer/inner (as nspawn does): limits above are unseen
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(
        "35 31 0:32 /outer/inner /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    (tmp_path / "proc/7").mkdir()
    (tmp_path / "proc/7/cgroup").write_text("4:memory:/outer/inner/leaf\n")
    leaf = tmp_path / "sys/fs/cgroup/memory/leaf"
    leaf.mkdir(parents=True)
    (leaf / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (leaf.parent / "memory.limit_in_bytes").write_text("4096\n")
    got = cgroups.read_limits(7, root=tmp_path)
    assert got == Cgroup(1, "/outer/inner/leaf", 4096, None, None)
    (tmp_path / "proc/7/cgroup").write_text("4:memory:/outer/inner/../x\n")
    with pytest.raises(ProbeParseError, match="leaves the mount"):
        cgroups.read_limits(7, root=tmp_path)
    (tmp_path / "proc/7/cgroup").write_text("4:memory:/elsewhere\n")
    with pytest.raises(ProbeParseError, match="under no memory mount"):
        cgroups.read_limits(7, root=tmp_path)
