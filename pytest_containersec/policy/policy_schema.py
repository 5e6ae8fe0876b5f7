"""The JSON Schema of the policy file format, computed from the check registry (each
check's value), the runtime registry, the spec fields, the profiles and the deployment
file keys. ``containersec schema`` prints it; ``policy.schema.json`` beside this module is
the same schema for the built-in runtimes (a unit test keeps it equal; regenerate it with
``python -m pytest_containersec.policy.policy_schema``).

Editors validate and complete policy files with it: the YAML language server reads a
``# yaml-language-server: $schema=PATH`` first line. The loader (``policy.load``) stays
the authority: it also checks what a schema cannot (capability names, sizes, files)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGED = Path(__file__).parents[1] / "policy.schema.json"
DRAFT = "http://json-schema.org/draft-07/schema#"


def policy_schema(runtimes: Iterable[str] | None = None) -> dict[str, Any]:
    """The schema; ``runtimes``: the names ``runtimes:`` may hold (default: every name
    of the runtime registry, installed packages' included)."""
    from .. import sources
    from ..checks import profiles
    from ..checks.check_registry import all_checks
    from ..spec import SPEC_FIELDS

    if runtimes is None:
        from ..runtimes import known_names

        runtimes = known_names()
    checks = all_checks()
    profile_names = list(profiles.PROFILES)
    text = {"type": "string"}
    file_keys = {
        "compose": "a compose file (relative to the policy file), with service",
        "service": "the compose service to run",
        "kube": "a Kubernetes manifest (relative to the policy file), with container",
        "container": "the manifest's container to run (may be left out when it has one)",
        "quadlet": "a Podman quadlet .container file (relative to the policy file)",
        "unit": "a systemd unit file (relative to the policy file), for systemd-run",
    }
    return {
        "$schema": DRAFT,
        "title": "pytest-containersec policy file",
        "description": "A container spec and the checks its observed confinement must pass "
        "on each runtime (`containersec check POLICY`, or collected by pytest).",
        "type": "object",
        "properties": {
            "name": {**text, "description": "the policy's name (default: the file's stem)"},
            "image": {**text, "description": "the image to run (built locally; never pulled)"},
            **{k: {**text, "description": file_keys.get(k, k)} for k in sources.ALL_KEYS},
            "runtimes": {
                "description": "runtimes to run on (default: every selected one)",
                "type": "array",
                "items": {"type": "string", "enum": list(runtimes)},
            },
            "spec": {
                "description": "ContainerSpec fields (the marker's), validated by the loader",
                "type": "object",
                "properties": {
                    f: {"description": f"ContainerSpec.{f}"} for f in SPEC_FIELDS if f != "image"
                },
                "additionalProperties": False,
            },
            "profile": {
                "description": "named profiles whose controls are checked too",
                "anyOf": [
                    {"type": "string", "enum": profile_names},
                    {"type": "array", "items": {"type": "string", "enum": profile_names}},
                ],
            },
            "expect": {
                "description": "checks, each an entry of one key: the check and its value",
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {name: checks[name].schema() for name in sorted(checks)},
                    "additionalProperties": False,
                    "minProperties": 1,
                    "maxProperties": 1,
                },
            },
        },
        "additionalProperties": False,
        "allOf": [
            {"anyOf": [{"required": [k]} for k in ("image", *sources.SOURCE_KEYS)]},
            {"anyOf": [{"required": ["expect"]}, {"required": ["profile"]}]},
        ],
    }


def dumps(schema: dict[str, Any]) -> str:
    """The schema as the packaged file holds it."""
    return json.dumps(schema, indent=2) + "\n"


def packaged_text() -> str:
    """What ``policy.schema.json`` must hold: the schema for the built-in runtimes."""
    from ..runtimes import KNOWN_NAMES

    return dumps(policy_schema(KNOWN_NAMES))


if __name__ == "__main__":  # regenerate the packaged file
    PACKAGED.write_text(packaged_text())
    sys.stdout.write(f"wrote {PACKAGED}\n")
