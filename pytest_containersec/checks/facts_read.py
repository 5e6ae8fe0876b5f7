"""Which fields of a Facts a check read, with their values in short: what a failed
check's report shows (beside its expected and observed) instead of the whole Facts JSON.

The check runs a second time, only after it failed, on a view of the Facts that records
every field it reads (``no_new_privs``, ``capabilities.effective``,
``access[/etc/shadow:r]``, ...). The verdict never comes from the view: if the check
cannot run on it, nothing is recorded and the report shows the violations alone.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..model import Facts

MAX_ITEMS = 8  # items of a long sequence shown in a report line
MAX_LINE = 300  # characters of one value
WHOLE = "the whole Facts: --containersec-keep=failed or -vv"
# Fields every check reads to name its runtime: not worth a line.
_QUIET = frozenset({"runtime"})


class _Recorder:
    def __init__(self) -> None:
        self.paths: dict[str, None] = {}

    def add(self, path: str) -> None:
        self.paths[path] = None


def _wrap(value: Any, path: str, rec: _Recorder) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _View(value, path, rec)
    if isinstance(value, Mapping):
        return _MapView(value, path, rec)
    rec.add(path)
    return value


class _View:
    """A stand-in for a Facts (or one of its parts) that records each field read."""

    def __init__(self, obj: Any, path: str, rec: _Recorder) -> None:
        self._obj, self._path, self._rec = obj, path, rec

    def __getattr__(self, name: str) -> Any:
        attr = getattr(type(self._obj), name, None)
        path = f"{self._path}.{name}" if self._path else name
        if isinstance(attr, property):  # a derived value (probe_modified): read as such
            self._rec.add(path)
            return getattr(self._obj, name)
        if isinstance(attr, types.FunctionType):
            return types.MethodType(attr, self)
        return _wrap(getattr(self._obj, name), path, self._rec)

    def _whole(self) -> Any:
        self._rec.add(self._path)
        return self._obj

    def __eq__(self, other: object) -> bool:
        return bool(self._whole() == (other._whole() if isinstance(other, _View) else other))

    def __hash__(self) -> int:
        return hash(self._whole())

    def __repr__(self) -> str:
        return repr(self._whole())

    def __str__(self) -> str:
        return str(self._whole())


class _MapView(Mapping[Any, Any]):
    """A mapping field: a key read is recorded as ``field[key]``, a walk as the field."""

    def __init__(self, obj: Mapping[Any, Any], path: str, rec: _Recorder) -> None:
        self._obj, self._path, self._rec = obj, path, rec

    def __getitem__(self, key: Any) -> Any:
        self._rec.add(f"{self._path}[{key}]")
        return self._obj[key]

    def __contains__(self, key: object) -> bool:
        self._rec.add(f"{self._path}[{key}]")
        return key in self._obj

    def get(self, key: Any, default: Any = None) -> Any:
        self._rec.add(f"{self._path}[{key}]")
        return self._obj.get(key, default)

    def __iter__(self) -> Iterator[Any]:
        self._rec.add(self._path)
        return iter(self._obj)

    def __len__(self) -> int:
        self._rec.add(self._path)
        return len(self._obj)

    def __eq__(self, other: object) -> bool:
        self._rec.add(self._path)
        return bool(self._obj == other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._rec.add(self._path)
        return repr(self._obj)


def fields_read(
    function: Callable[..., object], facts: Facts, args: Mapping[str, Any]
) -> list[str]:
    """The paths of the fields ``function(facts, **args)`` reads, in the order it reads
    them; ``[]`` when it cannot run on a recording view."""
    rec = _Recorder()
    try:
        function(_View(facts, "", rec), **args)
    except Exception:  # a check the view cannot stand in for: report without the fields
        return []
    return [p for p in rec.paths if p and p not in _QUIET]


def value_at(facts: Facts, path: str) -> tuple[bool, Any]:
    """(found, value) of ``path`` (``a.b``, ``a[key]``) in ``facts``."""
    value: Any = facts
    name, _, rest = path.partition("[")
    for part in name.split("."):
        value = getattr(value, part)
    if rest:
        key = rest[:-1]
        if key not in value:
            return False, None
        value = value[key]
    return True, value


def short(value: Any) -> str:
    """A value in one line: ``false``, ``[CAP_CHOWN, CAP_KILL]``, ``allowed=False,
    errno='EACCES'``; a long sequence shows its first items and how many more."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = [f"{f.name}={short(getattr(value, f.name))}" for f in dataclasses.fields(value)]
        return "(" + ", ".join(parts) + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple | list | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        if not items:
            return "[] (none)"
        if all(isinstance(v, int | float) for v in items):  # (0, 100000, 65536)
            return "(" + ", ".join(str(v) for v in items) + ")"
        text = ", ".join(short(v) for v in items[:MAX_ITEMS])
        more = len(items) - MAX_ITEMS
        return f"[{text}, ... {more} more of {len(items)}]" if more > 0 else f"[{text}]"
    if isinstance(value, str):
        return value
    return str(value)


def describe(facts: Facts, paths: list[str]) -> list[tuple[str, str]]:
    """(path, value in short) of each path; a missing key reads ``(not present)``."""
    out = []
    for path in paths:
        try:
            found, value = value_at(facts, path)
        except (AttributeError, TypeError):
            continue
        if not found and path.startswith("sources["):
            continue  # no entry: the host's own /proc, the default
        text = short(value) if found else "(not present)"
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + f" ... ({len(text) - MAX_LINE} more characters; {WHOLE})"
        out.append((path, text))
    return out


def lines(read: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    """The report lines of what a check read."""
    if not read:
        return []
    return [f"{indent}facts read:", *(f"{indent}  {path} = {value}" for path, value in read)]
