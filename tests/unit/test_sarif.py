"""SARIF output validates against the official OASIS 2.1.0 schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from pytest_containersec.report import sarif
from pytest_containersec.report.results import CheckResult

SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "sarif-schema-2.1.0.json").read_text())
RESULTS = [
    CheckResult(
        "capabilities",
        "capabilities",
        "docker",
        "failed",
        "expected {} observed {CAP_CHOWN}",
        "policies/app.yaml",
        12,
    ),
    CheckResult("seccomp[filter]", "seccomp", "nspawn", "passed", "", "policies/app.yaml", 13),
    CheckResult("test_x", "test", "podman", "error", "engine refused", "tests/test_x.py", None),
]


def test_valid_against_the_schema() -> None:
    log = sarif.build(RESULTS, root=Path.cwd())
    jsonschema.validate(log, SCHEMA)
    [run] = log["runs"]
    assert [r["ruleId"] for r in run["results"]] == [
        "containersec/capabilities",
        "containersec/test",
    ]
    first = run["results"][0]
    assert first["locations"][0]["physicalLocation"]["region"] == {"startLine": 12}
    assert first["properties"]["runtime"] == "docker"
    rules = run["tool"]["driver"]["rules"]
    assert rules[first["ruleIndex"]]["id"] == "containersec/capabilities"


def test_no_failures_is_a_valid_empty_log(tmp_path: Path) -> None:
    out = tmp_path / "x.sarif"
    sarif.write(out, [RESULTS[1]])
    log = json.loads(out.read_text())
    jsonschema.validate(log, SCHEMA)
    assert log["runs"][0]["results"] == []
