"""Pure parsers of /proc/<pid> files, plus a thin, separate layer that reads them.

Every ``parse_*`` function takes the file's text and either returns a complete value or
raises :class:`ProbeParseError`; none guesses or returns a partial result. The ``read_*``
functions at the end are the only ones doing I/O; an unreadable file is also a
``ProbeParseError`` naming the file.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import ProbeParseError
from ..model import Capabilities, MapEntry, Mount, SeccompMode
from .caps import decode_mask

ID_LIMIT = 2**32  # uids, gids and id-map ranges are 32-bit
SECCOMP_MODES: dict[str, SeccompMode] = {"0": "disabled", "1": "strict", "2": "filter"}
LABEL_LSMS = ("selinux", "apparmor", "smack")  # the LSMs whose label is attr/current
_V = TypeVar("_V")
_INT = re.compile(r"(0|[1-9][0-9]*)\Z")
_OCTAL = re.compile(r"\\([0-7]{3})")


def lines(text: str) -> list[str]:
    """Split on newlines only (str.splitlines would also split on \\x1c, \\x85, ...)."""
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return parts


def words(text: str) -> list[str]:
    """Split on spaces and tabs only (the kernel's separators)."""
    return [w for w in re.split(r"[ \t]+", text) if w]


def _int(token: str, source: str, what: str, limit: int | None = None) -> int:
    """A non-negative decimal integer (no sign, no leading zeros, ASCII digits only)."""
    if not _INT.match(token):
        raise ProbeParseError(source, f"{what}: not a non-negative integer: {token!r}")
    value = int(token)
    if limit is not None and value >= limit:
        raise ProbeParseError(source, f"{what}: {value} is out of range (>= {limit})")
    return value


# -- /proc/<pid>/status ----------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """The security-relevant lines of /proc/<pid>/status."""

    uid: tuple[int, int, int, int]  # real, effective, saved, fs
    gid: tuple[int, int, int, int]
    groups: tuple[int, ...]
    cap_inheritable: tuple[str, ...]
    cap_permitted: tuple[str, ...]
    cap_effective: tuple[str, ...]
    cap_bounding: tuple[str, ...]
    cap_ambient: tuple[str, ...]
    seccomp: SeccompMode
    no_new_privs: bool
    nspid: tuple[int, ...]  # host pid first, then the pid in each nested pid namespace
    seccomp_filters: int | None = None  # Seccomp_filters (kernel >= 5.9); None when absent

    def capabilities(self) -> Capabilities:
        """The five ``Cap*`` sets as a model Capabilities (names, as Facts holds them)."""
        return Capabilities(
            effective=self.cap_effective,
            permitted=self.cap_permitted,
            bounding=self.cap_bounding,
            ambient=self.cap_ambient,
            inheritable=self.cap_inheritable,
        )


_STATUS_KEYS = (
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
    "Seccomp", "NoNewPrivs", "NSpid",
)  # fmt: skip


def parse_status(text: str, source: str = "/proc/<pid>/status") -> Status:
    """Parse /proc/<pid>/status; every line in ``_STATUS_KEYS`` is required, once."""
    fields: dict[str, str] = {}
    for n, line in enumerate(lines(text), 1):
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip():
            raise ProbeParseError(source, f"line {n} is not 'Key:<TAB>value': {line!r}")
        if key in _STATUS_KEYS or key == "Seccomp_filters":
            if key in fields:
                raise ProbeParseError(source, f"line {n}: duplicate {key!r}")
            fields[key] = value
    missing = [k for k in _STATUS_KEYS if k not in fields]
    if missing:
        raise ProbeParseError(source, f"missing line(s): {', '.join(missing)}")

    def ids(key: str) -> tuple[int, int, int, int]:
        parts = words(fields[key])
        if len(parts) != 4:
            raise ProbeParseError(source, f"{key}: expected 4 ids, got {fields[key]!r}")
        a, b, c, d = (_int(p, source, key, ID_LIMIT) for p in parts)
        return a, b, c, d

    def caps(key: str) -> tuple[str, ...]:
        return decode_mask(fields[key], f"{source} {key}")

    def flag(key: str, table: dict[str, _V]) -> _V:
        value = fields[key].strip(" \t")
        if value not in table:
            raise ProbeParseError(source, f"{key}: unexpected value {value!r}")
        return table[value]

    nspid = tuple(_int(p, source, "NSpid") for p in words(fields["NSpid"]))
    if not nspid or 0 in nspid:
        raise ProbeParseError(source, f"NSpid: expected positive pids, got {fields['NSpid']!r}")
    return Status(
        uid=ids("Uid"),
        gid=ids("Gid"),
        groups=tuple(_int(p, source, "Groups", ID_LIMIT) for p in words(fields["Groups"])),
        cap_inheritable=caps("CapInh"),
        cap_permitted=caps("CapPrm"),
        cap_effective=caps("CapEff"),
        cap_bounding=caps("CapBnd"),
        cap_ambient=caps("CapAmb"),
        seccomp=flag("Seccomp", SECCOMP_MODES),
        no_new_privs=flag("NoNewPrivs", {"0": "0", "1": "1"}) == "1",
        nspid=nspid,
        seccomp_filters=(
            _int(fields["Seccomp_filters"].strip(" \t"), source, "Seccomp_filters")
            if "Seccomp_filters" in fields
            else None
        ),
    )


# -- /proc/<pid>/uid_map, gid_map --------------------------------------------------------


def parse_id_map(text: str, source: str = "/proc/<pid>/uid_map") -> tuple[MapEntry, ...]:
    """Parse uid_map/gid_map into ``(inside, outside, count)`` triples.

    Counts must be positive, no range may pass 2**32 and no two ranges may overlap on
    either side (the kernel refuses such maps, so seeing one means we misread the file).
    An empty file (no map written yet) is the empty tuple.
    """
    entries: list[MapEntry] = []
    for n, line in enumerate(lines(text), 1):
        parts = words(line)
        if len(parts) != 3:
            raise ProbeParseError(source, f"line {n}: expected 3 numbers, got {line!r}")
        inside, outside, count = (_int(p, source, f"line {n}", ID_LIMIT) for p in parts)
        if count == 0:
            raise ProbeParseError(source, f"line {n}: count is 0")
        if inside + count > ID_LIMIT or outside + count > ID_LIMIT:
            raise ProbeParseError(source, f"line {n}: range passes 2**32: {line.strip()!r}")
        for side, start in ((0, inside), (1, outside)):
            for other in entries:
                if start < other[side] + other[2] and other[side] < start + count:
                    name = ("inside", "outside")[side]
                    raise ProbeParseError(source, f"line {n}: {name} range overlaps {other}")
        entries.append((inside, outside, count))
    return tuple(entries)


# -- /proc/<pid>/mountinfo ---------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo (see proc(5)), octal escapes decoded."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # path inside the source file system that is mounted here
    mountpoint: str
    options: tuple[str, ...]  # per-mount options ("ro", "nosuid", ...)
    optional_fields: tuple[str, ...]  # "shared:1", "master:3", ...
    fstype: str
    source: str
    super_options: tuple[str, ...]  # per-superblock options ("rw,memory", ...)


def unescape(field: str, source: str = "mountinfo") -> str:
    """Decode the kernel's ``\\ooo`` escapes (space, tab, newline, backslash, ...)."""
    if "\\" not in field:
        return field
    if "\\" in _OCTAL.sub("", field):
        raise ProbeParseError(source, f"stray backslash in {field!r}")
    out = bytearray()
    pos = 0
    try:
        for m in _OCTAL.finditer(field):
            value = int(m.group(1), 8)
            if value > 0xFF:
                raise ProbeParseError(source, f"bad octal escape {m.group(0)!r} in {field!r}")
            out += field[pos : m.start()].encode("utf-8", "surrogateescape")
            out.append(value)
            pos = m.end()
        out += field[pos:].encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise ProbeParseError(source, f"not a kernel-escaped path: {field!r}") from e
    return out.decode("utf-8", "surrogateescape")


def _mountinfo_line(line: str, n: int, source: str) -> MountInfo:
    parts = line.split(" ")
    try:
        sep = parts.index("-", 6)
    except ValueError:
        raise ProbeParseError(source, f"line {n}: no ' - ' separator: {line!r}") from None
    if len(parts) - sep != 4:
        raise ProbeParseError(source, f"line {n}: expected fstype, source, options after '-'")
    major, colon, minor = parts[2].partition(":")
    if not colon:
        raise ProbeParseError(source, f"line {n}: bad major:minor {parts[2]!r}")
    root, mountpoint, fstype = (unescape(p, source) for p in (parts[3], parts[4], parts[sep + 1]))
    if not root or not mountpoint.startswith("/") or not fstype:
        raise ProbeParseError(source, f"line {n}: empty root, fstype or relative mount point")
    if not parts[5] or not parts[sep + 3]:
        raise ProbeParseError(source, f"line {n}: empty mount options")
    if any(not f for f in parts[6:sep]):
        raise ProbeParseError(source, f"line {n}: empty optional field")
    return MountInfo(
        mount_id=_int(parts[0], source, f"line {n} mount id"),
        parent_id=_int(parts[1], source, f"line {n} parent id"),
        major=_int(major, source, f"line {n} major"),
        minor=_int(minor, source, f"line {n} minor"),
        root=root,
        mountpoint=mountpoint,
        options=tuple(unescape(o, source) for o in parts[5].split(",")),
        optional_fields=tuple(parts[6:sep]),
        fstype=fstype,
        source=unescape(parts[sep + 2], source),
        super_options=tuple(unescape(o, source) for o in parts[sep + 3].split(",")),
    )


def parse_mountinfo(text: str, source: str = "/proc/<pid>/mountinfo") -> tuple[MountInfo, ...]:
    """Parse every line of a mountinfo file (an empty file is an error: / is always there)."""
    rows = lines(text)
    if not rows:
        raise ProbeParseError(source, "empty: a process always has a root mount")
    return tuple(_mountinfo_line(line, n, source) for n, line in enumerate(rows, 1))


def to_mount(mi: MountInfo) -> Mount:
    """The public :class:`model.Mount` of a mountinfo line. Read-only when the mount or its
    file system (a read-only superblock, e.g. squashfs) is."""
    return Mount(
        mountpoint=mi.mountpoint,
        fstype=mi.fstype,
        source=mi.source,
        root=mi.root,
        read_only="ro" in mi.options or "ro" in mi.super_options,
        options=mi.options,
    )


# -- /proc/<pid>/cgroup --------------------------------------------------------------------


def parse_proc_cgroup(text: str, source: str = "/proc/<pid>/cgroup") -> dict[str, str]:
    """Map controller -> cgroup path.

    v1 lines give one entry per controller (``5:cpu,cpuacct:/x`` -> cpu and cpuacct);
    named hierarchies keep their name (``name=systemd``); the v2 line ``0::/path`` is
    stored under ``""``.
    """
    out: dict[str, str] = {}
    for n, line in enumerate(lines(text), 1):
        hier, c1, rest = line.partition(":")
        controllers, c2, path = rest.partition(":")
        if not c1 or not c2:
            raise ProbeParseError(source, f"line {n}: expected 'id:controllers:path': {line!r}")
        hier_id = _int(hier, source, f"line {n} hierarchy id")
        if not path.startswith("/"):
            raise ProbeParseError(source, f"line {n}: path is not absolute: {path!r}")
        if (hier_id == 0) != (controllers == ""):
            raise ProbeParseError(source, f"line {n}: only hierarchy 0 (v2) has no controllers")
        names = controllers.split(",") if controllers else [""]
        for name in names:
            if name in out or (controllers and not name):
                raise ProbeParseError(source, f"line {n}: duplicate or empty controller")
            out[name] = path
    if not out:
        raise ProbeParseError(source, "empty: a process is always in some cgroup")
    return out


# -- /proc/<pid>/attr/current and the host's LSM -----------------------------------------


def parse_attr_current(text: str, source: str = "/proc/<pid>/attr/current") -> str | None:
    """The LSM label (``unconfined`` is a label too); empty -> None."""
    label = text.rstrip("\n\0")
    if any(c in label for c in "\n\0"):
        raise ProbeParseError(source, f"more than one label: {text!r}")
    if label != label.strip():
        raise ProbeParseError(source, f"label has surrounding whitespace: {text!r}")
    return label or None


def parse_lsm_list(text: str, source: str = "/sys/kernel/security/lsm") -> tuple[str, ...]:
    """The active LSMs, in order (``lockdown,capability,yama,apparmor``)."""
    names = tuple(text.strip().split(",")) if text.strip() else ()
    if any(not re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names):
        raise ProbeParseError(source, f"not a comma-separated list of LSM names: {text!r}")
    return names


def label_lsm(names: tuple[str, ...]) -> str | None:
    """The first active LSM whose label /proc/<pid>/attr/current shows, or None."""
    return next((n for n in names if n in LABEL_LSMS), None)


def read_host_lsm(root: Path = Path("/")) -> str | None:
    """The host's labelling LSM: /sys/kernel/security/lsm, else the apparmor/selinux signs."""
    lsm_file = root / "sys/kernel/security/lsm"
    try:
        return label_lsm(parse_lsm_list(lsm_file.read_text(), str(lsm_file)))
    except FileNotFoundError:
        pass  # securityfs not mounted: fall back to the per-LSM markers
    except OSError as e:
        raise ProbeParseError(str(lsm_file), f"unreadable: {e.strerror}") from e
    try:
        enabled = (root / "sys/module/apparmor/parameters/enabled").read_text().strip()
    except OSError:
        enabled = ""
    if enabled == "Y":
        return "apparmor"
    if (root / "sys/fs/selinux/enforce").exists():
        return "selinux"
    return None


# -- thin I/O layer ------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise ProbeParseError(str(path), f"unreadable: {e.strerror or e}") from e


def read_status(pid: int, proc_root: Path = Path("/proc")) -> Status:
    """Parse /proc/<pid>/status; ProbeParseError when unreadable (the process is gone) or
    malformed."""
    path = proc_root / str(pid) / "status"
    return parse_status(_read(path), str(path))


def read_uid_map(pid: int, proc_root: Path = Path("/proc")) -> tuple[MapEntry, ...]:
    """Parse /proc/<pid>/uid_map as seen from this process's user namespace; ProbeParseError
    when unreadable."""
    path = proc_root / str(pid) / "uid_map"
    return parse_id_map(_read(path), str(path))


def read_gid_map(pid: int, proc_root: Path = Path("/proc")) -> tuple[MapEntry, ...]:
    """Parse /proc/<pid>/gid_map as seen from this process's user namespace; ProbeParseError
    when unreadable."""
    path = proc_root / str(pid) / "gid_map"
    return parse_id_map(_read(path), str(path))


def read_mountinfo(pid: int | str, proc_root: Path = Path("/proc")) -> tuple[MountInfo, ...]:
    """Parse /proc/<pid>/mountinfo (``pid`` may be ``"self"``); ProbeParseError when unreadable."""
    path = proc_root / str(pid) / "mountinfo"
    return parse_mountinfo(_read(path), str(path))


def read_proc_cgroup(pid: int, proc_root: Path = Path("/proc")) -> dict[str, str]:
    """Controller -> cgroup path of ``pid`` (see ``parse_proc_cgroup``); ProbeParseError when
    unreadable."""
    path = proc_root / str(pid) / "cgroup"
    return parse_proc_cgroup(_read(path), str(path))


def read_attr_current(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The label, or None when no labelling LSM is active (the kernel answers EINVAL)."""
    path = proc_root / str(pid) / "attr" / "current"
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise ProbeParseError(str(path), f"unreadable: {e.strerror or e}") from e
    return parse_attr_current(text, str(path))
