"""Policy files: YAML rules over Facts, validated against the check registry, and the JSON
Schema of their format (policy_schema.py; the packaged policy.schema.json)."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # ``pytest_containersec.policy.NAME`` still finds what policy.py defines, as before the
    # package had sub-modules.
    return getattr(importlib.import_module(".policy", __name__), name)
