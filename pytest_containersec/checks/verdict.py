"""A check's finding (Violation) and the text helpers its messages use."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..model import MapEntry
from .check_registry import CheckName


@dataclass(frozen=True)
class Violation:
    """One finding of a check: runtime, expected, observed and a hint.

    ``check`` is the registered check's name (``denied``, ``limits_set``, ...; ``test`` for
    a plain failed test); it also equals the check's former spellings (``access``,
    ``cgroup``, ...; see the changelog)."""

    check: str
    runtime: str
    expected: str
    observed: str
    hint: str = ""
    # True when the check could not be judged because the path is absent from this host's
    # kernel: not a failure of confinement, shown as such (a warning, a skip, a matrix note).
    absent: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "check", CheckName(self.check))

    def __str__(self) -> str:
        text = f"[{self.runtime}] {self.check}: expected {self.expected}, observed {self.observed}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


ABSENT = "absent on this kernel"


def split_absent(violations: Iterable[Violation]) -> tuple[list[Violation], list[Violation]]:
    """(findings, absent-path notes) of a check's result."""
    items = list(violations)
    return [v for v in items if not v.absent], [v for v in items if v.absent]


def caps_text(names: Iterable[str]) -> str:
    """Capability names as a sorted set for messages: ``{CAP_A, CAP_B}``, ``{} (none)`` when
    empty."""
    items = sorted(names)
    return "{" + ", ".join(items) + "}" if items else "{} (none)"


def fmt_map(entries: Iterable[MapEntry]) -> str:
    """Id map ranges for messages: ``[0-0->1000-1000, ...]`` (inside -> host), ``[] (unreadable)``
    when empty."""
    parts = [f"{a}-{a + c - 1}->{b}-{b + c - 1}" for a, b, c in entries]
    return "[" + ", ".join(parts) + "]" if parts else "[] (unreadable)"
