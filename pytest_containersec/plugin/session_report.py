"""What a session observed, gathered from test reports (so it works on the xdist
controller too): Facts per container spec and runtime, check results, exposure scores.
Feeds the facts matrices, the report files, SARIF and ``--containersec-max-exposure``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks.checks import Violation
from ..report.results import CheckResult, Outcome

if TYPE_CHECKING:
    from ..model import Facts
    from ..report.matrix import Matrix as TestMatrix
    from ..report.report import Matrix
    from ..spec import ContainerSpec
    from .fixtures import ItemInfo

MAX_TERMINAL_MATRICES = 3


def spec_title(spec: ContainerSpec) -> str:
    """``containersec/probe user=1000 cap_drop=ALL memory=64m``: a spec in one line."""
    from ..report.report import size_text

    parts = [spec.image]
    for name, value in spec.non_default_fields().items():
        if name == "image":
            continue
        if name == "memory":
            value = size_text(value)
        if isinstance(value, tuple):
            value = ",".join(str(v) if not isinstance(v, tuple) else "=".join(v) for v in value)
        parts.append(f"{name}={value}")
    return " ".join(parts)


def facts_payload(info: ItemInfo, snapshot: bool) -> list[dict[str, Any]]:
    """The Facts of the containers a test used (taken now if ``snapshot``), JSON-able."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for entry in info.entries:
        c = entry.container
        if id(c) in seen:
            continue
        seen.add(id(c))
        facts = c._facts_cache
        if facts is None and snapshot:
            try:
                facts = c.facts()
            except Exception as exc:  # a container that died: the test reports it
                out.append({"title": spec_title(c.spec), "runtime": c.runtime, "error": str(exc)})
                continue
        if facts is not None:
            out.append({"title": spec_title(c.spec), "runtime": c.runtime,
                        "facts": entry.facts_dict(facts)})  # fmt: skip
    return out


def _failure_text(report: Any) -> str:
    """A failed test's message: pytest's one-line crash message (``AssertionError: assert
    False``) first, then the end of the traceback."""
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "")
    tail = str(report.longreprtext)[-2000:]
    first = str(crash).split("\n", 1)[0].strip()
    return f"{first}\n{tail}" if first else tail


@dataclass
class SessionResults:
    """What the session's reports carried, by container spec title: the Facts on each runtime,
    the tests that used the spec, and each (test, runtime)'s outcome."""

    facts: dict[str, dict[str, Facts]] = field(default_factory=dict)  # title -> runtime -> Facts
    tests: dict[str, dict[str, str]] = field(default_factory=dict)  # title -> test -> ""
    results: dict[tuple[str, str], CheckResult] = field(default_factory=dict)
    # the last Facts dict read per (title, runtime): every test of a container carries the
    # same snapshot, read once
    _raw: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def record(self, report: Any) -> None:
        """Fold one report in: the Facts it carries, and its outcome; a failure, error or skip
        of a later phase replaces a pass, otherwise the first outcome stays."""
        from ..model import Facts

        runtime = getattr(report, "containersec_runtime", None)
        test = getattr(report, "containersec_test", None)
        if not runtime or not test:
            return
        for item in getattr(report, "containersec_facts", None) or ():
            if "facts" in item:
                key, raw = (item["title"], item["runtime"]), item["facts"]
                old_raw = self._raw.get(key)
                if old_raw is None or (old_raw is not raw and old_raw != raw):
                    self._raw[key] = raw
                    self.facts.setdefault(key[0], {})[key[1]] = Facts.from_dict(raw)
            self.tests.setdefault(item["title"], {})[test] = ""
        result = self._result(report, runtime, test)
        if result is not None:
            key = (test, runtime)
            old = self.results.get(key)
            if old is None or old.outcome == "passed":
                self.results[key] = result

    @staticmethod
    def _result(report: Any, runtime: str, test: str) -> CheckResult | None:
        if report.when == "call" or not report.passed:
            if report.passed and report.when != "call":
                return None
            outcome: Outcome = "passed" if report.passed else "skipped" if report.skipped else (
                "failed" if report.when == "call" else "error")  # fmt: skip
            violations = getattr(report, "containersec_violations", None) or []
            family = violations[0][0] if violations else "test"
            observed = "; ".join(v[2] for v in violations if len(v) > 2)
            message = "\n".join(v[1] for v in violations) or (
                "" if report.passed else _failure_text(report))  # fmt: skip
            path, line, _ = report.location
            return CheckResult(test, family, runtime, outcome, message, path,
                               (line + 1) if line is not None else None, observed)  # fmt: skip
        return None

    # -- outputs ------------------------------------------------------------------------

    def notable(self, title: str) -> bool:
        """A test of this container spec failed (or errored) on some runtime, or some
        runtime's Facts show a mismatch (declared, asked for or seen inside vs observed)."""
        per_runtime = self.facts.get(title, {})
        if any(f.mismatches for f in per_runtime.values()):
            return True
        return any(
            r.outcome in ("failed", "error")
            for test in self.tests.get(title, {})
            for rt in per_runtime
            if (r := self.results.get((test, rt))) is not None
        )

    def matrices(self, tests: TestMatrix | None = None, notable_only: bool = False) -> list[Matrix]:
        """One side-by-side facts matrix per container spec, with the outcomes of the tests
        that used it as check rows (``notable_only``: of the :meth:`notable` specs)."""
        from ..report import report

        out = []
        for title, per_runtime in self.facts.items():
            if notable_only and not self.notable(title):
                continue
            rows: list[tuple[str, dict[str, list[Violation] | None]]] = []
            for test in self.tests.get(title, {}):
                cells: dict[str, list[Violation] | None] = {}
                for rt in per_runtime:
                    r = self.results.get((test, rt))
                    if r is None:
                        continue
                    if r.outcome == "skipped":
                        cells[rt] = None
                    elif r.outcome in ("failed", "error"):
                        first = r.observed or r.message.split("\n")[0] or r.outcome
                        cells[rt] = [Violation(r.family, rt, "pass", first)]
                    else:
                        cells[rt] = []
                rows.append((test.split("::", 1)[-1], cells))  # the file is in the title
            files = sorted({t.split("::", 1)[0] for t in self.tests.get(title, {})})
            out.append(report.from_facts(f"{title} ({', '.join(files)})", per_runtime, rows))
        return out

    def over_exposure(self, limit: float) -> list[str]:
        """A line for each spec and runtime whose exposure score is above ``limit`` (equal
        passes)."""
        from ..checks.score import score

        found = []
        for title, per_runtime in self.facts.items():
            for rt, f in per_runtime.items():
                s = score(f)
                if s.value > limit:
                    why = f" ({s.reason})" if s.reason else ""
                    found.append(f"[{rt}] {title}: exposure {s}{why} > {limit:g}")
        return found

    def check_results(self) -> list[CheckResult]:
        """One result per test and runtime (the outcome that decided it), for SARIF."""
        return list(self.results.values())


def write(
    path: Path,
    tests: TestMatrix | None,
    matrices: list[Matrix],
    facts: Mapping[str, Mapping[str, Facts]] | None = None,
) -> None:
    """The session report: the test x runtime matrix and the facts matrices; as JSON also
    the whole Facts of each container spec (title) on each runtime."""
    from ..report import report

    suffix = path.suffix.lower()
    if suffix == ".json":
        data = {"tests": tests.to_dict() if tests else None,
                "containers": [m.to_dict() for m in matrices],
                "facts": [{"title": title, "runtime": rt, "facts": f.to_dict()}
                          for title, per_runtime in (facts or {}).items()
                          for rt, f in per_runtime.items()]}  # fmt: skip
        text = json.dumps(data, indent=2) + "\n"
    elif suffix == ".md":
        text = (tests.to_markdown() if tests else "# containersec\n") + "\n" + "\n".join(
            report.to_markdown(m) for m in matrices)  # fmt: skip
    else:
        intro = tests.html_fragment() if tests else ""
        text = report.to_html(matrices, title="pytest-containersec", intro_html=intro)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
