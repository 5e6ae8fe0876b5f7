"""``containersec check POLICY...``: a CI gate without pytest code (text, JUnit, SARIF, JSON)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from ..checks.checks import Violation
from ..checks.verdict import split_absent
from ..errors import ImageNotFound
from ..policy import policy as policy_mod
from ..report import report, sarif
from ..report.results import CheckResult, Outcome
from . import runner

# 1 is for findings only; an error that stopped a verdict is 4 (README "Command line")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_ERROR = 0, 1, 2, 3, 4


def evaluate(
    pol: policy_mod.Policy, runtimes: list[str]
) -> tuple[list[CheckResult], report.Matrix, list[runner.Observation]]:
    """Run the policy's spec on ``runtimes`` and judge every expectation on each; the
    observations say what could not be judged and why (a missing image, an unavailable
    runtime, an error)."""
    observations = runner.observe(pol.spec, runtimes, pol.access_keys())
    results: list[CheckResult] = []
    per_check: dict[str, dict[str, list[Violation] | None]] = {}
    notes: dict[str, str] = {}
    for obs in observations:
        for exp in pol.expectations:
            cell = per_check.setdefault(exp.name, {})
            if obs.facts is None:
                outcome: Outcome = "skipped" if obs.unavailable else "error"
                results.append(CheckResult(exp.name, exp.family, obs.runtime, outcome,
                                           str(obs.error), pol.path, exp.line))  # fmt: skip
                cell[obs.runtime] = None
                continue
            violations = exp.evaluate(obs.facts)
            cell[obs.runtime] = violations
            findings, absent = split_absent(violations)
            outcome = "failed" if findings else "skipped" if absent else "passed"
            results.append(
                CheckResult(
                    exp.name,
                    str(violations[0].check) if violations else exp.family,
                    obs.runtime,
                    outcome,
                    "\n".join(str(v) for v in findings or absent),
                    pol.path,
                    exp.line,
                )
            )
        if obs.error is not None:
            notes[obs.runtime] = str(obs.error)
    facts = {o.runtime: o.facts for o in observations if o.facts is not None}
    matrix = report.from_facts(f"policy {pol.name} ({pol.spec.image})", facts,
                               per_check.items(), notes)  # fmt: skip
    return results, matrix, observations


def junit(results: list[CheckResult]) -> str:
    """The results as one JUnit XML ``testsuite``: a ``testcase`` per expectation and runtime
    (class name ``POLICYFILE.RUNTIME``), the kernel release as a property."""
    suite = ET.Element("testsuite", name="containersec", tests=str(len(results)))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="kernel", value=platform.release())
    counts = {"failed": 0, "error": 0, "skipped": 0}
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"{Path(r.path).stem}.{r.runtime}",
                             name=r.name, file=r.path, line=str(r.line or 0))  # fmt: skip
        cp = ET.SubElement(case, "properties")
        ET.SubElement(cp, "property", name="runtime", value=r.runtime)
        if r.outcome in counts:
            counts[r.outcome] += 1
        if r.outcome == "failed":
            ET.SubElement(case, "failure", message=r.message.split("\n")[0]).text = r.message
        elif r.outcome == "error":
            ET.SubElement(case, "error", message=r.message.split("\n")[0]).text = r.message
        elif r.outcome == "skipped":
            ET.SubElement(case, "skipped", message=r.message)
    suite.set("failures", str(counts["failed"]))
    suite.set("errors", str(counts["error"]))
    suite.set("skipped", str(counts["skipped"]))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def run(a: argparse.Namespace) -> int:
    """``containersec check``: judge every policy on its runtimes (``--runtime`` overrides),
    print or write the report in ``--format``, the summary and every error to stderr, and
    return the exit status: 0 passed, 1 a finding, 2 a policy error or a missing image, 4 an
    error stopped a verdict (a container that did not start, a crashed adapter), 3 nothing was
    judged (every result skipped) or (``--strict``) a runtime unavailable."""
    from ..errors import PolicyError

    try:
        policies = [policy_mod.load(p) for p in a.policy]
    except PolicyError as exc:
        print(f"containersec: policy error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results: list[CheckResult] = []
    matrices: list[report.Matrix] = []
    observations: list[runner.Observation] = []
    unavailable: set[tuple[str, str]] = set()  # (policy file, runtime)
    named = [n for item in a.runtime or [] for n in item.split(",") if n]
    for pol in policies:
        kube = pol.spec.origin is not None and pol.spec.origin.kind == "kube"
        chosen = runner.select(named or list(pol.runtimes) or None, kube)
        res, matrix, obs = evaluate(pol, chosen)
        results += res
        matrices.append(matrix)
        observations += obs
        unavailable |= {(pol.path, o.runtime) for o in obs if o.unavailable}
    out = _render(a.format, results, matrices)
    if a.output:
        Path(a.output).write_text(out)
    else:
        print(out, end="", flush=True)
    return _status(results, observations, unavailable, a.strict)


def _render(fmt: str, results: list[CheckResult], matrices: list[report.Matrix]) -> str:
    if fmt == "junit":
        return junit(results)
    if fmt == "sarif":
        return json.dumps(sarif.build(results, Path.cwd()), indent=2) + "\n"
    if fmt == "json":
        data = {
            "results": [r.to_dict() for r in results],
            "matrices": [m.to_dict() for m in matrices],
        }
        return json.dumps(data, indent=2) + "\n"
    return "\n\n".join(report.to_text(m) for m in matrices) + "\n"


def _status(
    results: list[CheckResult],
    observations: list[runner.Observation],
    unavailable: set[tuple[str, str]],
    strict: bool,
) -> int:
    def say(text: str) -> None:
        print(f"containersec check: {text}", file=sys.stderr, flush=True)

    for crash in runner.crashes(observations):
        print(crash.trace, end="", file=sys.stderr)
    missing = [o.error for o in observations if isinstance(o.error, ImageNotFound)]
    if missing:
        say(f"error: {missing[0]} (a usage error: build or import the image)")
        return EXIT_USAGE
    count = {k: sum(r.outcome == k for r in results) for k in ("passed", "failed", "error")}
    skipped = [r for r in results if r.outcome == "skipped"]
    off = sum((r.path, r.runtime) in unavailable for r in skipped)
    summary = f"{count['passed']} passed, {count['failed']} failed, {len(skipped)} skipped"
    say(summary + (f", {count['error']} error(s)" if count["error"] else ""))
    for o in observations:
        if o.error is not None and not o.unavailable:
            say(f"error: {o.error}")
    if count["failed"]:
        return EXIT_FAILED
    if count["error"]:
        say(f"{count['error']} check(s) not judged because of an error (not a finding)")
        return EXIT_ERROR
    if strict and off:
        say("--strict: a runtime was unavailable")
        return EXIT_UNAVAILABLE
    if not count["passed"]:
        say(f"nothing was judged: every result was skipped ({off} on an unavailable runtime, "
            f"{len(skipped) - off} absent on this kernel)")  # fmt: skip
        return EXIT_UNAVAILABLE
    return EXIT_OK
