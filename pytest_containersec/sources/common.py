"""What every deployment-file reader returns, and the value parsers they share."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..spec import ContainerSpec
from .yamlfile import Ctx

# ASCII only: str.isdigit() also takes "²" and "٣", which int() then refuses or reads
_DIGITS = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Loaded:
    """A spec read from a deployment file, and what the reader wants the user to know:
    settings with no spec field whose effect is observed instead (e.g. runAsNonRoot), or
    keys deliberately ignored because they do not change the confinement."""

    spec: ContainerSpec
    notes: tuple[str, ...] = field(default=())


def build(ctx: Ctx, fields: dict[str, Any], lines: dict[str, Ctx]) -> ContainerSpec:
    """ContainerSpec(**fields); a SpecError names the file, line and key it came from."""
    try:
        return ContainerSpec(**fields)
    except SpecError as exc:
        where = lines.get(exc.field, ctx)
        raise where.error(str(exc)) from None


def words(ctx: Ctx, value: Any) -> tuple[str, ...]:
    """A command: a list as is, a string split like a shell would (no shell runs it)."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ctx.error(f"cannot split {value!r}: {exc}") from None
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    raise ctx.error("expected a string or a list of strings")


def integer(ctx: Ctx, value: Any, signed: bool = False) -> int:
    """A whole number, or its decimal text in ASCII digits (``"64"``; ``"-1"`` and ``"+1"``
    only when ``signed``: where the format allows a sign, as compose's ``pids_limit: -1``);
    a negative number when not ``signed``, a bool or anything else is a SourceError."""
    want = "a whole number" if signed else "a whole number >= 0"
    if isinstance(value, bool):
        raise ctx.error(f"expected {want}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (_SIGNED if signed else _DIGITS).fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise ctx.error(f"expected {want}")
    if number < 0 and not signed:
        raise ctx.error(f"expected {want}")
    return number


def boolean(ctx: Ctx, value: Any) -> bool:
    """A YAML bool or ``true``/``yes``/``1``/``false``/``no``/``0`` in any case; anything else
    is a SourceError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ctx.error("expected true or false")
