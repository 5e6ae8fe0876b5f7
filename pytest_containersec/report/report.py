"""The side-by-side matrix: rows are facts and checks, columns are runtimes, cells hold the
observed value and a verdict; declared-vs-observed mismatches are marked. Rendered as a
terminal table, Markdown, JSON or one self-contained HTML page (no external assets)."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..checks.checks import Violation, fmt_map
from ..checks.score import score
from ..checks.verdict import ABSENT
from ..model import Facts

MISMATCH_MARK = "≠"
# A matrix cell's verdict: a check passed, failed or was skipped; "info" for a fact.
CellVerdict = Literal["pass", "fail", "skip", "info"]


@dataclass(frozen=True)
class Cell:
    """One runtime's cell of a row: the shown value, its verdict, and the declared value when it
    differs."""

    value: str
    verdict: CellVerdict = "info"
    mismatch: str = ""  # what the engine declared, when it differs from the observed value


@dataclass(frozen=True)
class Row:
    """One fact, access result or check across the runtimes (a runtime without a cell shows
    ``-``)."""

    group: str  # "facts", "access", "checks", ...
    name: str
    cells: dict[str, Cell]


@dataclass
class Matrix:
    """One side-by-side table: rows of facts and checks, a column per runtime, and notes for the
    runtimes without facts."""

    title: str
    runtimes: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # runtime -> why it has no facts

    def to_dict(self) -> dict[str, Any]:
        """The matrix as JSON-able data, rows in order, cells as dicts."""
        return {
            "title": self.title,
            "runtimes": self.runtimes,
            "notes": self.notes,
            "rows": [
                {"group": r.group, "name": r.name,
                 "cells": {k: asdict(c) for k, c in r.cells.items()}}
                for r in self.rows
            ],
        }  # fmt: skip


def size_text(n: int | None) -> str:
    """A byte count in the largest of ``g``, ``m``, ``k`` that divides it exactly (``128m``);
    ``unlimited`` for None."""
    if n is None:
        return "unlimited"
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _caps(names: Iterable[str]) -> str:
    items = [n.removeprefix("CAP_") for n in names]
    if not items:
        return "none"
    return f"{len(items)}: " + ",".join(items) if len(items) <= 6 else f"{len(items)} caps"


FACT_ROWS: tuple[tuple[str, str, Callable[[Facts], str], str | None], ...] = (
    ("facts", "engine rootless", lambda f: str(f.engine_rootless).lower(), None),
    ("facts", "uid (inside -> host)", lambda f: f"{f.user.uid} -> {f.user.host_uid}", "user.uid"),
    ("facts", "uid_map", lambda f: fmt_map(f.uid_map), None),
    ("facts", "effective caps", lambda f: _caps(f.capabilities.effective), None),
    ("facts", "bounding caps", lambda f: _caps(f.capabilities.bounding), "capabilities.bounding"),
    ("facts", "seccomp", lambda f: f.seccomp, "seccomp"),
    ("facts", "no_new_privs", lambda f: str(f.no_new_privs).lower(), "no_new_privs"),
    ("facts", "LSM label", lambda f: f"{f.lsm.name}: {f.lsm.label}" if f.lsm.name else "none",
     None),
    ("facts", "memory limit", lambda f: size_text(f.cgroup.memory_max), "cgroup.memory_max"),
    ("facts", "pids limit", lambda f: str(f.cgroup.pids_max or "unlimited"), "cgroup.pids_max"),
    ("facts", "cpu limit", lambda f: "unlimited" if f.cgroup.cpu_max is None
     else f"{f.cgroup.cpu_max:g}", "cgroup.cpu_max"),
    ("facts", "cgroup version", lambda f: f"v{f.cgroup.version}", None),
    ("facts", "rootfs read-only", lambda f: str(f.rootfs_read_only).lower(), "rootfs_read_only"),
    ("facts", "host namespaces", lambda f: ",".join(k for k, v in sorted(f.namespaces.items())
                                                    if v == "host") or "none", None),
    ("facts", "engine sockets", lambda f: ",".join(f.engine_sockets) or "none", None),
    ("facts", "host root mounted at", lambda f: ",".join(f.host_root_mounts) or "no", None),
    ("facts", "masked kernel paths", lambda f: masked_text(f), None),
)  # fmt: skip


def masked_text(f: Facts) -> str:
    """``12 masked, 5 read-only, 6 absent; exposed: /proc/interrupts`` (or "-" if unknown)."""
    if not f.masked:
        return "-"
    states = [m.state for m in f.masked.values()]
    parts = [f"{states.count(s)} {label}" for s, label in
             (("masked", "masked"), ("readonly", "read-only"), ("absent", "absent"))
             if s in states]  # fmt: skip
    exposed = [p for p, m in f.masked.items() if m.state == "exposed"]
    return ", ".join(parts) + (f"; exposed: {', '.join(exposed)}" if exposed else "")


def from_facts(
    title: str,
    facts: Mapping[str, Facts],
    checks: Iterable[tuple[str, Mapping[str, list[Violation] | None]]] = (),
    notes: Mapping[str, str] | None = None,
) -> Matrix:
    """Build the matrix. ``checks``: (name, {runtime: violations, or None if skipped})."""
    runtimes = list(facts) + [r for r in (notes or {}) if r not in facts]
    m = Matrix(title, runtimes, notes=dict(notes or {}))
    for group, name, get, mismatch_field in FACT_ROWS:
        cells = {}
        for rt, f in facts.items():
            declared = ""
            if mismatch_field:
                for mm in f.mismatches:
                    if mm.field == mismatch_field and mm.source == "declared":
                        declared = f"declared {mm.expected!r}"
            cells[rt] = Cell(get(f), "info", declared)
        m.rows.append(Row(group, name, cells))
    keys = sorted({k for f in facts.values() for k in f.access})
    for key in keys:
        cells = {}
        for rt, f in facts.items():
            r = f.access.get(key)
            cells[rt] = Cell("allowed" if r and r.allowed else f"denied {r.errno}" if r else "-")
        m.rows.append(Row("access", key, cells))
    ops = sorted({k for f in facts.values() for k in f.operations})
    for op in ops:
        cells = {}
        for rt, f in facts.items():
            r = f.operations.get(op)
            cells[rt] = Cell("allowed" if r and r.allowed else f"denied {r.errno}" if r else "-")
        m.rows.append(Row("escape surface", op, cells))
    m.rows.append(Row("score", "exposure (0-10)", {rt: _score_cell(f) for rt, f in facts.items()}))
    m.rows += _systemd_analyze_rows(facts)
    for name, per_runtime in checks:
        cells = {}
        for rt, violations in per_runtime.items():
            if violations is None:
                cells[rt] = Cell("skipped", "skip")
            elif violations and all(v.absent for v in violations):
                cells[rt] = Cell(ABSENT, "skip")
            elif violations:
                cells[rt] = Cell("; ".join(v.observed for v in violations if not v.absent),
                                 "fail")  # fmt: skip
            else:
                cells[rt] = Cell("ok", "pass")
        m.rows.append(Row("checks", name, cells))
    return m


def _systemd_analyze_rows(facts: Mapping[str, Facts]) -> list[Row]:
    """systemd-analyze's declared exposure beside ours, and each setting whose declared
    verdict the observed facts contradict (only when a unit was observed)."""
    scores = {rt: f.declared.get("systemd_analyze") for rt, f in facts.items()}
    if not any(scores.values()):
        return []
    rows = [Row("score", "systemd-analyze exposure (declared)", {
        rt: Cell(f"{a.get('exposure')} {a.get('level') or ''}".strip() if a else "-")
        for rt, a in scores.items()})]  # fmt: skip
    names = sorted({m.field for f in facts.values() for m in f.mismatches
                    if m.source == "systemd-analyze"})  # fmt: skip
    for name in names:
        cells = {}
        for rt, f in facts.items():
            mm = [m for m in f.mismatches if m.source == "systemd-analyze" and m.field == name]
            declared = f"declared {mm[0].expected}" if mm else ""
            cells[rt] = Cell(mm[0].observed if mm else "-", "info", declared)
        rows.append(Row("systemd-analyze", name, cells))
    return rows


def _score_cell(f: Facts) -> Cell:
    s = score(f)
    return Cell(str(s), "fail" if s.value >= 7.5 else "info")


# -- renderers ------------------------------------------------------------------------


_MARK: dict[CellVerdict, str] = {"pass": "PASS ", "fail": "FAIL ", "skip": "SKIP ", "info": ""}


def _text(c: Cell | None) -> str:
    if c is None:
        return "-"
    return (
        f"{_MARK[c.verdict]}{c.value}{' ' + MISMATCH_MARK + ' ' + c.mismatch if c.mismatch else ''}"
    )


def to_text(m: Matrix, width: int | None = None) -> str:
    """The matrix as text lines of at most ``width`` columns (default: the terminal's):
    runtimes that do not fit go to further blocks, each repeating the row names; long
    values wrap, never cut off."""
    from .termtable import fit, terminal_width, wrap

    width = width or terminal_width()
    rows: list[list[str] | str] = []
    group = None
    for r in m.rows:
        if r.group != group:
            group = r.group
            rows.append(f"-- {group}")
        rows.append([r.name, *(_text(r.cells.get(rt)) for rt in m.runtimes)])
    lines = [m.title, *fit(["", *m.runtimes], rows, width)]
    for rt, note in m.notes.items():
        lines += wrap(f"{rt}: {note}", width, "    ")
    return "\n".join(lines)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(m: Matrix) -> str:
    """A Markdown section (``## TITLE``) with one table; verdicts are bold, a declared value
    that differs follows ``≠``, and each runtime's note goes below."""
    out = [f"## {m.title}", "", "| | " + " | ".join(m.runtimes) + " |",
           "|---|" + "---|" * len(m.runtimes)]  # fmt: skip
    for r in m.rows:
        cells = []
        for rt in m.runtimes:
            c = r.cells.get(rt)
            text = "-" if c is None else _md_escape(c.value)
            if c is not None and c.verdict in ("pass", "fail", "skip"):
                text = f"**{c.verdict.upper()}** {text}"
            if c is not None and c.mismatch:
                text += f" {MISMATCH_MARK} {_md_escape(c.mismatch)}"
            cells.append(text)
        out.append(f"| {r.group}: {_md_escape(r.name)} | " + " | ".join(cells) + " |")
    for rt, note in m.notes.items():
        out.append(f"\n*{rt}*: {_md_escape(note)}")
    return "\n".join(out) + "\n"


def to_json(m: Matrix | list[Matrix]) -> str:
    """One matrix, or a list of them, as indented JSON (rows and runtimes in their order)."""
    data = [x.to_dict() for x in m] if isinstance(m, list) else m.to_dict()
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


HTML_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b1f24;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
thead th{white-space:nowrap}td{max-width:28em;overflow-wrap:anywhere}
td.value{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
tr.differs th{border-left:3px solid #bf8700}
th{background:#f6f8fa}td.group{color:#57606a;font-size:.85em}
.pass{background:#dafbe1}.fail,.error{background:#ffebe9;font-weight:600}.skip{background:#fff8c5}
.mismatch{display:block;color:#9a6700;font-size:.85em}.note{color:#57606a}
"""


def to_html(
    matrices: list[Matrix], title: str = "pytest-containersec", intro_html: str = ""
) -> str:
    """One self-contained page; ``intro_html`` (already escaped) goes first."""
    e = html.escape
    head = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}"
        f"</title><style>{HTML_STYLE}</style></head><body><h1>{e(title)}</h1>"
    )
    parts = [head, intro_html]
    for m in matrices:
        parts.append(f"<h2>{e(m.title)}</h2><table><thead><tr><th></th><th>check / fact</th>")
        parts += [f"<th>{e(rt)}</th>" for rt in m.runtimes]
        parts.append("</tr></thead><tbody>")
        for r in m.rows:
            values = {c.value for c in r.cells.values()}
            differs = " class='differs'" if len(values) > 1 and r.group != "checks" else ""
            parts.append(f"<tr{differs}><td class='group'>{e(r.group)}</td><th>{e(r.name)}</th>")
            for rt in m.runtimes:
                c = r.cells.get(rt)
                if c is None:
                    parts.append("<td>-</td>")
                    continue
                label = f"{c.verdict.upper()} " if c.verdict in ("pass", "fail", "skip") else ""
                mm = (
                    f"<span class='mismatch'>{MISMATCH_MARK} {e(c.mismatch)}</span>"
                    if c.mismatch
                    else ""
                )
                cls = c.verdict if c.verdict != "info" else "value"
                title = f" title='{e(c.value)}'" if len(c.value) > 40 else ""
                parts.append(f"<td class='{e(cls)}'{title}>{e(label + c.value)}{mm}</td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
        for rt, note in m.notes.items():
            parts.append(f"<p class='note'><b>{e(rt)}</b>: {e(note)}</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
