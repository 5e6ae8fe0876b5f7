"""Facts assembled from recorded host-side files and a recorded probe output."""

from __future__ import annotations

from pathlib import Path

from pytest_containersec.checks import checks
from pytest_containersec.linux import procfs
from pytest_containersec.model import Cgroup, Declared, Lsm
from pytest_containersec.observe import facts, probe

DATA = Path(__file__).parent.parent / "data"
KEYS = (*probe.DEFAULT_ACCESS, "/etc/passwd:w", "/bin/sh:x", "/nonexist:x")


def proc(case: str, name: str) -> str:
    return (DATA / "proc" / case / name).read_text()


def compose(
    case: str,
    probe_case: str,
    declared: Declared,
    cgroup: Cgroup,
    status_text: str | None = None,
) -> facts.Facts:
    out = probe.parse((DATA / "probe" / f"{probe_case}.txt").read_text(), KEYS)
    host_mountinfo = (
        DATA / "cgroup" / "docker-v1-limits" / "proc" / "self" / "mountinfo"
    ).read_text()
    return facts.compose(
        runtime="docker",
        engine_rootless=False,
        pid=4242,
        status=procfs.parse_status(status_text or proc(case, "status")),
        uid_map=procfs.parse_id_map(proc(case, "uid_map")),
        gid_map=procfs.parse_id_map(proc(case, "gid_map")),
        mountinfo=procfs.parse_mountinfo(proc(case, "mountinfo")),
        host_mountinfo=procfs.parse_mountinfo(host_mountinfo),
        lsm=Lsm(None, None),
        cgroup=cgroup,
        namespaces={"net": "private", "pid": "private", "user": "host"},
        probe_out=out,
        inside_status=procfs.parse_status(out.status_text),
        declared=declared,
    )


LIMITED_DECLARED: Declared = {
    "user": "1000",
    "cap_drop": ["ALL"],
    "read_only": True,
    "memory": 64 * 1024**2,
    "pids_limit": 50,
    "cpus": 0.5,
    "seccomp": "default",
}


def test_limited_docker_container() -> None:
    f = compose(
        "docker-limited",
        "docker-user1000-capdropall-ro",
        LIMITED_DECLARED,
        Cgroup(1, "/docker/x", 64 * 1024**2, 50, 0.5),
    )
    assert (f.user.uid, f.user.host_uid) == (1000, 1000)
    assert f.user.groups == (1000,)
    assert f.capabilities.effective == ()
    assert f.capabilities.bounding == ()
    assert f.seccomp == "filter"
    assert f.rootfs_read_only
    assert f.uid_map == ((0, 0, 4294967295),)
    assert f.mismatches == ()
    assert f.access["/etc/shadow:r"].errno == "EACCES"
    assert not [m for m in f.mounts if m.mountpoint.startswith("/.containersec")]
    assert checks.root_unprivileged(f)  # no user namespace: container root is host root
    assert checks.cgroup(f, memory="64m", pids=50, cpus=0.5) == []


def test_declared_limits_that_are_not_in_effect_are_mismatches() -> None:
    f = compose(
        "docker-limited",
        "docker-user1000-capdropall-ro",
        LIMITED_DECLARED,
        Cgroup(1, "/docker/x", None, None, None),
    )
    fields = {(m.field, m.source) for m in f.mismatches}
    assert ("cgroup.memory_max", "declared") in fields
    assert ("cgroup.pids_max", "declared") in fields
    assert ("cgroup.cpu_max", "declared") in fields


def test_inside_view_that_disagrees_with_the_host_is_flagged() -> None:
    # the probe ran as root with the default capabilities; the main process is uid 1000
    # with none: the exec's confinement differs from the main process's
    f = compose(
        "docker-limited",
        "docker-default",
        LIMITED_DECLARED,
        Cgroup(1, "/docker/x", 64 * 1024**2, 50, 0.5),
    )
    inside = {m.field for m in f.mismatches if m.source == "inside"}
    assert inside == {
        "capabilities.bounding",
        "capabilities.effective",
        "capabilities.permitted",
        "user.uid",
        "user.gid",
        "user.groups",
    }


def test_rootless_podman_user_maps_to_subuid() -> None:
    f = compose(
        "podman-rootless-user1000",
        "docker-user1000-capdropall-ro",
        {},
        Cgroup(1, "/x", None, None, None),
    )
    assert f.uid_map == ((0, 1001, 1), (1, 100000, 65536))
    assert (f.user.uid, f.user.host_uid) == (1000, 100999)
    assert f.user.groups == (1000,)  # host gid 100999, as the container sees it
    assert checks.root_unprivileged(f) == []


def test_host_paths_of_bind_mounts() -> None:
    f = compose("docker-default", "docker-default", {}, Cgroup(1, "/x", None, None, None))
    hosts = {m.mountpoint: m.host_path for m in f.mounts}
    assert hosts["/etc/hosts"].startswith("/var/lib/docker/containers/")  # type: ignore[union-attr]
    assert hosts["/proc"] is None
    assert checks.no_sensitive_mounts(f) == []


def test_unmapped_supplementary_group_shows_as_overflow_gid() -> None:
    # a host group outside the gid map: the container sees it as 65534; it is not dropped
    status = proc("podman-rootless-user1000", "status").replace(
        "Groups:\t100999", "Groups:\t100999 27"
    )
    f = compose(
        "podman-rootless-user1000",
        "docker-user1000-capdropall-ro",
        {},
        Cgroup(1, "/x", None, None, None),
        status_text=status,
    )
    assert f.user.groups == (1000, 65534)
