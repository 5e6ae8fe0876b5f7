"""Facts built in tests: a confined default and targeted changes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pytest_containersec.linux.caps import CAP_NAMES, DOCKER_DEFAULT_CAPS
from pytest_containersec.model import (
    AccessResult,
    Capabilities,
    Cgroup,
    Facts,
    Lsm,
    Mount,
    User,
)

DOCKER_CAPS = tuple(sorted(DOCKER_DEFAULT_CAPS))
ALL_CAPS = tuple(sorted(CAP_NAMES))


def facts(**changes: Any) -> Facts:
    base = Facts(
        runtime="docker",
        engine_rootless=False,
        host_pid=1234,
        user=User(uid=0, gid=0, host_uid=0, host_gid=0),
        uid_map=((0, 0, 4294967295),),
        gid_map=((0, 0, 4294967295),),
        capabilities=Capabilities(DOCKER_CAPS, DOCKER_CAPS, DOCKER_CAPS, (), ()),
        seccomp="filter",
        no_new_privs=False,
        lsm=Lsm(None, None),
        cgroup=Cgroup(1, "/docker/abc", None, None, None),
        rootfs_read_only=False,
        mounts=(
            Mount(
                "/", "overlay", "overlay", "/", False, ("rw",), "/var/lib/docker/overlay2/x/merged"
            ),
            Mount("/proc", "proc", "proc", "/", False, ("rw",)),
            Mount("/sys", "sysfs", "sysfs", "/", True, ("ro",)),
            Mount(
                "/etc/hosts",
                "ext4",
                "/dev/vda",
                "/var/lib/docker/containers/abc/hosts",
                False,
                ("rw",),
                "/var/lib/docker/containers/abc/hosts",
            ),
        ),
        access={
            "/etc/shadow:r": AccessResult(True),
            "/proc/sys/kernel/core_pattern:w": AccessResult(False, "EROFS"),
            "/proc/sysrq-trigger:w": AccessResult(False, "EROFS"),
            "/dev/mem:r": AccessResult(False, "ENOENT"),
        },
        operations={
            "mount_tmpfs": AccessResult(False, "EPERM"),
            "mknod_device": AccessResult(True),
            "unshare_user": AccessResult(False, "EPERM"),
            "load_module": AccessResult(False, "EPERM"),
            "write_sysfs": AccessResult(False, "EROFS"),
        },
        host_capabilities=ALL_CAPS,
    )
    return replace(base, **changes)


def rootless(**changes: Any) -> Facts:
    values: dict[str, Any] = {
        "runtime": "podman-rootless",
        "engine_rootless": True,
        "user": User(uid=0, gid=0, host_uid=1001, host_gid=1001),
        "uid_map": ((0, 1001, 1), (1, 100000, 65536)),
        "gid_map": ((0, 1001, 1), (1, 100000, 65536)),
    }
    return facts(**{**values, **changes})


def privileged(**changes: Any) -> Facts:
    f = facts(
        capabilities=Capabilities(ALL_CAPS, ALL_CAPS, ALL_CAPS, (), ()),
        seccomp="disabled",
        **changes,
    )
    ops = dict(f.operations)
    ops.update(mount_tmpfs=AccessResult(True), write_sysfs=AccessResult(True))
    acc = dict(f.access)
    acc["/proc/sys/kernel/core_pattern:w"] = AccessResult(True)
    return replace(f, operations=ops, access=acc)
