"""Pure verdicts over Facts: each check declared once (check_registry), its parameters
(check_params), the checks themselves, the named profiles and the exposure score."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # ``pytest_containersec.checks.NAME`` still finds what checks.py defines, as before the
    # package had sub-modules.
    return getattr(importlib.import_module(".checks", __name__), name)
