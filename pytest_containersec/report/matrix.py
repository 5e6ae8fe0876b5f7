"""The session's test x runtime outcome matrix: built from reports, shown and written.

Reports carry ``containersec_runtime``, ``containersec_test`` and ``containersec_engine``
attributes (set by the plugin when it makes them), so the matrix also fills on the
pytest-xdist controller, which never sees the items.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Literal

from ..runtimes import known_names
from .results import Outcome

# A test x runtime cell: a CheckResult's outcome, or pytest's xfail outcomes.
CellOutcome = Outcome | Literal["xfailed", "xpassed"]
SYMBOLS: dict[CellOutcome, str] = {
    "passed": "PASS",
    "failed": "FAIL",
    "error": "ERROR",
    "skipped": "SKIP",
    "xfailed": "XFAIL",
    "xpassed": "XPASS",
}
_RANK: dict[CellOutcome, int] = {
    "passed": 0,
    "skipped": 1,
    "xfailed": 1,
    "xpassed": 1,
    "failed": 2,
    "error": 3,
}


@dataclass
class Cell:
    """One test on one runtime: its outcome (a SYMBOLS key) and the skip reason, if any."""

    outcome: CellOutcome
    reason: str = ""


@dataclass
class Matrix:
    """The session's outcomes: one row per container test, one column per runtime (with its
    engine version), plus the containers kept for inspection and the host's kernel and cgroup
    version."""

    runtimes: dict[str, str] = field(default_factory=dict)  # name -> engine version
    rows: dict[str, dict[str, Cell]] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    host: dict[str, str] = field(default_factory=dict)  # kernel, cgroup

    # -- building --------------------------------------------------------------------

    def record(self, report: Any) -> None:
        """Fold one TestReport (setup, call or teardown) into the matrix."""
        self.kept += list(getattr(report, "containersec_kept", None) or ())
        runtime = getattr(report, "containersec_runtime", None)
        test = getattr(report, "containersec_test", None)
        if not runtime or not test:
            return
        engine = getattr(report, "containersec_engine", "") or ""
        if engine or runtime not in self.runtimes:
            self.runtimes[runtime] = engine or self.runtimes.get(runtime, "")
        outcome, reason = classify(report)
        if outcome is None:
            return
        row = self.rows.setdefault(test, {})
        old = row.get(runtime)
        if old is None or _RANK[outcome] > _RANK[old.outcome] or old.outcome == "passed":
            row[runtime] = Cell(outcome, reason)

    def skipped(self) -> list[tuple[str, str, str]]:
        """(test, runtime, reason) of every skipped container test run."""
        return [
            (test, rt, cell.reason)
            for test, row in self.rows.items()
            for rt, cell in row.items()
            if cell.outcome == "skipped"
        ]

    def columns(self) -> list[str]:
        """The runtimes to show, in the registry's order (names it does not know last, by name)."""
        seen: dict[str, None] = dict.fromkeys(self.runtimes)
        for row in self.rows.values():
            seen.update(dict.fromkeys(row))
        order = {name: i for i, name in enumerate(known_names())}
        return sorted(seen, key=lambda n: (order.get(n, len(order)), n))

    # -- rendering -------------------------------------------------------------------

    def _footnotes(self) -> tuple[dict[str, int], list[str]]:
        numbers: dict[str, int] = {}
        for row in self.rows.values():
            for cell in row.values():
                if cell.reason and cell.reason not in numbers:
                    numbers[cell.reason] = len(numbers) + 1
        return numbers, [f"[{n}] {reason}" for reason, n in numbers.items()]

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        cols = self.columns()
        numbers, notes = self._footnotes()
        body = []
        for test, row in self.rows.items():
            line = [test]
            for rt in cols:
                cell = row.get(rt)
                if cell is None:
                    line.append("-")
                    continue
                text = SYMBOLS[cell.outcome]
                if cell.reason:
                    text += f" [{numbers[cell.reason]}]"
                line.append(text)
            body.append(line)
        return ["test", *cols], body, notes

    def lines(self, width: int | None = None) -> list[str]:
        """The plain-text table for the terminal summary (one string per line), at most
        ``width`` columns wide (default: the terminal's): runtimes that do not fit go to
        further blocks, each repeating the test column."""
        if not self.rows:
            return []
        from .termtable import fit, terminal_width, wrap

        width = width or terminal_width()
        head, body, notes = self._table()
        out = fit(head, body, width, max_cell=width, max_label=0.6)
        for line in [*notes, self.runtimes_line()]:
            out += wrap(line, width, "    ")
        return out

    def runtimes_line(self) -> str:
        """``runtimes: NAME = VERSION; ...`` (``unavailable`` without a version), with the host
        facts."""
        parts = [f"{rt} = {self.runtimes.get(rt) or 'unavailable'}" for rt in self.columns()]
        host = ", ".join(f"{k} {v}" for k, v in self.host.items())
        return "runtimes: " + ("; ".join(parts) or "none") + (f" ({host})" if host else "")

    def to_dict(self) -> dict[str, Any]:
        """The matrix as JSON-able data: runtimes, host, one entry per test, kept containers."""
        return {
            "runtimes": dict(self.runtimes),
            "host": dict(self.host),
            "tests": [
                {
                    "test": test,
                    "results": {
                        rt: {"outcome": c.outcome, "reason": c.reason} for rt, c in row.items()
                    },
                }
                for test, row in self.rows.items()
            ],
            "kept": list(self.kept),
        }

    def to_markdown(self) -> str:
        """The matrix as a Markdown document: the table, its skip-reason footnotes and the kept
        containers."""
        head, body, notes = self._table()
        esc = [[c.replace("|", "\\|") for c in r] for r in [head, *body]]
        out = ["# containersec matrix", "", self.runtimes_line(), ""]
        out.append("| " + " | ".join(esc[0]) + " |")
        out.append("|" + "|".join("---" for _ in head) + "|")
        out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
        if notes:
            out += ["", *(f"- {n}" for n in notes)]
        if self.kept:
            out += ["", "## Kept containers", "", *(f"- {k}" for k in self.kept)]
        return "\n".join(out) + "\n"

    def html_fragment(self) -> str:
        """The matrix as an HTML section (escaped), for the session report page."""
        head, body, notes = self._table()
        e = html.escape
        rows = ["<tr>" + "".join(f"<th>{e(c)}</th>" for c in head) + "</tr>"]
        for r in body:
            cells = [f"<td>{e(r[0])}</td>"]
            for c in r[1:]:
                cls = c.split(" ")[0].lower()
                cells.append(f'<td class="{e(cls)}">{e(c)}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        items = "".join(f"<li>{e(n)}</li>" for n in [*notes, *self.kept])
        return (
            f"<h2>tests x runtimes</h2>\n<p>{e(self.runtimes_line())}</p>\n"
            f"<table>{''.join(rows)}</table>\n<ul>{items}</ul>\n"
        )


def classify(report: Any) -> tuple[CellOutcome | None, str]:
    """(outcome, skip reason) of one phase's report; None when it does not change a cell."""
    when = report.when
    if hasattr(report, "wasxfail"):
        return ("xfailed" if report.skipped else "xpassed"), ""
    if report.skipped:
        return "skipped", skip_reason(report.longrepr)
    if report.failed:
        return ("failed" if when == "call" else "error"), ""
    if when == "call":
        return "passed", ""
    return None, ""


def skip_reason(longrepr: Any) -> str:
    """The message of a skip's ``longrepr`` without pytest's ``Skipped: `` prefix."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr or "")
    return text.removeprefix("Skipped: ").strip()
