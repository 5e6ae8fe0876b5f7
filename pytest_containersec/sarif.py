"""SARIF 2.1.0 output: one result per failed check, one rule per check family."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import __version__
from .results import CheckResult

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
RULES: dict[str, str] = {
    "root_unprivileged": "Container root must not be host root",
    "uid_map": "The user-namespace map must be as expected",
    "user": "The process must run as the expected user",
    "access": "File access must be denied or allowed as expected",
    "operation": "Escape-surface operations must be denied",
    "capabilities": "Capabilities must be limited as expected",
    "seccomp": "A seccomp filter must be in effect",
    "no_new_privs": "no_new_privs must be set",
    "lsm": "An LSM label must confine the process",
    "cgroup": "Resource limits must be in effect",
    "read_only_rootfs": "The root file system must be read-only",
    "not_privileged": "The container must not run in privileged mode",
    "no_sensitive_mounts": "No host root, engine socket or sensitive folder may be mounted",
    "mismatch": "What the engine declares must be what is in effect",
    "namespaces": "Host namespaces must not be shared",
    "non_root": "The process must not run as root",
    "exposure": "The exposure score must stay under the limit",
    "masked": "Kernel paths the engines mask must be masked (absent on the host: not judged)",
    "readonly_path": "Kernel paths the engines make read-only must not be writable",
    "setuid": "No setuid/setgid files beyond those allowed",
    "file_capabilities": "No files with capabilities beyond those allowed",
    "groups": "The supplementary groups must be as expected",
    "test": "A containersec test failed",
}


def rule_id(family: str) -> str:
    return f"containersec/{family}"


def build(results: Iterable[CheckResult], root: Path | None = None) -> dict[str, Any]:
    """The SARIF log (a dict ready for json.dump) for the failed results."""
    failed = [r for r in results if r.outcome in ("failed", "error")]
    families = sorted({r.family for r in failed} | set(RULES))
    rules = [
        {
            "id": rule_id(f),
            "name": f,
            "shortDescription": {"text": RULES.get(f, f"containersec check {f}")},
            "defaultConfiguration": {"level": "error"},
        }
        for f in families
    ]
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
                        "rules": rules,
                    }
                },
                "results": sarif_results,
            }
        ],
    }


def write(path: str | Path, results: Iterable[CheckResult], root: Path | None = None) -> None:
    Path(path).write_text(json.dumps(build(results, root), indent=2) + "\n")
