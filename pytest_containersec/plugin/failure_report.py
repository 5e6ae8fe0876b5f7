"""The report sections of a failed container test: each container's logs (when it wrote
any) and its Facts in short. A failed check's own message already names expected,
observed and the fields it read; the whole Facts JSON is shown on demand
(``--containersec-keep`` other than ``never``, or ``-vv``) and written by
``--containersec-report FILE.json``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import Facts
    from .fixtures import ItemInfo

WHOLE_HINT = (
    "the whole Facts JSON: --containersec-keep=failed or -vv (here), "
    "--containersec-report=FILE.json (a file)"
)


def summary(facts: Facts) -> list[str]:
    """The facts rows of the side-by-side matrix for one runtime, one line each."""
    from ..report.report import FACT_ROWS

    return [f"{name}: {get(facts)}" for _, name, get, _ in FACT_ROWS]


def mismatch_lines(facts: Facts) -> list[str]:
    """Each declared-vs-observed (or inside-vs-host) difference, one line each."""
    return [
        f"mismatch ({m.source}) {m.field}: expected {m.expected!r}, observed {m.observed!r}"
        for m in facts.mismatches
    ]


def sections(info: ItemInfo, check_failed: bool, whole: bool) -> list[tuple[str, str]]:
    """Report sections of a failing test, per container it used: its logs (when there are
    any) and its Facts: the whole JSON when ``whole``, else the mismatches, the facts
    summary unless a check failed (its message has what it read), and where the whole
    JSON is."""
    out = []
    seen: set[int] = set()
    for entry in info.entries:
        c = entry.container
        if id(c) in seen:
            continue
        seen.add(id(c))
        try:
            logs = c.logs()
        except Exception as exc:
            logs = f"(logs unavailable: {type(exc).__name__}: {exc})"
        if logs.strip():
            out.append((f"containersec logs [{c.runtime}] {c.name}", logs))
        try:
            facts = c.facts()
        except Exception as exc:
            text = f"(facts unavailable: {type(exc).__name__}: {exc})"
        else:
            if whole:
                text = facts.to_json()
            else:
                lines = mismatch_lines(facts)
                if not check_failed:
                    lines = summary(facts) + lines
                text = "\n".join([*lines, WHOLE_HINT])
        out.append((f"containersec facts [{c.runtime}] {c.name}", text))
    return out
