"""procfs parsers on /proc files recorded from real containers (tests/data/README.md)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_containersec.errors import ProbeParseError
from pytest_containersec.linux import caps, procfs

PROC = Path(__file__).parent.parent / "data" / "proc"
CASES = sorted(p.name for p in PROC.iterdir() if p.is_dir())
PODMAN_CAPS = tuple(
    sorted(caps.DOCKER_DEFAULT_CAPS - {"CAP_NET_RAW", "CAP_MKNOD", "CAP_AUDIT_WRITE"})
)
DOCKER_CAPS = tuple(sorted(caps.DOCKER_DEFAULT_CAPS))
NSPAWN_CAPS = caps.decode_mask("fdecabff")
ROOTLESS_MAP = ((0, 1001, 1), (1, 100000, 65536))
HOST_MAP = ((0, 0, 4294967295),)


def read(case: str, name: str) -> str:
    return (PROC / case / name).read_text()


def test_all_cases_are_recorded() -> None:
    assert CASES == [
        "docker-default", "docker-limited", "docker-nnp", "docker-seccomp-unconfined",
        "nspawn-private-users", "podman-default", "podman-rootless-default",
        "podman-rootless-user1000",
    ]  # fmt: skip


# case: (uid, groups, effective caps, bounding caps, seccomp, no_new_privs, nspid)
STATUS: dict[str, tuple[int, tuple[int, ...], Any, Any, str, bool, tuple[int, ...]]] = {
    "docker-default": (0, (0,), DOCKER_CAPS, DOCKER_CAPS, "filter", False, (6379, 1)),
    "docker-limited": (1000, (1000,), (), (), "filter", False, (6441, 1)),
    "docker-nnp": (0, (0,), DOCKER_CAPS, DOCKER_CAPS, "filter", True, (6572, 1)),
    "docker-seccomp-unconfined": (0, (0,), DOCKER_CAPS, DOCKER_CAPS, "disabled", False,
                                  (6507, 1)),
    "nspawn-private-users": (492896256, (), NSPAWN_CAPS, NSPAWN_CAPS, "filter", False,
                             (7000, 1)),
    "podman-default": (0, (), PODMAN_CAPS, PODMAN_CAPS, "filter", False, (6620, 1)),
    "podman-rootless-default": (1001, (), PODMAN_CAPS, PODMAN_CAPS, "filter", False,
                                (6858, 1)),
    "podman-rootless-user1000": (100999, (100999,), (), PODMAN_CAPS, "filter", False,
                                 (6888, 1)),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_status(case: str) -> None:
    uid, groups, eff, bnd, seccomp, nnp, nspid = STATUS[case]
    st_ = procfs.parse_status(read(case, "status"))
    assert st_.uid == (uid,) * 4
    assert st_.gid == (uid,) * 4
    assert st_.groups == groups
    assert st_.cap_effective == eff
    assert st_.cap_permitted == eff
    assert st_.cap_bounding == bnd
    assert st_.cap_ambient == ()
    assert st_.cap_inheritable == (NSPAWN_CAPS if case.startswith("nspawn") else ())
    assert st_.seccomp == seccomp
    assert st_.no_new_privs is nnp
    assert st_.nspid == nspid
    assert st_.capabilities().bounding == bnd


def test_nspawn_keeps_sys_admin_but_not_module_loading() -> None:
    names = procfs.parse_status(read("nspawn-private-users", "status")).cap_effective
    assert "CAP_SYS_ADMIN" in names
    assert "CAP_SYS_MODULE" not in names


STATUS_MIN = (
    "Name:\tsh\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\nNSpid:\t7\n"
    "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0000020000200000\nCapBnd:\t0\nCapAmb:\t0\n"
    "NoNewPrivs:\t1\nSeccomp:\t1\n"
)


def test_status_minimal_and_unknown_bits() -> None:
    s = procfs.parse_status(STATUS_MIN)
    assert s.cap_effective == ("CAP_41", "CAP_SYS_ADMIN")
    assert (s.seccomp, s.no_new_privs, s.groups, s.nspid) == ("strict", True, (), (7,))


@pytest.mark.parametrize(
    "bad",
    [
        STATUS_MIN.replace("NoNewPrivs:\t1\n", ""),  # missing (kernel < 4.10): an error
        STATUS_MIN.replace("Seccomp:\t1\n", ""),
        STATUS_MIN.replace("Seccomp:\t1", "Seccomp:\t3"),
        STATUS_MIN.replace("NoNewPrivs:\t1", "NoNewPrivs:\tyes"),
        STATUS_MIN.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0"),
        STATUS_MIN.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0\t4294967296"),
        STATUS_MIN.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t-1\t0\t0"),
        STATUS_MIN.replace("CapEff:\t0000020000200000", "CapEff:\tzz"),
        STATUS_MIN.replace("NSpid:\t7", "NSpid:\t"),
        STATUS_MIN + "Seccomp:\t2\n",
        STATUS_MIN + "garbage\n",
        "",
    ],
)
def test_status_rejects(bad: str) -> None:
    with pytest.raises(ProbeParseError):
        procfs.parse_status(bad)


# -- id maps -------------------------------------------------------------------------------

ID_MAPS = {
    "docker-default": HOST_MAP,
    "docker-limited": HOST_MAP,
    "podman-default": HOST_MAP,
    "podman-rootless-default": ROOTLESS_MAP,
    "podman-rootless-user1000": ROOTLESS_MAP,
    "nspawn-private-users": ((0, 492896256, 65536),),
}


@pytest.mark.parametrize(("case", "expected"), ID_MAPS.items())
def test_id_maps(case: str, expected: tuple[tuple[int, int, int], ...]) -> None:
    assert procfs.parse_id_map(read(case, "uid_map")) == expected
    assert procfs.parse_id_map(read(case, "gid_map")) == expected


@pytest.mark.parametrize(
    "bad",
    ["0 0", "0 0 0", "0 0 1 1", "a b c", "0 0 4294967296", "4294967295 0 2",
     "0 100 10\n5 200 10", "0 100 10\n20 105 10", "-1 0 1"],
)  # fmt: skip
def test_id_map_rejects(bad: str) -> None:
    with pytest.raises(ProbeParseError):
        procfs.parse_id_map(bad)


def test_id_map_empty_and_adjacent() -> None:
    assert procfs.parse_id_map("") == ()
    assert procfs.parse_id_map("0 100 10\n10 110 10\n") == ((0, 100, 10), (10, 110, 10))


# -- mountinfo -----------------------------------------------------------------------------


def test_mountinfo_docker_limited_read_only_root() -> None:
    mounts = procfs.parse_mountinfo(read("docker-limited", "mountinfo"))
    assert len(mounts) == 28
    root = mounts[0]
    assert (root.mount_id, root.parent_id, root.major, root.minor) == (173, 122, 0, 62)
    assert (root.root, root.mountpoint, root.fstype, root.source) == (
        "/",
        "/",
        "overlay",
        "overlay",
    )
    assert root.options == ("ro", "relatime")
    assert root.optional_fields == ("master:3",)
    assert root.super_options[0] == "rw"
    assert procfs.to_mount(root).read_only is True
    cg = next(m for m in mounts if m.mountpoint == "/sys/fs/cgroup/memory")
    assert cg.root == "/docker/7fb87d69f226f5f5a6594a626d6faa335db6ca0265d5a8a58809d102a462cc9e"
    assert (cg.fstype, cg.super_options) == ("cgroup", ("rw", "memory"))


@pytest.mark.parametrize("case", CASES)
def test_mountinfo_every_case(case: str) -> None:
    text = read(case, "mountinfo")
    mounts = procfs.parse_mountinfo(text)
    assert len(mounts) == len(text.splitlines())
    assert [m.mountpoint for m in mounts].count("/") == 1
    root_ro = next(procfs.to_mount(m).read_only for m in mounts if m.mountpoint == "/")
    assert root_ro is (case == "docker-limited")


def test_mountinfo_nspawn_idmapped_and_deleted() -> None:
    mounts = procfs.parse_mountinfo(read("nspawn-private-users", "mountinfo"))
    root = mounts[0]
    assert root.root == "/var/lib/containersec/images/containersec_probe/rootfs"
    assert "idmapped" in root.options
    assert (root.major, root.minor, root.source) == (254, 0, "/dev/vda")
    boot_id = [m for m in mounts if m.mountpoint == "/proc/sys/kernel/random/boot_id"]
    assert [procfs.to_mount(m).read_only for m in boot_id] == [True, False]


def test_mountinfo_octal_escapes_and_optional_fields() -> None:
    line = (
        r"36 35 98:0 /my\040dir /mnt/a\011b\012c\134d rw,noatime shared:1 master:2 - "
        r"fuse.sshfs user@host:/x\040y rw,user_id=0"
    )
    (mi,) = procfs.parse_mountinfo(line + "\n")
    assert mi.root == "/my dir"
    assert mi.mountpoint == "/mnt/a\tb\nc\\d"
    assert mi.optional_fields == ("shared:1", "master:2")
    assert (mi.fstype, mi.source) == ("fuse.sshfs", "user@host:/x y")
    assert procfs.to_mount(mi).read_only is False


def test_mountinfo_nsfs_root_and_empty_source() -> None:
    text = "155 27 0:4 net:[4026532257] /run/docker/netns/4b87 rw - nsfs nsfs rw\n"
    assert procfs.parse_mountinfo(text)[0].root == "net:[4026532257]"
    (mi,) = procfs.parse_mountinfo("40 1 0:50 / /x rw - tmpfs  rw\n")
    assert mi.source == ""


@pytest.mark.parametrize(
    "bad",
    ["", "36 35 98:0 / /mnt rw shared:1 ext3 /dev/root rw",  # no separator
     "36 35 98:0 / /mnt rw - ext3 /dev/root",  # too few after '-'
     "36 35 98:0 / /mnt rw - ext3 /dev/root rw extra",
     "x 35 98:0 / /mnt rw - ext3 /dev/root rw", "36 35 98 / /mnt rw - ext3 /dev/root rw",
     "36 35 98:0 / mnt rw - ext3 /dev/root rw", r"36 35 98:0 / /a\0 rw - ext3 /dev/root rw",
     r"36 35 98:0 / /a\777 rw - ext3 /dev/root rw"],
)  # fmt: skip
def test_mountinfo_rejects(bad: str) -> None:
    with pytest.raises(ProbeParseError):
        procfs.parse_mountinfo(bad)


# -- /proc/<pid>/cgroup ----------------------------------------------------------------------

DOCKER_LIMITED_ID = "7fb87d69f226f5f5a6594a626d6faa335db6ca0265d5a8a58809d102a462cc9e"


def test_proc_cgroup_v1_hybrid() -> None:
    got = procfs.parse_proc_cgroup(read("docker-limited", "cgroup"))
    path = f"/docker/{DOCKER_LIMITED_ID}"
    assert got == dict.fromkeys(
        ["name=systemd", "pids", "blkio", "freezer", "devices", "memory", "cpuset",
         "cpuacct", "cpu", ""], path,
    )  # fmt: skip


def test_proc_cgroup_nspawn_named_and_unified() -> None:
    got = procfs.parse_proc_cgroup(read("nspawn-private-users", "cgroup"))
    assert got["name=systemd"] == "/payload"
    assert got[""] == "/payload"
    assert got["pids"] == "/"


def test_proc_cgroup_comounted_and_v2() -> None:
    text = "5:cpu,cpuacct:/x\n1:name=systemd:/a:b\n0::/user.slice/u.scope\n"
    assert procfs.parse_proc_cgroup(text) == {
        "cpu": "/x", "cpuacct": "/x", "name=systemd": "/a:b", "": "/user.slice/u.scope",
    }  # fmt: skip


@pytest.mark.parametrize(
    "bad", ["", "4:memory", "x:memory:/a", "4:memory:a", "4::/a", "0:memory:/a",
            "4:memory:/a\n5:memory:/b", "0::/a\n0::/b", "4:cpu,,x:/a"],
)  # fmt: skip
def test_proc_cgroup_rejects(bad: str) -> None:
    with pytest.raises(ProbeParseError):
        procfs.parse_proc_cgroup(bad)


# -- LSM -------------------------------------------------------------------------------------


def test_attr_current_was_unreadable_here() -> None:
    # This host runs no labelling LSM: reading attr/current failed with EINVAL (README).
    for case in CASES:
        assert "Invalid argument" in read(case, "attr_current.unreadable")


SELINUX = "system_u:system_r:container_t:s0:c123,c456"


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # hand-written examples of what the files hold on AppArmor and SELinux hosts
        ("docker-default (enforce)\n", "docker-default (enforce)"),
        ("unconfined\n", "unconfined"),
        (f"{SELINUX}\0", SELINUX),
        ("", None), ("\n", None), ("\0", None),
    ],
)  # fmt: skip
def test_attr_current(text: str, expected: str | None) -> None:
    assert procfs.parse_attr_current(text) == expected


@pytest.mark.parametrize("bad", ["a\nb\n", "a\0b", " a\n"])
def test_attr_current_rejects(bad: str) -> None:
    with pytest.raises(ProbeParseError):
        procfs.parse_attr_current(bad)


def test_lsm_list() -> None:
    names = procfs.parse_lsm_list("lockdown,capability,landlock,yama,apparmor\n")
    assert names[-1] == "apparmor"
    assert procfs.label_lsm(names) == "apparmor"
    assert procfs.label_lsm(procfs.parse_lsm_list("capability,selinux")) == "selinux"
    assert procfs.label_lsm(procfs.parse_lsm_list("capability,yama\n")) is None
    with pytest.raises(ProbeParseError):
        procfs.parse_lsm_list("capability,,yama")


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_read_host_lsm(tmp_path: Path) -> None:
    assert procfs.read_host_lsm(tmp_path) is None
    _write(tmp_path, "sys/fs/selinux/enforce", "1")
    assert procfs.read_host_lsm(tmp_path) == "selinux"
    _write(tmp_path, "sys/module/apparmor/parameters/enabled", "Y\n")
    assert procfs.read_host_lsm(tmp_path) == "apparmor"
    _write(tmp_path, "sys/kernel/security/lsm", "capability,yama")
    assert procfs.read_host_lsm(tmp_path) is None  # the list wins over the markers


def test_read_layer_on_a_recorded_tree(tmp_path: Path) -> None:
    (tmp_path / "42").symlink_to(PROC / "podman-rootless-default")
    assert procfs.read_uid_map(42, tmp_path) == ROOTLESS_MAP
    with pytest.raises(ProbeParseError, match="42/status"):
        procfs.read_status(42, tmp_path / "nope")


def test_read_attr_current_einval_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def einval(self: Path) -> bytes:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(Path, "read_bytes", einval)
    assert procfs.read_attr_current(1, tmp_path) is None


# -- fuzzing: a value consistent with the input, or ProbeParseError, never anything else --


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "dup_line", "drop_line"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op in ("insert", "replace"):
            junk = draw(st.text(st.sampled_from(" \t\n:-0123456789abfx/\\\0,=ä"), max_size=6))
            text = text[:i] + junk + text[j if op == "replace" else i :]
        else:
            rows = text.split("\n")
            k = draw(st.integers(0, len(rows) - 1))
            rows[k : k + 1] = [rows[k]] * 2 if op == "dup_line" else []
            text = "\n".join(rows)
    return text


def sample_or_random(name: str) -> st.SearchStrategy[str]:
    samples = st.sampled_from([read(c, name) for c in CASES])
    return st.one_of(st.text(max_size=200), samples.flatmap(mutated))


def fuzz(parser: Callable[[str], Any], text: str) -> Any:
    try:
        return parser(text)
    except ProbeParseError:
        return None


@given(sample_or_random("status"))
@settings(max_examples=150, deadline=None)
def test_fuzz_status(text: str) -> None:
    s = fuzz(procfs.parse_status, text)
    if s is None:
        return
    fields = dict(line.split(":", 1) for line in text.split("\n") if line)
    assert s.uid == tuple(int(x) for x in fields["Uid"].split())
    assert caps.encode(s.cap_effective) == int(fields["CapEff"].strip(), 16)
    assert s.seccomp == procfs.SECCOMP_MODES[fields["Seccomp"].strip()]


@given(sample_or_random("uid_map"))
@settings(max_examples=150, deadline=None)
def test_fuzz_id_map(text: str) -> None:
    m = fuzz(procfs.parse_id_map, text)
    if m is not None:
        assert [tuple(int(x) for x in row.split()) for row in text.split("\n") if row] == list(m)
        assert all(c > 0 and a + c <= 2**32 and b + c <= 2**32 for a, b, c in m)


@given(sample_or_random("mountinfo"))
@settings(max_examples=150, deadline=None)
def test_fuzz_mountinfo(text: str) -> None:
    mounts = fuzz(procfs.parse_mountinfo, text)
    if mounts is not None:
        rows = procfs.lines(text)
        assert [m.mount_id for m in mounts] == [int(r.split(" ")[0]) for r in rows]
        assert all(m.mountpoint.startswith("/") for m in mounts)


@given(sample_or_random("cgroup"))
@settings(max_examples=150, deadline=None)
def test_fuzz_proc_cgroup(text: str) -> None:
    got = fuzz(procfs.parse_proc_cgroup, text)
    if got is not None:
        assert set(got.values()) <= {row.split(":", 2)[2] for row in text.split("\n") if row}


@given(st.text(max_size=60))
@settings(max_examples=150, deadline=None)
def test_fuzz_attr_current_and_lsm_list(text: str) -> None:
    label = fuzz(procfs.parse_attr_current, text)
    if label is not None:
        assert label in text
        assert not {"\n", "\0"} & set(label)
    names = fuzz(procfs.parse_lsm_list, text)
    if names is not None:
        assert ",".join(names) == text.strip()


def test_a_read_only_superblock_makes_the_mount_read_only() -> None:
    line = "30 1 0:40 / / rw,relatime - squashfs /dev/loop0 ro\n"
    [mi] = procfs.parse_mountinfo(line)
    assert procfs.to_mount(mi).read_only
    rw = "30 1 0:40 / / rw,relatime - ext4 /dev/vda rw\n"
    assert not procfs.to_mount(procfs.parse_mountinfo(rw)[0]).read_only
