"""The check registry: every check declared once, where it is written.

A check is a pure function ``(Facts, **params) -> list[Violation]`` decorated with
:func:`check`, which records its name (the function's), its SARIF rule (``rule``: a
one-line description; the docstring is the rule's help), its former spellings
(``legacy``), how a policy file writes its parameters (``form``) and the probe access it
needs (``access``). Its parameters' annotations are its policy schema: a parameter typed
``Annotated[T, Schema(...), Validate(...)]`` adds JSON Schema keywords and a validation
to what ``T`` says. ``expect``, policy files, SARIF, profiles and the JSON Schema of the
policy format (``containersec schema``) all read this registry.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

if TYPE_CHECKING:
    from ..model import Facts
    from .verdict import Violation

Form = Literal["flag", "value", "mapping"]
CheckFunction = Callable[..., "list[Violation]"]
F = TypeVar("F", bound=CheckFunction)

_CHECKS: dict[str, CheckDef] = {}
_LEGACY: dict[str, frozenset[str]] = {}  # check name -> former Violation.check spellings
# The modules whose import registers every check (each decorates its own functions).
_MODULES = ("pytest_containersec.checks.checks", "pytest_containersec.checks.score")


class Schema:
    """``Annotated`` metadata: JSON Schema keywords added to (or replacing those of) the
    schema the Python type gives."""

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords


class Validate:
    """``Annotated`` metadata: a function that raises ``ValueError`` (or ``SpecError``) for
    a value the schema lets through but the check cannot use (an unknown capability, a
    size like ``lots``)."""

    def __init__(self, function: Callable[[Any], object]) -> None:
        self.function = function


class CheckName(str):
    """A check's registered name, the ``check`` field of its Violations. It also compares
    equal (``==``, ``!=`` only; hashing uses the name) to the spellings that check emitted
    before the registry (``"access"`` for ``denied``, ``"cgroup"`` for ``limits_set``, ...)
    so that tests written against them keep passing. Deprecated: compare with the name."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if str.__eq__(self, other) is True:
            return True
        return isinstance(other, str) and other in _LEGACY.get(str(self), frozenset())

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return str.__hash__(self)


@dataclass(frozen=True)
class Param:
    """One parameter of a check: its policy-file schema and the validations of its value."""

    name: str
    schema: dict[str, Any]
    required: bool
    default: Any
    validators: tuple[Callable[[Any], object], ...] = ()


@dataclass(frozen=True)
class CheckDef:
    """One registered check (see the module docstring)."""

    name: str
    function: CheckFunction
    rule: str
    legacy: tuple[str, ...] = ()
    declared_form: Form | None = None
    access: tuple[str, str] | None = None  # (path parameter, mode parameter)

    @property
    def help(self) -> str:
        """The check's docstring: the SARIF rule's help and the schema's description."""
        return inspect.getdoc(self.function) or ""

    @cached_property
    def params(self) -> tuple[Param, ...]:
        """The parameters after ``facts``, read from the signature and its annotations."""
        signature = inspect.signature(self.function)
        hints = typing.get_type_hints(self.function, include_extras=True)
        out = []
        for p in list(signature.parameters.values())[1:]:
            schema, validators = type_schema(hints[p.name])
            required = p.default is inspect.Parameter.empty
            if not required and p.default is not None:
                schema = {**schema, "default": _json_default(p.default)}
            out.append(Param(p.name, schema, required, p.default, validators))
        return tuple(out)

    @property
    def form(self) -> Form:
        """How a policy file writes the parameters: ``flag`` (``name: true``, no
        parameter), ``value`` (the one parameter, bare) or ``mapping`` (by name)."""
        if self.declared_form is not None:
            return self.declared_form
        return "flag" if not self.params else "value" if len(self.params) == 1 else "mapping"

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of this check's value in a policy file's ``expect`` list."""
        if self.form == "flag":
            out: dict[str, Any] = {"const": True}
        elif self.form == "value":
            out = dict(self.params[0].schema)
        else:
            out = {
                "type": "object",
                "properties": {p.name: p.schema for p in self.params},
                "additionalProperties": False,
                "minProperties": 1,
            }
            required = [p.name for p in self.params if p.required]
            if required:
                out["required"] = required
        first = self.help.split("\n\n")[0].replace("\n", " ")
        return {**out, "title": self.rule, "description": first}

    def bind(self, value: Any) -> dict[str, Any]:
        """A policy value as the function's keyword arguments."""
        if self.form == "flag":
            return {}
        if self.form == "value":
            return {self.params[0].name: value}
        return dict(value)

    def validate(self, value: Any) -> None:
        """Raise ``ValueError`` naming what is wrong with a policy value of this check."""
        problem = problems(value, self.schema())
        if problem:
            raise ValueError(problem)
        args = self.bind(value)
        for p in self.params:
            if p.name in args:
                for validate in p.validators:
                    validate(args[p.name])
        key = self.access_key(args)
        if key is not None:
            from ..observe.probe import validate_access

            validate_access(key)

    def access_key(self, args: Mapping[str, Any]) -> str | None:
        """The probe access (``PATH:MODE``) the check reads, when it reads one."""
        if self.access is None:
            return None
        path, mode = self.access
        defaults = {p.name: p.default for p in self.params}
        return f"{args[path]}:{args.get(mode, defaults[mode])}"

    def label(self, value: Any) -> str:
        """The expectation's name in reports: ``denied[/etc/shadow:r]``, ``seccomp[filter]``."""
        key = self.access_key(self.bind(value)) if self.access else None
        if key is not None:
            return f"{self.name}[{key}]"
        arg = value if isinstance(value, str | int | float) else ""
        return f"{self.name}[{arg}]" if arg not in ("", True) else self.name

    def evaluate(self, facts: Facts, value: Any) -> list[Violation]:
        """Judge a policy value on ``facts``."""
        return self.function(facts, **self.bind(value))

    def controls(self) -> list[str]:
        """The profile controls (``PSS-B Seccomp / CIS 5.21``, ...) this check observes."""
        from .profiles import PROFILES

        found = [c.id for controls in PROFILES.values() for c in controls if c.family == self.name]
        return list(dict.fromkeys(found))


def check(
    rule: str,
    *,
    legacy: Iterable[str] = (),
    form: Form | None = None,
    access: tuple[str, str] | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as a check named after it (see the module)."""

    def register(function: F) -> F:
        name = function.__name__
        if name in _CHECKS:
            raise ValueError(f"check {name!r} is registered twice")
        _CHECKS[name] = CheckDef(name, function, rule, tuple(legacy), form, access)
        _LEGACY[name] = frozenset(legacy)
        return function

    return register


def all_checks() -> dict[str, CheckDef]:
    """Every registered check by name (importing the modules that declare them)."""
    import importlib

    for module in _MODULES:
        importlib.import_module(module)
    return dict(_CHECKS)


def get(name: str) -> CheckDef:
    """One check by name; ``KeyError`` when none is registered so."""
    if name not in _CHECKS:
        all_checks()
    return _CHECKS[name]


def legacy_names() -> dict[str, tuple[str, ...]]:
    """Check name -> the ``Violation.check`` spellings it emitted before (the changelog)."""
    return {n: c.legacy for n, c in all_checks().items() if c.legacy}


# -- Python types -> JSON Schema ----------------------------------------------------------

_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
}
_SEQUENCES = (
    collections.abc.Iterable, collections.abc.Collection, collections.abc.Sequence,
    list, tuple, set, frozenset,
)  # fmt: skip


def type_schema(tp: Any) -> tuple[dict[str, Any], tuple[Callable[[Any], object], ...]]:
    """The JSON Schema of a parameter type, and the validations its metadata adds."""
    origin = get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = get_args(tp)
        schema, validators = type_schema(base)
        for m in meta:
            if isinstance(m, Schema):
                schema = {**schema, **m.keywords}
            elif isinstance(m, Validate):
                validators += (m.function,)
        return schema, validators
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return type_schema(members[0])
        parts = [type_schema(m) for m in members]
        schemas = [s for s, _ in parts]
        # a member's validations apply to a value of that member's shape only
        validators = tuple(_when(s, v) for s, vs in parts for v in vs)
        if all(set(s) == {"type"} for s in schemas):
            return {"type": [s["type"] for s in schemas]}, validators
        return {"anyOf": schemas}, validators
    if origin is Literal:
        values = list(get_args(tp))
        kind = "string" if all(isinstance(v, str) for v in values) else None
        return ({"type": kind, "enum": values} if kind else {"enum": values}), ()
    if tp in _SCALARS:
        return dict(_SCALARS[tp]), ()
    args = get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        items = [type_schema(a)[0] for a in args]
        if all(i == items[0] for i in items):
            return {
                "type": "array", "items": items[0], "minItems": len(args), "maxItems": len(args)
            }, ()  # fmt: skip
        raise TypeError(f"cannot describe {tp!r} in a policy schema")
    if origin in _SEQUENCES:
        item, validators = type_schema(args[0]) if args else ({}, ())
        return {"type": "array", "items": item}, tuple(_each(v, iter) for v in validators)
    if origin in (dict, collections.abc.Mapping):
        value, validators = type_schema(args[1]) if args else ({}, ())
        each = tuple(_each(v, lambda d: iter(d.values())) for v in validators)
        return {"type": "object", "additionalProperties": value}, each
    raise TypeError(f"cannot describe {tp!r} in a policy schema")


def _when(schema: Mapping[str, Any], validate: Callable[[Any], object]) -> Callable[[Any], None]:
    def run(value: Any) -> None:
        if problems(value, schema) is None:
            validate(value)

    return run


def _each(
    validate: Callable[[Any], object], items: Callable[[Any], Iterable[Any]]
) -> Callable[[Any], None]:
    def run(value: Any) -> None:
        for item in items(value):
            validate(item)

    return run


def _json_default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | frozenset) else value


# -- the subset of JSON Schema the registry writes, checked without a library ------------


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "array": list,
                              "object": dict, "null": type(None)}[kind])  # fmt: skip


_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
          "boolean": "true or false", "array": "a list", "object": "a mapping"}  # fmt: skip


def describe(schema: Mapping[str, Any]) -> str:
    """What a value of ``schema`` is, in words (for error messages)."""
    if schema.get("const") is True:
        return "true (remove the entry to not check it)"
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(describe(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(_WORDS[k] for k in kind)
    if kind == "array":
        n = schema.get("minItems")
        item = _plural(describe(schema.get("items", {})))
        if n is not None and n == schema.get("maxItems"):
            return f"a list of {n} {item}"
        size = "non-empty " if n else ""
        return f"a {size}list of {item}" if item else f"a {size}list"
    if kind == "object" and "properties" in schema:
        return f"a mapping with keys from {sorted(schema['properties'])}"
    return _WORDS.get(str(kind), "")


def _plural(text: str) -> str:
    for one, many in (
        ("a whole number", "whole numbers"),
        ("a string", "strings"),
        ("a number", "numbers"),
        ("a list", "lists"),
        ("a mapping", "mappings"),
    ):
        if text.startswith(one):
            return many + text[len(one) :]
    return "names from " + text.removeprefix("one of ") if text.startswith("one of") else text


def problems(value: Any, schema: Mapping[str, Any], where: str = "") -> str | None:
    """The first way ``value`` breaks ``schema`` (a message), or None when it fits."""
    at = f"{where}: " if where else ""
    if "const" in schema:
        ok = value is schema["const"] if isinstance(schema["const"], bool) else (
            value == schema["const"])  # fmt: skip
        return None if ok else f"{at}must be {describe(schema)}"
    if "anyOf" in schema:
        if any(problems(value, s) is None for s in schema["anyOf"]):
            return None
        return f"{at}must be {describe(schema)}"
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds and not any(_type_ok(value, k) for k in kinds):
        if "enum" in schema:  # the type first: `seccomp: on` (YAML's true) is not a string
            return f"{at}must be " + " or ".join(_WORDS[k] for k in kinds)
        return f"{at}must be {describe(schema)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{at}must be {describe(schema)}"
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        what = schema.get("description") or f"a string matching {schema['pattern']}"
        return f"{at}must be {what}, not {value!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{at}must be at least {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{at}must be at most {schema['maximum']}"
    if isinstance(value, list):
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if len(value) < low or (high is not None and len(value) > high):
            return f"{at}must be {describe(schema)}"
        for i, item in enumerate(value):
            found = problems(item, schema.get("items", {}), f"{where}[{i}]")
            if found:
                return found
    if isinstance(value, dict):
        return _object_problems(value, schema, where, at)
    return None


def _object_problems(
    value: dict[Any, Any], schema: Mapping[str, Any], where: str, at: str
) -> str | None:
    props: dict[str, Any] = schema.get("properties", {})
    if len(value) < schema.get("minProperties", 0):
        return f"{at}must be {describe(schema)}"
    if schema.get("additionalProperties") is False:
        unknown = sorted(str(k) for k in value if k not in props)
        if unknown:
            return f"{at}unknown key(s) {unknown}; allowed: {sorted(props)}"
    for key in schema.get("required", ()):
        if key not in value:
            return f"{at}needs a {key}"
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if not isinstance(key, str):
            return f"{at}keys must be plain names"
        sub = props.get(key, extra if isinstance(extra, dict) else {})
        found = problems(item, sub, f"{where}.{key}" if where else key)
        if found:
            return found
    return None
