"""pytest-containersec: prove what container confinement is really in effect."""

from __future__ import annotations

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
