"""Deployment files -> ContainerSpec: Compose services, Kubernetes workloads, Podman
quadlet ``.container`` files and systemd unit files. Each reader is a pure function of
the file (plus, for compose, the environment); errors are SourceError naming file, line
and field, and no key is dropped silently (mapped, listed as ignored, or an error)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .common import Loaded

# marker / policy keys: the file key, and the key naming what in it to run (None: none)
SOURCE_KEYS: dict[str, str | None] = {
    "compose": "service",
    "kube": "container",
    "quadlet": None,
    "unit": None,
}
SELECTOR_KEYS = ("service", "container")
ALL_KEYS: tuple[str, ...] = (*SOURCE_KEYS, *SELECTOR_KEYS)

_cache: dict[tuple[str, str, str | None, float], Loaded] = {}


def load(kind: str, path: str | Path, name: str | None = None) -> Loaded:
    """The spec of ``name`` in the ``kind`` file ``path`` (cached by path and mtime)."""
    p = Path(path)
    try:
        mtime = p.stat().st_mtime
    except OSError as exc:
        raise SourceError(str(path), None, kind, exc.strerror or str(exc)) from None
    key = (kind, str(p.resolve()), name, mtime)
    if key not in _cache:
        _cache[key] = _load(kind, p, name)
    return _cache[key]


def _load(kind: str, path: Path, name: str | None) -> Loaded:
    if kind == "compose":
        from . import compose

        if not name:
            raise SourceError(str(path), None, "service", "name the compose service to run")
        return compose.load(path, name)
    if kind == "kube":
        from . import kube

        return kube.load(path, name)
    if kind == "quadlet":
        from . import quadlet

        return quadlet.load(path)
    if kind == "unit":
        from . import unitfile

        return unitfile.load(path)
    raise SourceError(str(path), None, kind, f"unknown kind; known: {', '.join(SOURCE_KEYS)}")


def from_fields(fields: Mapping[str, Any], base: Path) -> tuple[Loaded | None, list[str]]:
    """The Loaded spec of marker/policy ``fields`` (None when they name no file) and usage
    errors about the keys (a selector without its file, two files, a wrong selector)."""
    kinds = [k for k in SOURCE_KEYS if k in fields]
    errors: list[str] = []
    if len(kinds) > 1:
        errors.append(f"name one deployment file, not {' and '.join(kinds)}")
    if not kinds:
        errors += [f"{k}= needs compose= or kube=" for k in SELECTOR_KEYS if k in fields]
        return None, errors
    kind = kinds[0]
    selector = SOURCE_KEYS[kind]
    errors += [
        f"{k}= does not apply to {kind}=" for k in SELECTOR_KEYS if k in fields and k != selector
    ]
    value = fields[kind]
    name = fields.get(selector) if selector else None
    if not isinstance(value, str | Path) or (name is not None and not isinstance(name, str)):
        errors.append(f"{kind}= and {selector}= are a path and a name")
    if errors:
        return None, errors
    path = Path(value)
    return load(kind, path if path.is_absolute() else base / path, name), []


__all__ = ["ALL_KEYS", "SOURCE_KEYS", "Loaded", "SourceError", "from_fields", "load"]
