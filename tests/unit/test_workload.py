"""The workload's identity, processes, limits and escalation surface: parsers on recorded
/proc files and xattrs, the identity comparison, setpriv options, and the checks."""

from __future__ import annotations

import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_containersec.checks import checks
from pytest_containersec.errors import PolicyError, ProbeParseError, SpecError
from pytest_containersec.linux import identity, processes, procfs
from pytest_containersec.model import (
    AccessResult,
    Capabilities,
    Cgroup,
    Facts,
    FileCapability,
    Lsm,
    Mismatch,
    ProbeIdentity,
    ProcessRecord,
    SetuidFile,
    SurfaceScan,
    User,
)
from pytest_containersec.observe import identity_probe
from pytest_containersec.observe.surface_files import parse_vfs_caps, scan

DATA = Path(__file__).parent.parent / "data"
W = DATA / "workload"


def status(case: str) -> procfs.Status:
    return procfs.parse_status((DATA / "proc" / case / "status").read_text())


# -- /proc/<pid>/limits and oom_score_adj --------------------------------------------------


def test_limits_of_a_recorded_file() -> None:
    limits = processes.parse_limits((W / "limits-bookworm-host.txt").read_text())
    assert len(limits) == 16
    assert limits["nofile"].soft == limits["nofile"].hard == 20000
    assert limits["stack"].soft == 8388608
    assert limits["stack"].hard is None
    assert limits["cpu"].soft is None  # unlimited
    assert limits["nice"].soft == 0  # a row without a unit


def test_limits_of_a_container_with_docker_ulimits() -> None:
    limits = processes.parse_limits((W / "limits-docker-ulimit-nofile-1024.txt").read_text())
    assert (limits["nofile"].soft, limits["nofile"].hard) == (1024, 2048)
    assert limits["nproc"].soft == 64


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Max open files            1024                 1024                 files\n",
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max open files            lots                 1024                 files\n",
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max telepathy             1                    1                    \n",
    ],
)
def test_limits_that_do_not_parse(text: str) -> None:
    with pytest.raises(ProbeParseError):
        processes.parse_limits(text)


def test_a_limits_file_missing_rows_is_an_error() -> None:
    text = (W / "limits-bookworm-host.txt").read_text()
    cut = "\n".join(line for line in text.splitlines() if "open files" not in line) + "\n"
    with pytest.raises(ProbeParseError, match="nofile"):
        processes.parse_limits(cut)


@pytest.mark.parametrize(("text", "value"), [("0\n", 0), ("-1000\n", -1000), ("500", 500)])
def test_oom_score_adj(text: str, value: int) -> None:
    assert processes.parse_oom_score_adj(text) == value


@pytest.mark.parametrize("text", ["", "1001", "-1001", "x", "01"])
def test_oom_score_adj_out_of_range(text: str) -> None:
    with pytest.raises(ProbeParseError):
        processes.parse_oom_score_adj(text)


# -- security.capability xattrs ------------------------------------------------------------


def test_vfs_caps_v2_recorded_from_setcap() -> None:
    # `setcap cap_net_raw+ep` on the setuid image's ping, read back with os.getxattr
    rev, eff, perm, inh, rootid = parse_vfs_caps((W / "xattr-v2-cap_net_raw-ep.bin").read_bytes())
    assert (rev, eff, perm, inh, rootid) == (2, True, ("CAP_NET_RAW",), (), None)


def test_vfs_caps_v3_carries_the_rootid() -> None:
    # written inside rootless podman's user namespace: the kernel stores v3 with the host
    # uid of that namespace's root
    rev, eff, perm, _inh, rootid = parse_vfs_caps((W / "xattr-v3-rootless.bin").read_bytes())
    assert (rev, eff, perm) == (3, True, ("CAP_NET_RAW",))
    assert rootid == 1001


def test_vfs_caps_v1_and_high_caps() -> None:
    v1 = struct.pack("<III", 0x01000000, 1 << 12, 0)
    assert parse_vfs_caps(v1) == (1, False, ("CAP_NET_ADMIN",), (), None)
    v2 = struct.pack("<IIIII", 0x02000001, 0, 1 << 21, 1 << (38 - 32), 0)
    assert parse_vfs_caps(v2) == (2, True, ("CAP_PERFMON",), ("CAP_SYS_ADMIN",), None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x02",  # v2 magic, too short
        struct.pack("<IIIII", 0x04000000, 0, 0, 0, 0),  # unknown revision
        struct.pack("<IIIII", 0x02000002, 0, 0, 0, 0),  # unknown flag
        struct.pack("<IIIIII", 0x02000000, 0, 0, 0, 0, 0),  # v2 with a rootid
    ],
)
def test_vfs_caps_that_do_not_parse(data: bytes) -> None:
    with pytest.raises(ProbeParseError):
        parse_vfs_caps(data)


# -- the walk ------------------------------------------------------------------------------


def _mountinfo(root: str, extra: str = "") -> tuple[procfs.MountInfo, ...]:
    text = f"1 0 8:1 / / rw,relatime - ext4 /dev/vda rw\n{extra}"
    return procfs.parse_mountinfo(text)


def test_walk_finds_setuid_and_setgid_files_and_follows_no_symlink(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    su = tmp_path / "bin" / "su"
    su.write_bytes(b"x")
    su.chmod(0o4755)
    chage = tmp_path / "bin" / "chage"
    chage.write_bytes(b"x")
    chage.chmod(0o2755)
    (tmp_path / "bin" / "plain").write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "evil").write_bytes(b"x")
    (outside / "evil").chmod(0o4755)
    (tmp_path / "link").symlink_to(outside)
    found, _, how = scan(str(tmp_path), _mountinfo(str(tmp_path)), (), ())
    assert how.complete
    assert [(s.path, s.setuid, s.setgid, s.mode) for s in found] == [
        ("/bin/chage", False, True, 0o2755),
        ("/bin/su", True, False, 0o4755),
    ]


def test_walk_skips_kernel_file_systems_and_marks_nosuid(tmp_path: Path) -> None:
    for d in ("proc", "data"):
        (tmp_path / d).mkdir()
        f = tmp_path / d / "tool"
        f.write_bytes(b"x")
        f.chmod(0o4755)
    mi = _mountinfo(
        str(tmp_path),
        "2 1 0:5 / /proc rw - proc proc rw\n3 1 8:2 / /data rw,nosuid - ext4 /dev/vdb rw\n",
    )
    found, _, how = scan(str(tmp_path), mi, (), ())
    assert [(s.path, s.nosuid) for s in found] == [("/data/tool", True)]
    assert "/proc" in how.skipped


def test_walk_is_bounded(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"f{i}").write_bytes(b"")
    _, _, how = scan(str(tmp_path), _mountinfo(str(tmp_path)), (), (), max_entries=10)
    assert not how.complete
    assert "10 entries" in how.reason


def test_walk_reads_file_capabilities(tmp_path: Path) -> None:
    f = tmp_path / "ping"
    f.write_bytes(b"x")
    try:
        os.setxattr(f, "security.capability", (W / "xattr-v2-cap_net_raw-ep.bin").read_bytes())
    except OSError as exc:  # needs CAP_SETFCAP (tests run as root in CI)
        pytest.fail(f"cannot set a file capability here: {exc}")
    _, fcaps, _ = scan(str(tmp_path), _mountinfo(str(tmp_path)), (), ())
    assert fcaps == (FileCapability("/ping", ("CAP_NET_RAW",), (), True, 2, None, False),)


# -- identity -------------------------------------------------------------------------------


def creds(case: str, label: str | None = None, mapped: bool = True) -> identity.Credentials:
    st = status(case)
    base = DATA / "proc" / case
    if not mapped:
        return identity.credentials(st, label)
    return identity.credentials(
        st,
        label,
        procfs.parse_id_map((base / "uid_map").read_text()),
        procfs.parse_id_map((base / "gid_map").read_text()),
    )


def test_the_same_process_has_no_differences() -> None:
    c = creds("docker-default")
    assert identity.differences(c, c) == []


def test_differences_name_every_part() -> None:
    root = creds("docker-default")
    user = creds("docker-limited")
    fields = {name for name, _, _ in identity.differences(user, root)}
    assert {"user.uid", "user.gid", "capabilities.bounding", "capabilities.effective"} <= fields


def test_setpriv_options_for_a_dropped_user() -> None:
    opts = identity.setpriv_options(creds("docker-limited"))
    assert opts[:4] == ["--ruid=1000", "--euid=1000", "--rgid=1000", "--egid=1000"]
    assert "--bounding-set=-all" in opts  # cap_drop ALL: an empty bounding set
    assert "--ambient-caps=-all" in opts
    assert "--nnp" not in opts


def test_setpriv_options_keep_the_bounding_set_and_nnp() -> None:
    opts = identity.setpriv_options(creds("docker-nnp"))
    assert "--nnp" in opts
    bnd = next(o for o in opts if o.startswith("--bounding-set="))
    assert "+net_bind_service" in bnd
    assert bnd.startswith("--bounding-set=-all,")


def test_an_unmapped_id_cannot_be_taken() -> None:
    c = replace(creds("docker-limited"), uids=(None, None, None, None))
    with pytest.raises(ValueError):
        identity.setpriv_options(c)
    assert any(r.startswith("user:") for r in identity.unreproducible(c, c))


def test_what_no_exec_can_reproduce_is_named() -> None:
    exec_creds = creds("docker-default", "docker-default (enforce)")
    target = replace(
        exec_creds,
        seccomp_filters=3,
        label="nginx (enforce)",
        no_new_privs=False,
        bounding=exec_creds.bounding | {"CAP_SYS_ADMIN"},
    )
    exec_creds = replace(exec_creds, seccomp_filters=1, no_new_privs=True)
    why = "\n".join(identity.unreproducible(target, exec_creds))
    assert "installed 2 seccomp filter(s) of its own" in why
    assert "lsm.label" in why
    assert "nginx (enforce)" in why
    assert "no_new_privs" in why
    assert "the exec lacks CAP_SYS_ADMIN" in why


def test_a_non_root_process_keeping_permitted_caps_cannot_be_followed() -> None:
    target = replace(creds("docker-limited"), permitted=frozenset({"CAP_NET_RAW"}))
    why = identity.unreproducible(target, creds("docker-default"))
    assert any("only ambient capabilities survive" in r for r in why)


def test_reasons_keep_the_known_reason_per_part() -> None:
    inside = [
        Mismatch("user.uid", 999, 0, "inside"),
        Mismatch("seccomp.filters", 3, 1, "inside"),
    ]
    out = identity_probe.reasons(inside, ("user: setpriv refused: EPERM", "lsm.label: x"))
    assert out == (
        "user: setpriv refused: EPERM",
        "seccomp.filters: the process has 3, the probe got 1",
    )


# -- processes ------------------------------------------------------------------------------


def proc_record(pid: int, comm: str, uid: int, main: bool = False) -> ProcessRecord:
    return ProcessRecord(
        pid, pid + 1000, comm, (comm,), User(uid, uid, uid, uid, (uid,)),
        Capabilities(effective=("CAP_CHOWN",) if uid == 0 else ()), "filter", False, main,
    )  # fmt: skip


NGINX = (
    proc_record(1, "nginx", 0, main=True),
    proc_record(7, "nginx", 33),
    proc_record(8, "nginx", 33),
    proc_record(9, "sh", 0),
)


def test_select_by_pid_name_and_predicate() -> None:
    assert processes.select(NGINX, 7).pid == 7
    assert processes.select(NGINX, "sh").pid == 9
    worker = processes.select(NGINX, lambda p: p.comm == "nginx" and p.user.uid != 0)
    assert worker.pid == 7  # two workers with one identity: the lowest pid


def test_a_name_matching_several_identities_is_refused() -> None:
    with pytest.raises(SpecError, match="different identities"):
        processes.select(NGINX, "nginx")


def test_no_match_lists_the_processes() -> None:
    with pytest.raises(SpecError, match="pid 1 nginx"):
        processes.select(NGINX, "postgres")
    with pytest.raises(SpecError):
        processes.select(NGINX, True)


def test_a_record_maps_ids_into_the_container() -> None:
    st = status("podman-rootless-user1000")
    base = DATA / "proc" / "podman-rootless-user1000"
    rec = processes.record(
        st, "sleep", ("sleep", "3600"),
        procfs.parse_id_map((base / "uid_map").read_text()),
        procfs.parse_id_map((base / "gid_map").read_text()),
    )  # fmt: skip
    assert (rec.user.uid, rec.user.host_uid) == (1000, 100999)
    assert rec.host_pid == st.nspid[0]
    assert rec.pid == st.nspid[-1]


# -- checks -------------------------------------------------------------------------------


def facts(**kw: object) -> Facts:
    base = Facts(
        runtime="docker",
        engine_rootless=False,
        host_pid=1,
        user=User(0, 0, 0, 0, (0, 10)),
        uid_map=((0, 0, 4294967295),),
        gid_map=((0, 0, 4294967295),),
        capabilities=Capabilities(
            effective=("CAP_CHOWN",), bounding=("CAP_CHOWN", "CAP_NET_RAW"), ambient=()
        ),
        seccomp="filter",
        no_new_privs=False,
        lsm=Lsm(None, None),
        cgroup=Cgroup(1, "/x", None, None, None),
        rootfs_read_only=False,
        mounts=(),
        namespaces={"pid": "host", "net": "private"},
        operations={"mount_tmpfs": AccessResult(False, "EPERM")},
        setuid_files=(
            SetuidFile("/bin/su", 0o4755, 0, 0, True, False),
            SetuidFile("/usr/bin/chage", 0o2755, 0, 42, False, True),
            SetuidFile("/mnt/data/tool", 0o4755, 0, 0, True, False, nosuid=True),
        ),
        file_capabilities=(FileCapability("/bin/ping", ("CAP_NET_RAW",), (), True, 2),),
        surface_scan=SurfaceScan(100, True),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_no_setuid_binaries_names_them_and_honours_allow() -> None:
    v = checks.no_setuid_binaries(facts())
    assert len(v) == 1
    assert "/bin/su" in v[0].observed
    assert "/usr/bin/chage" in v[0].observed
    assert "/mnt/data/tool" not in v[0].observed  # nosuid mount: the bit does nothing
    assert checks.no_setuid_binaries(facts(), allow=["/bin/su", "/usr/bin/*"]) == []
    assert len(checks.no_setuid_binaries(facts(), allow=["/bin/su"])) == 1


def test_setuid_checks_give_no_pass_without_a_full_walk() -> None:
    assert checks.no_setuid_binaries(facts(setuid_files=None), allow=["*"])
    partial = facts(setuid_files=(), surface_scan=SurfaceScan(10, False, (), "timeout"))
    assert "incomplete" in checks.no_setuid_binaries(partial)[0].observed
    assert checks.no_file_capabilities(partial)


def test_no_file_capabilities_with_allow_lists_and_cap_limits() -> None:
    assert "CAP_NET_RAW" in checks.no_file_capabilities(facts())[0].observed
    assert checks.no_file_capabilities(facts(), allow=["/bin/ping"]) == []
    assert checks.no_file_capabilities(facts(), allow={"/bin/ping": ["NET_RAW"]}) == []
    assert checks.no_file_capabilities(facts(), allow={"/bin/ping": ["NET_BIND_SERVICE"]})
    unparsed = facts(file_capabilities=(FileCapability("/x", (), (), False, 0),))
    assert checks.no_file_capabilities(unparsed, allow=["/x"])  # an unparsed value: never ok


def test_exact_bounding_and_ambient_sets() -> None:
    f = facts()
    assert checks.capabilities(f, bounding=["CHOWN", "NET_RAW"], ambient=[]) == []
    v = checks.capabilities(f, bounding=["CHOWN"])
    assert v
    assert "extra {CAP_NET_RAW}" in v[0].observed
    assert checks.capabilities(f, ambient=["NET_RAW"])


def test_groups_namespaces_host_and_operation_allowed() -> None:
    f = facts()
    assert checks.groups(f, [10, 0]) == []
    assert checks.groups(f, [10])
    assert checks.namespaces_host(f, ["pid"]) == []
    assert "private net" in checks.namespaces_host(f, ["pid", "net"])[0].observed
    assert checks.namespaces_host(f, ["ipc"])[0].observed == "not observed"
    assert "denied with EPERM" in checks.operation_allowed(f, "mount_tmpfs")[0].observed


def test_access_refusal_names_the_process_and_why() -> None:
    f = facts(
        access={"/etc/shadow:r": AccessResult(False, "EACCES")},
        mismatches=(Mismatch("seccomp.filters", 3, 1, "inside"),),
        identity=ProbeIdentity(7, 1007, "nginx", "none", (), ("seccomp.filters: own filter",)),
    )
    v = checks.denied(f, "/etc/shadow")
    assert len(v) == 1
    assert "process 7 (nginx)" in v[0].expected
    assert "own filter" in v[0].hint


def test_new_facts_fields_round_trip_through_json() -> None:
    f = facts(
        processes=NGINX,
        identity=ProbeIdentity(7, 1007, "nginx", "setpriv", ("--ruid=33",), ()),
        rlimits=processes.parse_limits((W / "limits-bookworm-host.txt").read_text()),
        oom_score_adj=-500,
        image_user="nonroot:nonroot",
    )
    assert Facts.from_json(f.to_json()) == f


def test_members_are_in_the_main_process_pid_namespace_and_cgroup_subtree(tmp_path: Path) -> None:
    procs = {
        10: ("pid:[4026532001]", "/system.slice/unit-a.service"),  # the main process
        11: ("pid:[4026532001]", "/system.slice/unit-a.service/sub"),  # below: a member
        12: ("pid:[4026532001]", "/system.slice/unit-b.service"),  # another unit, same ns
        13: ("pid:[4026532002]", "/system.slice/unit-a.service"),  # another pid namespace
    }
    for pid, (ns, cg) in procs.items():
        (tmp_path / str(pid) / "ns").mkdir(parents=True)
        (tmp_path / str(pid) / "ns" / "pid").symlink_to(ns)
        (tmp_path / str(pid) / "cgroup").write_text(f"12:pids:{cg}\n1:name=systemd:{cg}\n0::/\n")
    (tmp_path / "self").mkdir()
    assert processes.member_pids(10, tmp_path) == [10, 11]


def test_policy_families_for_the_new_checks(tmp_path: Path) -> None:
    from pytest_containersec.policy import policy

    p = tmp_path / "containersec-workload.yaml"
    p.write_text(
        "name: w\nimage: containersec/setuid\nexpect:\n"
        "  - no_setuid_binaries: {allow: [/bin/su]}\n"
        "  - no_file_capabilities: {allow: [/bin/ping]}\n"
        "  - operation_allowed: mount_tmpfs\n"
        "  - groups: [0, 10]\n"
        "  - namespaces_host: [pid]\n"
        "  - capabilities: {bounding: [CHOWN, NET_RAW], ambient: []}\n"
    )
    loaded = policy.load(p)
    results = {e.family: e.evaluate(facts()) for e in loaded.expectations}
    assert [v.check for v in results["no_setuid_binaries"]] == ["setuid"]  # chage is not allowed
    assert results["no_file_capabilities"] == []
    assert results["groups"] == []
    assert results["namespaces_host"] == []
    assert results["capabilities"] == []
    assert results["operation_allowed"]  # mount_tmpfs was denied with EPERM
    bad = tmp_path / "containersec-bad.yaml"
    bad.write_text("name: b\nimage: x\nexpect:\n  - operation_allowed: fly\n")
    with pytest.raises(PolicyError, match="operation_allowed"):
        policy.load(bad)
