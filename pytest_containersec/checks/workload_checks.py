"""Pure checks of the workload's own escalation surface and identity: setuid files, file
capabilities, supplementary groups, shared namespaces, operations that must succeed.
(Facts) -> list of Violations; never raise on a finding."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from ..linux import caps
from ..model import Facts
from .check_params import Allow, Gids, Namespaces, Operation, PathPatterns
from .check_registry import check
from .verdict import Violation, caps_text


def _allowed(path: str, patterns: Iterable[str]) -> str | None:
    """The first pattern (a path or an fnmatch pattern) that ``path`` matches."""
    return next((p for p in patterns if path == p or fnmatch.fnmatchcase(path, p)), None)


def _scan_refused(f: Facts, check: str) -> list[Violation]:
    """No pass from a walk that did not happen or did not finish."""
    scan = f.surface_scan
    if f.setuid_files is None or f.file_capabilities is None or scan is None:
        return [Violation(check, f.runtime, "the file systems walked", "not scanned")]
    if not scan.complete:
        return [
            Violation(
                check, f.runtime, "the file systems walked in full",
                f"walk incomplete after {scan.entries} entries: {scan.reason}",
                "no verdict from a partial walk",
            )
        ]  # fmt: skip
    return []


@check("No setuid/setgid files beyond those allowed", legacy=("setuid",), form="mapping")
def no_setuid_binaries(f: Facts, allow: PathPatterns = ()) -> list[Violation]:
    """No setuid or setgid file the container could execute, except those allowed (paths
    or fnmatch patterns). Files on a nosuid mount do not count (the bits do nothing)."""
    patterns = tuple(allow)
    refused = _scan_refused(f, "no_setuid_binaries")
    if refused:
        return refused
    assert f.setuid_files is not None
    found = [s for s in f.setuid_files if not s.nosuid and _allowed(s.path, patterns) is None]
    if not found:
        return []
    shown = ", ".join(
        f"{s.path} ({'setuid' if s.setuid else ''}{'+' if s.setuid and s.setgid else ''}"
        f"{'setgid' if s.setgid else ''} {s.uid}:{s.gid} {s.mode:04o})"
        for s in found[:12]
    )
    more = f" and {len(found) - 12} more" if len(found) > 12 else ""
    hint = "remove the bits (chmod u-s,g-s) or run with no_new_privileges"
    if f.no_new_privs:
        hint = "no_new_privs is set, so exec ignores the bits; remove them from the image too"
    return [
        Violation("no_setuid_binaries", f.runtime, "no setuid/setgid files", shown + more, hint)
    ]


@check(
    "No files with capabilities beyond those allowed", legacy=("file_capabilities",),
    form="mapping",
)  # fmt: skip
def no_file_capabilities(f: Facts, allow: Allow = ()) -> list[Violation]:
    """No file with capabilities (security.capability), except those allowed: paths or
    fnmatch patterns, or a mapping of path -> the capabilities it may carry (at most)."""
    refused = _scan_refused(f, "no_file_capabilities")
    if refused:
        return refused
    assert f.file_capabilities is not None
    limits: dict[str, frozenset[str] | None]
    if isinstance(allow, Mapping):
        limits = {p: caps.normalize_set(v) for p, v in allow.items()}
    else:
        limits = dict.fromkeys(allow)
    bad = []
    for fc in f.file_capabilities:
        if fc.nosuid:
            continue
        pattern = _allowed(fc.path, limits)
        limit = limits.get(pattern) if pattern is not None else None
        granted = frozenset(fc.permitted) | frozenset(fc.inheritable)
        if pattern is not None and (limit is None or granted <= limit) and fc.version:
            continue
        what = "unparsed xattr" if not fc.version else caps_text(sorted(granted))
        eff = "+ep" if fc.effective else ""
        root = f" rootid {fc.rootid}" if fc.rootid is not None else ""
        bad.append(f"{fc.path} ({what}{eff}{root})")
    if not bad:
        return []
    return [
        Violation(
            "no_file_capabilities", f.runtime, "no files with capabilities", ", ".join(bad),
            "remove them (setcap -r) or drop the capabilities from the bounding set",
        )
    ]  # fmt: skip


@check("Escape-surface operations the workload needs must succeed",
       legacy=("operation", "access"))  # fmt: skip
def operation_allowed(f: Facts, name: Operation) -> list[Violation]:
    """The escape-surface operation succeeds (the workload needs it, e.g. mount_tmpfs)."""
    from .checks import probe_differs

    differs = probe_differs(f, "operation_allowed")
    if differs:
        return [differs]
    r = f.operations.get(name)
    if r is None:
        return [Violation("operation_allowed", f.runtime, f"{name} allowed", "not probed")]
    if not r.allowed:
        return [
            Violation("operation_allowed", f.runtime, f"{name} allowed", f"denied with {r.errno}")
        ]
    return []


@check("The supplementary groups must be as expected")
def groups(f: Facts, expected: Gids) -> list[Violation]:
    """The supplementary groups are exactly these gids (as the container sees them)."""
    want = sorted({int(g) for g in expected})
    got = sorted(set(f.user.groups))
    if want == got:
        return []
    return [Violation("groups", f.runtime, f"groups {want}", f"groups {got}")]


@check("Namespaces must be the host's as asked", legacy=("namespaces",))
def namespaces_host(f: Facts, names: Namespaces) -> list[Violation]:
    """These namespaces are the host's (``pid="host"``, ``network="host"``, ...)."""
    names = tuple(names)
    private = [n for n in names if f.namespaces.get(n) == "private"]
    unknown = [n for n in names if n not in f.namespaces]
    out = []
    if private:
        out.append(
            Violation(
                "namespaces_host", f.runtime, f"the host's {', '.join(names)}",
                f"private {', '.join(private)}",
            )
        )  # fmt: skip
    if unknown:
        out.append(
            Violation(
                "namespaces_host", f.runtime, f"the host's {', '.join(unknown)}", "not observed"
            )
        )
    return out


def exact_caps(f: Facts, name: str, expected: Iterable[str]) -> list[Violation]:
    """Capability set ``name`` (bounding, ambient, permitted, inheritable) is exactly this."""
    want = caps.normalize_set(expected)
    got = frozenset(getattr(f.capabilities, name))
    if want == got:
        return []
    return [
        Violation(
            "capabilities", f.runtime, f"{name} {caps_text(want)}",
            f"{name} {caps_text(got)} (extra {caps_text(got - want)}, "
            f"missing {caps_text(want - got)})",
        )
    ]  # fmt: skip
