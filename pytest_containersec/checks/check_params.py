"""The parameter types of checks: what a caller passes, plus (as ``Annotated`` metadata)
the policy schema and the validation a policy value gets before any container starts.
The check registry reads them from the checks' signatures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated

from ..linux import caps, masking
from ..model import SeccompMode as SeccompMode  # re-exported: the checks' parameter type
from ..observe import probe
from ..spec import parse_size
from .check_registry import Schema, Validate

# Namespaces Facts report (facts.NAMESPACES; a unit test keeps the two equal).
NAMESPACE_NAMES: tuple[str, ...] = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")


# Capabilities: caps.normalize validates them (any case, with or without CAP_, ALL,
# CAP_<bit>); the schema lists the canonical spellings for an editor's completion.
_CAP_ITEM = {"type": "string", "examples": ["ALL", *caps.CAP_NAMES]}

CapNames = Annotated[Iterable[str], Schema(items=_CAP_ITEM), Validate(caps.normalize_set)]
Size = Annotated[str | int, Schema(minimum=1), Validate(parse_size)]
AccessPath = Annotated[str, Schema(pattern="^/", description="an absolute path")]
AccessMode = Annotated[str, Schema(enum=list(probe.MODES))]
Errno = Annotated[str, Schema(pattern="^E[A-Z0-9]+$", description="an errno name like EACCES")]
Operation = Annotated[str, Schema(enum=list(probe.OPERATIONS))]
KernelPath = Annotated[str, Schema(enum=list(masking.STANDARD_PATHS))]
Namespaces = Annotated[
    Iterable[str], Schema(items={"type": "string", "enum": list(NAMESPACE_NAMES)}, minItems=1)
]
Gids = Iterable[int]
UidMap = Iterable[tuple[int, int, int]]  # [(inside, outside, count), ...]
PathPatterns = Iterable[str]  # paths or fnmatch patterns
Allow = PathPatterns | Mapping[str, CapNames]  # patterns, or path -> caps it may carry
ExposureLimit = Annotated[float, Schema(minimum=0, maximum=10)]
