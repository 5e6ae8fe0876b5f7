"""YAML with line numbers (PyYAML node marks) for the deployment-file readers, a
``Ctx`` that names file, line and field in every error, and compose's ``${VAR}``
interpolation. Pure apart from reading the file."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import SourceError


class LineDict(dict[Any, Any]):
    """A YAML mapping that remembers its own line and each key's line (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A YAML sequence that remembers its own line and each item's line."""

    line: int = 0
    item_lines: list[int]


Interpolate = Callable[[str, int], str]


def _loader(path: str, interpolate: Interpolate | None) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        v = loader.construct_object(node, deep=True)
        if interpolate is not None and isinstance(node, yaml.ScalarNode) and isinstance(v, str):
            return interpolate(v, node.start_mark.line + 1)
        return v

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
        loader.flatten_mapping(node)  # merge keys: <<: *defaults
        d = LineDict()
        d.line, d.key_lines = node.start_mark.line + 1, {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            line = knode.start_mark.line + 1
            if not isinstance(key, str | int | float | bool):
                raise SourceError(path, line, str(key), "keys must be plain names")
            if key in d:
                raise SourceError(path, line, str(key), "duplicate key")
            d[key] = value(loader, vnode)
            d.key_lines[key] = line
        return d

    def sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
        out = LineList(value(loader, n) for n in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [n.start_mark.line + 1 for n in node.value]
        return out

    Loader.add_constructor("tag:yaml.org,2002:map", mapping)
    Loader.add_constructor("tag:yaml.org,2002:seq", sequence)
    return Loader


def load_all(path: Path, interpolate: Interpolate | None = None) -> list[Any]:
    """Every document of ``path`` (LineDict/LineList inside); SourceError with the line
    when it cannot be read or parsed."""
    p = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SourceError(p, None, "file", exc.strerror or str(exc)) from None
    try:
        return [d for d in yaml.load_all(text, Loader=_loader(p, interpolate)) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SourceError(p, mark.line + 1 if mark else None, "yaml", str(problem)) from None


@dataclass(frozen=True)
class Ctx:
    """Where a value is: file, line, and the dotted field path (for errors)."""

    path: str
    line: int | None
    key: str

    def error(self, reason: str) -> SourceError:
        """A SourceError at this place, for the caller to raise."""
        return SourceError(self.path, self.line, self.key, reason)

    def unsupported(self, why: str) -> SourceError:
        """A SourceError at this place for a setting containersec cannot express, for the caller
        to raise."""
        return self.error(f"not supported by containersec: {why}")

    def at(self, parent: Any, key: Any) -> Ctx:
        """The context of ``parent[key]`` (a LineDict key or LineList index)."""
        line = self.line
        if isinstance(parent, LineDict):
            line = parent.key_lines.get(key, parent.line)
        elif isinstance(parent, LineList) and isinstance(key, int) and key < len(parent):
            line = parent.item_lines[key]
        name = f"{self.key}[{key}]" if isinstance(key, int) else f"{self.key}.{key}"
        return Ctx(self.path, line, name.lstrip("."))


def line_of(value: Any, default: int | None = None) -> int | None:
    """The line a parsed mapping or sequence starts at, else ``default`` (scalars carry no line)."""
    return value.line if isinstance(value, LineDict | LineList) and value.line else default


def mapping(ctx: Ctx, value: Any) -> LineDict:
    """``value`` when it is a mapping, else a SourceError at ``ctx``."""
    if not isinstance(value, LineDict):
        raise ctx.error("expected a mapping")
    return value


def check_keys(
    ctx: Ctx,
    d: LineDict,
    known: Iterable[str],
    ignored: Iterable[str] = (),
    extensions: bool = False,
) -> None:
    """Every key of ``d`` is known (mapped) or deliberately ignored; anything else is a
    SourceError naming the key and its line (never silently dropped)."""
    allowed = set(known) | set(ignored)
    for key in d:
        if extensions and isinstance(key, str) and key.startswith("x-"):
            continue
        if key not in allowed:
            raise ctx.at(d, key).unsupported(
                f"unknown or unsupported key {key!r} (mapped: {', '.join(sorted(known))})"
            )


def str_list(ctx: Ctx, value: Any) -> list[str]:
    """A string as a one-item list, or a list of scalars as strings; anything else is a
    SourceError."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v) for v in value]
    raise ctx.error("expected a string or a list of strings")


# -- compose interpolation -------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: Mapping[str, str], ctx: Ctx) -> str:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}`` and ``$$``
    (defaults may nest); an unset variable without a default is empty, as compose does."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end, depth = i + 2, 1
            while end < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0) if text[end - 1] != "\\" else 0
                end += 1
            if depth:
                raise ctx.error(f"unclosed ${{ in {text!r}")
            out.append(_expand(text[i + 2 : end - 1], env, ctx))
            i = end
        elif m := _NAME.match(text, i + 1):
            out.append(env.get(m.group(), ""))
            i = m.end()
        else:
            raise ctx.error(f"invalid interpolation in {text!r} (write $$ for a literal $)")
    return "".join(out)


def _expand(inner: str, env: Mapping[str, str], ctx: Ctx) -> str:
    m = _NAME.match(inner)
    if not m:
        raise ctx.error(f"invalid interpolation ${{{inner}}}")
    name, rest = m.group(), inner[m.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op) :]
            unset = value is None or (op.startswith(":") and value == "")
            if op.endswith("-"):
                return interpolate(arg, env, ctx) if unset else str(value)
            if op.endswith("?"):
                if unset:
                    raise ctx.error(f"required variable {name} is missing: {arg or 'unset'}")
                return str(value)
            return "" if unset else interpolate(arg, env, ctx)
    raise ctx.error(f"invalid interpolation ${{{inner}}}")
