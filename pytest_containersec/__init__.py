"""pytest-containersec: prove what container confinement is really in effect.

Names are imported lazily, so that loading the pytest plugin costs nothing in a session
without container tests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import (
        ContainerSecError,
        ContainerStartError,
        ExecTimeout,
        ImageNotFound,
        PolicyError,
        ProbeError,
        ProbeParseError,
        RuntimeUnavailable,
        SpecError,
        UnsupportedSpec,
    )
    from .model import AccessResult, Capabilities, Cgroup, Facts, Lsm, Mismatch, Mount, User
    from .spec import ContainerSpec

_WHERE = {
    **dict.fromkeys(
        ["ContainerSecError", "ContainerStartError", "ExecTimeout", "ImageNotFound",
         "PolicyError", "ProbeError", "ProbeParseError", "RuntimeUnavailable", "SpecError",
         "UnsupportedSpec"],
        "errors",
    ),
    **dict.fromkeys(
        ["AccessResult", "Capabilities", "Cgroup", "Facts", "Lsm", "Mismatch", "Mount", "User"],
        "model",
    ),
    "ContainerSpec": "spec",
}  # fmt: skip
__all__ = [
    "AccessResult",
    "Capabilities",
    "Cgroup",
    "ContainerSecError",
    "ContainerSpec",
    "ContainerStartError",
    "ExecTimeout",
    "Facts",
    "ImageNotFound",
    "Lsm",
    "Mismatch",
    "Mount",
    "PolicyError",
    "ProbeError",
    "ProbeParseError",
    "RuntimeUnavailable",
    "SpecError",
    "UnsupportedSpec",
    "User",
]
__version__ = "0.1.0"
# Modules reachable as attributes (``pytest_containersec.sarif``), where they live now.
_MODULES = {
    "expect": "expect",
    "checks": "checks.checks",
    "policy": "policy.policy",
    "report": "report.report",
    "score": "checks.score",
    "sarif": "report.sarif",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
