"""Facts about the host the runtimes run on (read once, cheap)."""

from __future__ import annotations

import functools
import os
import platform
import pwd
import shutil
from pathlib import Path
from typing import Literal

from ..errors import RuntimeUnavailable

ROOTLESS_USER_ENV = "CONTAINERSEC_ROOTLESS_USER"
DEFAULT_ROOTLESS_USER = "containersec"
BUSYBOX_ENV = "CONTAINERSEC_BUSYBOX"


def kernel() -> str:
    """The running kernel's release, as ``uname -r`` prints it."""
    return platform.release()


@functools.cache
def cgroup_version() -> int:
    """2 when /sys/fs/cgroup is a unified cgroup2 mount, else 1 (legacy or hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split(" - ")
        if len(parts) == 2 and line.split()[4] == "/sys/fs/cgroup":
            return 2 if parts[1].split()[0] == "cgroup2" else 1
    return 1


def systemd_is_pid1() -> bool:
    """Whether systemd is the init system: /run/systemd/system exists (sd_booted(3)'s test)."""
    return Path("/run/systemd/system").is_dir()


def rootless_user() -> pwd.struct_passwd:
    """The unprivileged user rootless engines run as: ourselves unless we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    name = os.environ.get(ROOTLESS_USER_ENV, DEFAULT_ROOTLESS_USER)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeUnavailable(
            "podman-rootless",
            f"user {name!r} does not exist",
            f"run the project setup (make setup) or set {ROOTLESS_USER_ENV}",
        ) from None


def subid_range(user: str, path: str) -> tuple[int, int] | None:
    """The first ``(start, count)`` of ``user`` in /etc/subuid or /etc/subgid."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == user and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]), int(parts[2])
    return None


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP header (statically linked)."""
    try:
        data = path.read_bytes()[:65536]
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    endian: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    phoff = int.from_bytes(data[32:40], endian)
    phentsize = int.from_bytes(data[54:56], endian)
    phnum = int.from_bytes(data[56:58], endian)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        if int.from_bytes(data[off : off + 4], endian) == 3:  # PT_INTERP
            return False
    return True


@functools.cache
def static_busybox() -> str:
    """Path of a statically linked busybox on the host (bind-mounted as the probe)."""
    candidates = [os.environ.get(BUSYBOX_ENV, ""), "/bin/busybox", "/usr/bin/busybox"]
    which = shutil.which("busybox")
    if which:
        candidates.append(which)
    for c in candidates:
        if c and _is_static_elf(Path(c)):
            return str(Path(c).resolve())
    raise RuntimeUnavailable(
        "probe",
        "no statically linked busybox on the host",
        "apt-get install busybox-static (or set CONTAINERSEC_BUSYBOX)",
    )
