"""Readable ``assert`` failures for the parts of Facts (``pytest_assertrepr_compare``).

Convention: the left operand is what was observed, the right one what is expected
(``assert facts.capabilities.effective == {"CAP_CHOWN"}``). Every explanation starts with
the runtime id in brackets when it is known.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..model import Capabilities, Cgroup, Facts

CAP_SETS = ("effective", "permitted", "inheritable", "ambient", "bounding")


def human_size(n: int | None) -> str:
    """67108864 -> ``64 MiB (67108864 bytes)``; None -> ``unlimited``."""
    if n is None:
        return "unlimited"
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            value = n / factor
            text = f"{value:.0f}" if n % factor == 0 else f"{value:.2f}".rstrip("0")
            return f"{text} {unit} ({n} bytes)"
    return f"{n} bytes"


def fmt_ranges(entries: Sequence[Sequence[int]]) -> str:
    """``[(0, 100000, 65536)]`` -> ``0-65535 -> 100000-165535 (65536 ids)``."""
    if not entries:
        return "(empty)"
    return ", ".join(
        f"{a}-{a + c - 1} -> {b}-{b + c - 1} ({c} id{'s' if c != 1 else ''})" for a, b, c in entries
    )


def _is_cap_collection(x: object) -> bool:
    return isinstance(x, set | frozenset | tuple | list) and all(
        isinstance(v, str) and v.startswith("CAP_") for v in x
    )


def _is_idmap(x: object) -> bool:
    return isinstance(x, tuple | list) and all(
        isinstance(e, tuple | list)
        and len(e) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in e)
        for e in x
    )


def _names(items: set[str]) -> str:
    return ", ".join(sorted(items)) if items else "(none)"


def cap_lines(left: set[str], right: set[str], label: str = "capabilities") -> list[str]:
    """What is missing (expected, not observed) and extra (observed, not expected)."""
    out = []
    if right - left:
        out.append(f"{label}: missing (expected, not observed): {_names(right - left)}")
    if left - right:
        out.append(f"{label}: extra (observed, not expected): {_names(left - right)}")
    return out


def cgroup_lines(left: Cgroup, right: Cgroup) -> list[str]:
    """One line per differing cgroup field, observed then expected (memory in binary units with
    the byte count)."""
    out = []
    for f in dataclasses.fields(Cgroup):
        a, b = getattr(left, f.name), getattr(right, f.name)
        if a == b:
            continue
        if f.name == "memory_max":
            out.append(f"cgroup.memory_max: observed {human_size(a)}, expected {human_size(b)}")
        else:
            na = "unlimited" if a is None else a
            nb = "unlimited" if b is None else b
            out.append(f"cgroup.{f.name}: observed {na}, expected {nb}")
    return out


def facts_lines(left: Facts, right: Facts) -> list[str]:
    """One line per differing field of two Facts; capabilities set by set, cgroup field by
    field, id maps as ranges."""
    out = []
    for f in dataclasses.fields(Facts):
        a, b = getattr(left, f.name), getattr(right, f.name)
        if a == b:
            continue
        if f.name == "capabilities":
            out += capabilities_lines(a, b)
        elif f.name == "cgroup":
            out += cgroup_lines(a, b)
        elif f.name in ("uid_map", "gid_map"):
            out += [f"{f.name}: observed {fmt_ranges(a)}", f"{f.name}: expected {fmt_ranges(b)}"]
        else:
            out.append(f"{f.name}: observed {a!r}, expected {b!r}")
    return out


def capabilities_lines(left: Capabilities, right: Capabilities) -> list[str]:
    """The missing and extra capabilities of each of the five sets that differ."""
    out = []
    for name in CAP_SETS:
        a, b = set(getattr(left, name)), set(getattr(right, name))
        if a != b:
            out += cap_lines(a, b, name)
    return out


def compare(op: str, left: object, right: object, runtime: str | None) -> list[str] | None:
    """The explanation lines, or None to let pytest explain."""
    body: list[str] | None = None
    title = ""
    if op == "==" and isinstance(left, Facts) and isinstance(right, Facts):
        runtime = runtime or left.runtime
        title, body = "Facts differ", facts_lines(left, right)
    elif op == "==" and isinstance(left, Capabilities) and isinstance(right, Capabilities):
        title, body = "capability sets differ", capabilities_lines(left, right)
    elif op == "==" and isinstance(left, Cgroup) and isinstance(right, Cgroup):
        title, body = "cgroup limits differ", cgroup_lines(left, right)
    elif op in ("==", "<=") and _is_cap_collection(left) and _is_cap_collection(right):
        a, b = set(left), set(right)  # type: ignore[call-overload]
        if op == "<=":
            title = "capabilities not within the allowed set"
            body = [f"capabilities: not allowed (observed): {_names(a - b)}"]
        else:
            title = "capability sets differ"
            body = cap_lines(a, b)
    elif op == "==" and _is_idmap(left) and _is_idmap(right) and (left or right):
        title = "id maps differ"
        body = [f"observed: {fmt_ranges(left)}", f"expected: {fmt_ranges(right)}"]  # type: ignore[arg-type]
    elif (
        op == "=="
        and type(left) is type(right)
        and dataclasses.is_dataclass(left)
        and type(left).__module__ == Facts.__module__
    ):
        title = f"{type(left).__name__} differs"
        body = [
            f"{f.name}: observed {getattr(left, f.name)!r}, expected {getattr(right, f.name)!r}"
            for f in dataclasses.fields(left)
            if getattr(left, f.name) != getattr(right, f.name)
        ]
    if body is None:
        return None
    prefix = f"[{runtime}] " if runtime else ""
    return [f"{prefix}{title}", *body]
