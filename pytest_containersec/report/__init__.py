"""What a run tells people: the facts matrices, text tables, SARIF, exit codes."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # ``pytest_containersec.report.NAME`` still finds what report.py defines, as before the
    # package had sub-modules.
    return getattr(importlib.import_module(".report", __name__), name)
