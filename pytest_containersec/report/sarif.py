"""SARIF 2.1.0 output: one result per failed check, one rule per registered check."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from .results import CheckResult

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TEST_RULE = "A containersec test failed"


def rules() -> dict[str, str]:
    """Rule per check of the registry (its ``rule`` line), plus ``test`` for a failed test
    that raised no check failure."""
    from ..checks.check_registry import all_checks

    return {**{n: c.rule for n, c in all_checks().items()}, "test": TEST_RULE}


RULES: dict[str, str] = rules()


def rule_id(family: str) -> str:
    """The SARIF ``ruleId`` of a check family: ``containersec/FAMILY``."""
    return f"containersec/{family}"


def _rule(name: str) -> dict[str, Any]:
    """One SARIF reportingDescriptor: the check's rule line, its docstring as help, and the
    profile controls (PSS, CIS) it observes as tags."""
    from ..checks.check_registry import get

    rule: dict[str, Any] = {
        "id": rule_id(name),
        "name": name,
        "shortDescription": {"text": RULES.get(name, f"containersec check {name}")},
        "defaultConfiguration": {"level": "error"},
    }
    try:
        spec = get(name)
    except KeyError:
        return rule
    if spec.help:
        rule["fullDescription"] = {"text": spec.help.split("\n\n")[0].replace("\n", " ")}
        rule["help"] = {"text": spec.help}
    controls = spec.controls()
    if controls:
        rule["properties"] = {"tags": controls}
    return rule


def build(results: Iterable[CheckResult], root: Path | None = None) -> dict[str, Any]:
    """The SARIF log (a dict ready for json.dump) for the failed results."""
    failed = [r for r in results if r.outcome in ("failed", "error")]
    families = sorted({r.family for r in failed} | set(RULES))
    descriptors = [_rule(f) for f in families]
    index = {f: i for i, f in enumerate(families)}
    sarif_results = []
    for r in failed:
        result: dict[str, Any] = {
            "ruleId": rule_id(r.family),
            "ruleIndex": index[r.family],
            "level": "error",
            "message": {"text": f"[{r.runtime}] {r.name}: {r.message or r.outcome}"},
            "properties": {"runtime": r.runtime, "check": r.name, "outcome": r.outcome},
        }
        if r.path:
            uri = r.path
            if root is not None:
                try:
                    uri = str(Path(r.path).resolve().relative_to(root.resolve()))
                except ValueError:
                    uri = Path(r.path).resolve().as_uri()
            location: dict[str, Any] = {"artifactLocation": {"uri": uri}}
            if r.line:
                location["region"] = {"startLine": r.line}
            result["locations"] = [{"physicalLocation": location}]
        sarif_results.append(result)
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "pytest-containersec",
                        "version": __version__,
                        "rules": descriptors,
                    }
                },
                "results": sarif_results,
            }
        ],
    }


def write(path: str | Path, results: Iterable[CheckResult], root: Path | None = None) -> None:
    """Write the SARIF log of ``results`` to ``path``; file locations are made relative to
    ``root`` when given (a file outside it gets a ``file://`` URI)."""
    Path(path).write_text(json.dumps(build(results, root), indent=2) + "\n")
