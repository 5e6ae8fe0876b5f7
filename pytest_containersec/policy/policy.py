"""Policy files (YAML): image, runtimes, run spec and expectations, validated with line
numbers; evaluated by pure functions on Facts (pytest items and ``containersec check``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import sources
from ..checks import profiles
from ..checks.check_registry import CheckDef, all_checks
from ..checks.checks import Violation
from ..errors import PolicyError, SourceError, SpecError
from ..model import Facts
from ..spec import SPEC_FIELDS, ContainerSpec

# Every check a policy file may name (the check registry: checks, surface,
# workload_checks, score); FAMILIES is its name from before the registry.
CHECKS: Mapping[str, CheckDef] = all_checks()
FAMILIES = CHECKS


@dataclass(frozen=True)
class Expectation:
    """One entry of a policy's ``expect`` list (or a profile control): a check and its value."""

    family: str  # the check's registered name
    value: Any
    line: int
    source: str = ""  # "" for the file's own expectations, else "profile NAME: CONTROL"

    @property
    def check(self) -> CheckDef:
        """The registered check."""
        return CHECKS[self.family]

    @property
    def name(self) -> str:
        """The expectation's name in reports (``denied[/etc/shadow:r]``), prefixed with its
        profile control when it came from one."""
        base = self.check.label(self.value)
        return f"{self.source}: {base}" if self.source else base

    def access_key(self) -> str | None:
        """The probe access (``PATH:MODE``) the check needs observed, or None when it reads none."""
        return self.check.access_key(self.check.bind(self.value))

    def evaluate(self, facts: Facts) -> list[Violation]:
        """The check's violations on ``facts`` (empty: it passes)."""
        return self.check.evaluate(facts, self.value)


@dataclass(frozen=True)
class Policy:
    """A parsed policy file: what to run (its spec; no runtimes: every selected one) and what
    to expect of it."""

    path: str
    name: str
    spec: ContainerSpec
    runtimes: tuple[str, ...]  # empty = every selected runtime
    expectations: tuple[Expectation, ...] = field(default=())

    def access_keys(self) -> tuple[str, ...]:
        """The probe accesses every expectation needs, to pass to ``facts(access=...)``."""
        return tuple(k for e in self.expectations if (k := e.access_key()) is not None)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(path: str, node: yaml.Node, what: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise PolicyError(path, _line(node), what, "expected a mapping")
    out: list[tuple[yaml.ScalarNode, yaml.Node]] = []
    seen: set[str] = set()
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise PolicyError(path, _line(k), what, "keys must be plain names")
        if k.value in seen:
            raise PolicyError(path, _line(k), k.value, "duplicate key")
        seen.add(k.value)
        out.append((k, v))
    return out


def _value(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _expectation(path: str, node: yaml.Node) -> Expectation:
    items = _mapping(path, node, "expect")
    if len(items) != 1:
        raise PolicyError(path, _line(node), "expect", "each entry has exactly one check family")
    knode, vnode = items[0]
    family, line, value = knode.value, _line(knode), _value(vnode)
    if family not in CHECKS:
        raise PolicyError(
            path, line, family, f"unknown check family; known: {', '.join(sorted(CHECKS))}"
        )
    try:  # the schema the check's signature gives, then its values (caps, sizes, paths)
        CHECKS[family].validate(value)
    except (ValueError, SpecError) as exc:
        raise PolicyError(path, line, family, str(exc)) from None
    return Expectation(family, value, line)


def load(path: str | Path, known_runtimes: Collection[str] | None = None) -> Policy:
    """Parse and validate one policy file; errors name file, line and key.
    ``known_runtimes``: the names its ``runtimes:`` may use (default: the runtime
    registry's; the plugin adds the hook's)."""
    p = str(path)
    try:
        text = Path(path).read_text()
        root = yaml.compose(text)
    except OSError as exc:
        raise PolicyError(p, None, "file", str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PolicyError(p, mark.line + 1 if mark else None, "yaml", str(exc)) from None
    if root is None:
        raise PolicyError(p, None, "file", "the policy is empty")
    top = _mapping(p, root, "policy")
    known = {"name", "image", "runtimes", "spec", "profile", "expect", *sources.ALL_KEYS}
    fields: dict[str, tuple[int, yaml.Node]] = {}
    for k, v in top:
        if k.value not in known:
            raise PolicyError(p, _line(k), k.value, f"unknown key; allowed: {sorted(known)}")
        fields[k.value] = (_line(k), v)
    source = {k: _value(fields[k][1]) for k in sources.ALL_KEYS if k in fields}
    base_spec: ContainerSpec | None = None
    if source:
        first = min(fields[k][0] for k in source)
        if "image" in fields:
            raise PolicyError(p, fields["image"][0], "image", "the image comes from the file")
        try:
            loaded, errors = sources.from_fields(source, Path(p).parent)
        except SourceError as exc:
            raise PolicyError(p, first, next(iter(source)), str(exc)) from None
        if errors or loaded is None:
            raise PolicyError(p, first, next(iter(source)), "; ".join(errors))
        base_spec = loaded.spec
        fields["image"] = (first, yaml.ScalarNode("tag:yaml.org,2002:str", base_spec.image))
    if "image" not in fields:
        raise PolicyError(p, 1, "image", "a policy names the image to run (or a compose/kube file)")
    spec_kw: dict[str, Any] = {"image": _value(fields["image"][1])}
    if "spec" in fields:
        for k, v in _mapping(p, fields["spec"][1], "spec"):
            if k.value not in SPEC_FIELDS or k.value == "image":
                raise PolicyError(
                    p,
                    _line(k),
                    k.value,
                    f"unknown spec field; allowed: {', '.join(SPEC_FIELDS[1:])}",
                )
            spec_kw[k.value] = _value(v)
    try:
        if base_spec is not None:
            spec_kw.pop("image")
            spec = base_spec.replace(**spec_kw) if spec_kw else base_spec
        else:
            spec = ContainerSpec(**spec_kw)
    except (SpecError, TypeError) as exc:
        key = exc.field if isinstance(exc, SpecError) else "spec"
        line = fields.get("spec", fields["image"])[0]
        raise PolicyError(p, line, key, str(exc)) from None
    runtimes: tuple[str, ...] = ()
    if "runtimes" in fields:
        line, node = fields["runtimes"]
        value = _value(node)
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise PolicyError(p, line, "runtimes", "must be a list of runtime names")
        if known_runtimes is None:
            from ..runtimes import known_names

            known_runtimes = known_names()
        unknown = [r for r in value if r not in known_runtimes]
        if unknown:
            raise PolicyError(
                p, line, "runtimes", f"unknown {unknown}; known: {', '.join(known_runtimes)}"
            )
        runtimes = tuple(value)
    expectations: list[Expectation] = []
    if "profile" in fields:
        line, node = fields["profile"]
        names = _value(node)
        for name in [names] if isinstance(names, str) else names or []:
            if name not in profiles.PROFILES:
                raise PolicyError(
                    p,
                    line,
                    "profile",
                    f"unknown profile {name!r}; known: {', '.join(profiles.PROFILES)}",
                )
            for control in profiles.PROFILES[name]:
                if control.family is not None:
                    expectations.append(
                        Expectation(control.family, control.value, line, f"{name} {control.id}")
                    )
    if "expect" in fields:
        line, node = fields["expect"]
        if not isinstance(node, yaml.SequenceNode):
            raise PolicyError(p, line, "expect", "expected a list of checks")
        expectations += [_expectation(p, n) for n in node.value]
    if not expectations:
        raise PolicyError(p, 1, "expect", "the policy checks nothing (add expect or profile)")
    name = _value(fields["name"][1]) if "name" in fields else Path(p).stem
    return Policy(p, str(name), spec, runtimes, tuple(expectations))
