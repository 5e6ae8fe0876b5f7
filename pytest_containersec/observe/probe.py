"""The one exec inside: attempts made as the container's own user, and their strict parser.

The script runs under the host's static busybox, bind-mounted read-only at /.containersec,
so it works on any image (scratch, distroless, or one whose /bin/sh and cat are fakes).
It never changes anything: a read or write probe opens and closes (dd with count=0 and
conv=notrunc, only on paths that exist), a mount is undone at once, mknod happens in that
throw-away tmpfs or is removed at once, and module loading is attempted with a file that
is not a module (the kernel checks privileges first, then rejects the image).
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
from dataclasses import dataclass

from ..errors import ProbeParseError, SpecError
from ..model import AccessResult
from .target import PROBE_DIR

MAX_PROBE_OUTPUT = 256 * 1024
PROTOCOL = "CSPROBE1"
MODES = ("r", "w", "x")

# Escape-surface attempts made in every snapshot (access keys "PATH:MODE").
DEFAULT_ACCESS: tuple[str, ...] = (
    "/etc/shadow:r",
    "/proc/sysrq-trigger:w",
    "/proc/sys/kernel/core_pattern:w",
    "/proc/sys/kernel/hostname:w",
    "/dev/mem:r",
    "/dev/kmsg:r",
    "/proc/kcore:r",
)
OPERATIONS: tuple[str, ...] = (
    "mount_tmpfs",
    "mknod_device",
    "unshare_user",
    "load_module",
    "write_sysfs",
)
# Engine API sockets looked for inside (plus any socket mount seen from the host).
SOCKET_PATHS: tuple[str, ...] = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/podman/podman.sock",
    "/var/run/podman/podman.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/buildkit/buildkitd.sock",
)
SYSFS_CANDIDATES: tuple[str, ...] = (
    "/sys/kernel/uevent_helper",
    "/sys/kernel/profiling",
    "/sys/kernel/rcu_expedited",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/power/state",
)

# Positional parameters: $1 = the probe dir inside, then the access keys PATH:MODE.
SCRIPT = r"""
B="$1/busybox"; M="$1/mnt"; P="$1"; shift
TAB=$(printf '\t'); NL='
'
emit() { # kind key rc message...
  k=$1; key=$2; rc=$3; shift 3
  msg="$*"; msg=${msg//$TAB/ }; msg=${msg//$NL/ }
  printf 'R\t%s\t%s\t%s\t%s\n' "$k" "$key" "$rc" "${msg:0:300}"
}
fifo() { # kind key test path: opening a FIFO blocks until a peer comes; access(2) answers
  if [ "$3" "$4" ]; then emit "$1" "$2" 0 ""; else emit "$1" "$2" 1 "Permission denied"; fi
}
try() { # kind key command...  (runs it, captures rc + stderr tail)
  k=$1; key=$2; shift 2
  out=$("$@" 2>&1 >/dev/null); rc=$?
  emit "$k" "$key" "$rc" "${out##*$NL}"
}
printf '%s\n' "CSPROBE1 BEGIN"
while IFS= read -r line; do printf 'S\t%s\n' "$line"; done < /proc/self/status
lbl=; { IFS= read -r lbl < /proc/self/attr/current; } 2>/dev/null
[ -z "$lbl" ] || printf 'L\t%s\n' "${lbl//$TAB/ }"
for spec in "$@"; do
  p=${spec%:*}; m=${spec##*:}
  case $m in
    r) if [ -p "$p" ]; then fifo A "$spec" -r "$p"
       else try A "$spec" "$B" dd if="$p" of=/dev/null bs=1 count=0; fi ;;
    w) if [ -p "$p" ]; then fifo A "$spec" -w "$p"
       elif [ -e "$p" ] || [ -L "$p" ]; then
         try A "$spec" "$B" dd if=/dev/null of="$p" bs=1 count=0 conv=notrunc
       else emit A "$spec" 1 "dd: can't open '$p': No such file or directory"; fi ;;
    x) if [ ! -e "$p" ]; then emit A "$spec" 1 "No such file or directory"
       elif [ -x "$p" ] && [ ! -d "$p" ]; then emit A "$spec" 0 ""
       else emit A "$spec" 1 "Permission denied"; fi ;;
  esac
done
out=$("$B" mount -t tmpfs -o size=16k,mode=700 containersec-probe "$M" 2>&1); mrc=$?
emit O mount_tmpfs "$mrc" "$out"
if [ "$mrc" = 0 ]; then
  try O mknod_device "$B" mknod "$M/null" c 1 3
  "$B" umount "$M" || "$B" umount -l "$M"
else
  done_mknod=
  for d in /dev/shm /tmp /run /var/tmp /; do
    n="$d/.containersec-probe-$$"
    out=$("$B" mknod "$n" c 1 3 2>&1); rc=$?
    if [ "$rc" = 0 ]; then "$B" rm -f "$n"; emit O mknod_device 0 ""; done_mknod=1; break; fi
    case $out in *"Read-only file system"*|*"Permission denied"*|*"No such file"*) continue ;; esac
    emit O mknod_device "$rc" "$out"; done_mknod=1; break
  done
  [ -n "$done_mknod" ] ||
    emit O mknod_device 1 "mknod: no writable directory: Read-only file system"
fi
try O unshare_user "$B" unshare -U "$B" true
try O load_module "$B" insmod "$P/notamodule.ko"
sysfs=
for f in __SYSFS__; do [ -e "$f" ] && { sysfs=$f; break; }; done
if [ -n "$sysfs" ]; then
  try O write_sysfs "$B" dd if=/dev/null of="$sysfs" bs=1 count=0 conv=notrunc
else emit O write_sysfs 1 "no sysfs file to try: No such file or directory"; fi
for s in __SOCKETS__; do
  if [ -S "$s" ]; then
    if [ -w "$s" ]; then emit K "$s" 0 ""; else emit K "$s" 1 "Permission denied"; fi
  fi
done
printf '%s\n' "CSPROBE1 END"
"""


def script() -> str:
    """The probe script with the fixed candidate lists filled in (no user input in it)."""
    return SCRIPT.replace("__SYSFS__", " ".join(SYSFS_CANDIDATES)).replace(
        "__SOCKETS__", " ".join(SOCKET_PATHS)
    )


def validate_access(key: str) -> str:
    """``PATH:MODE`` with an absolute path and mode r, w or x; returned unchanged."""
    path, sep, mode = key.rpartition(":")
    if not sep or mode not in MODES or not path.startswith("/"):
        raise SpecError("access", key, "expected /ABSOLUTE/PATH:MODE with mode r, w or x")
    if any(c in path for c in "\t\n\r\0"):
        raise SpecError("access", key, "the path must not contain tabs, newlines or NUL")
    return key


def argv(access: tuple[str, ...]) -> list[str]:
    """The busybox argv (after the busybox path) that runs the probe for these keys."""
    keys = [validate_access(k) for k in access]
    return ["sh", "-c", script(), "containersec-probe", PROBE_DIR, *keys]


# strerror text -> errno name, from this host's C library (busybox-static uses glibc too),
# plus the few messages busybox words itself.
_STRERROR: dict[str, str] = {
    os.strerror(n): name for n, name in sorted(errno_mod.errorcode.items(), reverse=True)
}
_BUSYBOX_MESSAGES: dict[str, str] = {
    "permission denied (are you root?)": "EPERM",  # mount: EPERM and EACCES alike
    "invalid module format": "ENOEXEC",
    "kernel does not support requested operation": "ENOSYS",
    "unknown symbol in module, or unknown parameter": "ENOENT",
    "module has wrong symbol version": "ESRCH",
    "module is already loaded": "EEXIST",
    "short read": "EIO",
}
_INSMOD_RC_IS_ERRNO = "load_module"


def errno_name(message: str) -> str | None:
    """The errno name of an applet's error message ("...: Permission denied" -> EACCES)."""
    text = message.strip()
    for known, name in _BUSYBOX_MESSAGES.items():
        if text.endswith(known):
            return name
    tail = text.rsplit(": ", 1)[-1]
    return _STRERROR.get(tail) or _STRERROR.get(text)


@dataclass(frozen=True)
class ProbeOutput:
    """The parsed output of one probe exec: its own status as the container claims it, and the
    access, operation and socket results."""

    status_text: str  # the probe process's own /proc/self/status, as the container claims
    access: dict[str, AccessResult]
    operations: dict[str, AccessResult]
    sockets: dict[str, bool]  # engine API socket path -> writable by the container's user
    label: str | None = None  # the probe's own LSM label (/proc/self/attr/current)


_LINE = re.compile(r"^R\t([AOK])\t([^\t]*)\t(-?\d{1,3})\t([^\t]*)$")


def _result(kind: str, key: str, rc: int, message: str) -> AccessResult:
    if rc == 0:
        return AccessResult(True, None)
    name = errno_name(message)
    if name is None and kind == "O" and key == _INSMOD_RC_IS_ERRNO and rc in errno_mod.errorcode:
        name = errno_mod.errorcode[rc]  # busybox insmod exits with the errno
    return AccessResult(False, name or "UNKNOWN")


def parse(text: str, expected_access: tuple[str, ...] = ()) -> ProbeOutput:
    """Parse the probe's output strictly; anything unexpected raises ProbeParseError."""
    src = "probe output"
    if len(text) > MAX_PROBE_OUTPUT:
        raise ProbeParseError(src, f"{len(text)} bytes exceeds the {MAX_PROBE_OUTPUT} limit")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != f"{PROTOCOL} BEGIN":
        raise ProbeParseError(src, "missing the CSPROBE1 BEGIN header")
    if lines[-1] != f"{PROTOCOL} END":
        raise ProbeParseError(src, "missing the CSPROBE1 END trailer (probe cut short?)")
    status: list[str] = []
    access: dict[str, AccessResult] = {}
    ops: dict[str, AccessResult] = {}
    sockets: dict[str, bool] = {}
    label: str | None = None
    for n, line in enumerate(lines[1:-1], start=2):
        if line.startswith("S\t"):
            status.append(line[2:])
            continue
        if line.startswith("L\t"):
            if label is not None or len(line) > 4096:
                raise ProbeParseError(src, f"line {n}: a second or oversized LSM label line")
            label = line[2:].rstrip("\0") or None
            continue
        m = _LINE.match(line)
        if not m:
            raise ProbeParseError(src, f"line {n} is malformed: {line[:120]!r}")
        kind, key, rc_s, message = m.groups()
        rc = int(rc_s)
        if kind == "A":
            if key not in expected_access or key in access:
                raise ProbeParseError(src, f"line {n}: unexpected access key {key!r}")
            access[key] = _result(kind, key, rc, message)
        elif kind == "O":
            if key not in OPERATIONS or key in ops:
                raise ProbeParseError(src, f"line {n}: unexpected operation {key!r}")
            ops[key] = _result(kind, key, rc, message)
        else:
            if key not in SOCKET_PATHS:
                raise ProbeParseError(src, f"line {n}: unexpected socket {key!r}")
            sockets[key] = rc == 0
    missing = [k for k in expected_access if k not in access]
    missing += [o for o in OPERATIONS if o not in ops]
    if missing:
        raise ProbeParseError(src, f"no result for {', '.join(missing)}")
    if not status:
        raise ProbeParseError(src, "no /proc/self/status lines")
    return ProbeOutput("\n".join(status) + "\n", access, ops, sockets, label)
