"""``containersec check POLICY...``: a CI gate without pytest code (text, JUnit, SARIF, JSON)."""

from __future__ import annotations

import argparse
import json
import platform
import xml.etree.ElementTree as ET
from pathlib import Path

from ..checks.checks import Violation
from ..checks.verdict import ABSENT, split_absent
from ..errors import ImageNotFound
from ..policy import policy as policy_mod
from ..report import report, sarif
from ..report.results import CheckResult, Outcome
from . import runner

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def evaluate(
    pol: policy_mod.Policy, runtimes: list[str]
) -> tuple[list[CheckResult], report.Matrix, bool]:
    """Run the policy's spec on ``runtimes`` and judge every expectation on each;
    the flag says whether the image was missing somewhere (a usage error)."""
    observations = runner.observe(pol.spec, runtimes, pol.access_keys())
    missing_image = any(isinstance(o.error, ImageNotFound) for o in observations)
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
    return results, matrix, missing_image


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
    print or write the report in ``--format``, and return the exit status: 0 passed, 1 a finding
    or an error, 2 a policy error or a missing image, 3 nothing checked or (``--strict``) a
    runtime unavailable."""
    from ..errors import PolicyError

    try:
        policies = [policy_mod.load(p) for p in a.policy]
    except PolicyError as exc:
        print(f"containersec: policy error: {exc}")
        return EXIT_USAGE
    results: list[CheckResult] = []
    matrices: list[report.Matrix] = []
    missing_image = False
    for pol in policies:
        kube = pol.spec.origin is not None and pol.spec.origin.kind == "kube"
        chosen = runner.select(a.runtime or list(pol.runtimes) or None, kube)
        res, matrix, missing = evaluate(pol, chosen)
        results += res
        matrices.append(matrix)
        missing_image |= missing
    fmt = a.format
    if fmt == "junit":
        out = junit(results)
    elif fmt == "sarif":
        out = json.dumps(sarif.build(results, Path.cwd()), indent=2) + "\n"
    elif fmt == "json":
        data = {
            "results": [r.to_dict() for r in results],
            "matrices": [m.to_dict() for m in matrices],
        }
        out = json.dumps(data, indent=2) + "\n"
    else:
        out = "\n\n".join(report.to_text(m) for m in matrices) + "\n"
    if a.output:
        Path(a.output).write_text(out)
    else:
        print(out, end="")
    if missing_image:
        print("containersec check: an image is missing (usage error): build or import it")
        return EXIT_USAGE
    failed = [r for r in results if r.outcome in ("failed", "error")]
    skipped = [r for r in results if r.outcome == "skipped"]
    passed = len(results) - len(failed) - len(skipped)
    summary = f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped"
    print(f"containersec check: {summary}", flush=True)
    if failed:
        return EXIT_FAILED
    if a.strict and [r for r in skipped if ABSENT not in r.message]:
        print("containersec check: --strict: a runtime was unavailable")
        return EXIT_UNAVAILABLE
    if not passed:
        print("containersec check: nothing was checked (every runtime unavailable)")
        return EXIT_UNAVAILABLE
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``check`` subcommand and its options to ``sub``."""
    c = sub.add_parser("check", help="gate CI on policy files: exit 0 passed, 1 failed, "
                       "2 usage/policy error, 3 runtime unavailable (with --strict)")  # fmt: skip
    c.add_argument("policy", nargs="+")
    c.add_argument("--runtime", action="append", help="override the policy's runtimes")
    c.add_argument("--format", choices=["text", "junit", "sarif", "json"], default="text")
    c.add_argument("--output", "-o", help="write the report here instead of stdout")
    c.add_argument("--strict", action="store_true", help="an unavailable runtime fails (exit 3)")
