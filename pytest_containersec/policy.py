"""Policy files (YAML): image, runtimes, run spec and expectations, validated with line
numbers; evaluated by pure functions on Facts (pytest items and ``containersec check``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import checks, profiles, sources
from .checks import Violation
from .errors import PolicyError, SourceError, SpecError
from .model import Facts
from .runtimes import KNOWN_NAMES
from .spec import SPEC_FIELDS, ContainerSpec

Evaluator = Callable[[Facts, Any], list[Violation]]


def _flag(check: Callable[[Facts], list[Violation]]) -> Evaluator:
    return lambda f, _v: check(f)


def _exposure(f: Facts, limit: Any) -> list[Violation]:
    from .score import score

    s = score(f)
    if s.value <= float(limit):
        return []
    why = f" ({s.reason})" if s.reason else ""
    return [Violation("exposure", f.runtime, f"exposure <= {float(limit):.1f}", f"{s}{why}")]


# family -> (evaluator, schema: "flag" | "str" | "float" | "list" | "ints" | {allowed keys})
FAMILIES: dict[str, tuple[Evaluator, Any]] = {
    "root_unprivileged": (_flag(checks.root_unprivileged), "flag"),
    "read_only_rootfs": (_flag(checks.read_only_rootfs), "flag"),
    "not_privileged": (_flag(checks.not_privileged), "flag"),
    "no_sensitive_mounts": (_flag(checks.no_sensitive_mounts), "flag"),
    "no_mismatches": (_flag(checks.no_mismatches), "flag"),
    "no_new_privs": (lambda f, v: checks.no_new_privs(f, bool(v)), "bool"),
    "seccomp": (lambda f, v: checks.seccomp(f, v), "str"),
    "operation_denied": (lambda f, v: checks.operation_denied(f, v), "str"),
    "masked": (lambda f, v: checks.masked(f, v), "str"),
    "readonly_path": (lambda f, v: checks.readonly_path(f, v), "str"),
    "max_exposure": (_exposure, "float"),
    "uid_map": (lambda f, v: checks.uid_map(f, [tuple(e) for e in v]), "list"),
    "user": (lambda f, v: checks.user(f, v.get("uid"), v.get("gid")), {"uid", "gid"}),
    "capabilities": (
        lambda f, v: checks.capabilities(
            f,
            v.get("effective"),
            v.get("at_most"),
            v.get("absent"),
            v.get("bounding"),
            v.get("ambient"),
        ),
        {"effective", "at_most", "absent", "bounding", "ambient"},
    ),
    "operation_allowed": (lambda f, v: checks.operation_allowed(f, v), "str"),
    "groups": (lambda f, v: checks.groups(f, v), "ints"),
    "namespaces_host": (lambda f, v: checks.namespaces_host(f, v), "names"),
    "no_setuid_binaries": (
        lambda f, v: checks.no_setuid_binaries(f, v.get("allow", [])),
        {"allow"},
    ),
    "no_file_capabilities": (
        lambda f, v: checks.no_file_capabilities(f, v.get("allow", [])),
        {"allow"},
    ),
    "cgroup": (
        lambda f, v: checks.cgroup(f, v.get("memory"), v.get("pids"), v.get("cpus")),
        {"memory", "pids", "cpus"},
    ),
    "denied": (
        lambda f, v: checks.denied(f, v["path"], v.get("mode", "r"), v.get("errno")),
        {"path", "mode", "errno"},
    ),
    "allowed": (lambda f, v: checks.allowed(f, v["path"], v.get("mode", "r")), {"path", "mode"}),
    "lsm": (
        lambda f, v: checks.lsm(f, v.get("label"), v.get("confined", True)),
        {"label", "confined"},
    ),
    "lsm_not_unconfined": (_flag(checks.lsm_not_unconfined), "flag"),
    "non_root": (_flag(checks.non_root), "flag"),
    "namespaces_private": (lambda f, v: checks.namespaces_private(f, v), "names"),
    "limits_set": (
        lambda f, v: checks.limits_set(
            f, bool(v.get("memory")), bool(v.get("pids")), bool(v.get("cpus"))
        ),
        {"memory", "pids", "cpus"},
    ),
}


@dataclass(frozen=True)
class Expectation:
    family: str
    value: Any
    line: int
    source: str = ""  # "" for the file's own expectations, else "profile NAME: CONTROL"

    @property
    def name(self) -> str:
        arg = self.value if isinstance(self.value, str | int | float) else ""
        base = f"{self.family}[{arg}]" if arg not in ("", True) else self.family
        if self.family in ("denied", "allowed"):
            base = f"{self.family}[{self.value['path']}:{self.value.get('mode', 'r')}]"
        return f"{self.source}: {base}" if self.source else base

    def access_key(self) -> str | None:
        if self.family in ("denied", "allowed"):
            return f"{self.value['path']}:{self.value.get('mode', 'r')}"
        return None

    def evaluate(self, facts: Facts) -> list[Violation]:
        return FAMILIES[self.family][0](facts, self.value)


@dataclass(frozen=True)
class Policy:
    path: str
    name: str
    spec: ContainerSpec
    runtimes: tuple[str, ...]  # empty = every selected runtime
    expectations: tuple[Expectation, ...] = field(default=())

    def access_keys(self) -> tuple[str, ...]:
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
    if family not in FAMILIES:
        raise PolicyError(
            path, line, family, f"unknown check family; known: {', '.join(sorted(FAMILIES))}"
        )
    schema = FAMILIES[family][1]
    bad = None
    if schema == "flag" and value is not True:
        bad = "must be true (remove the entry to not check it)"
    elif schema == "bool" and not isinstance(value, bool):
        bad = "must be true or false"
    elif schema == "str" and not isinstance(value, str):
        bad = "must be a string"
    elif schema == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
        bad = "must be a number"
    elif schema == "names" and not (
        isinstance(value, list)
        and value
        and set(value) <= {"net", "pid", "ipc", "uts", "user", "mnt", "cgroup"}
    ):
        bad = "must be a list of namespace names (net, pid, ipc, uts, user, mnt, cgroup)"
    elif schema == "list" and not (
        isinstance(value, list)
        and all(
            isinstance(e, list) and len(e) == 3 and all(isinstance(x, int) for x in e)
            for e in value
        )
    ):
        bad = "must be a list of [inside, outside, count]"
    elif schema == "ints" and not (
        isinstance(value, list)
        and all(isinstance(e, int) and not isinstance(e, bool) for e in value)
    ):
        bad = "must be a list of whole numbers"
    elif isinstance(schema, set):
        if not isinstance(value, dict) or not value:
            bad = f"must be a mapping with keys from {sorted(schema)}"
        else:
            unknown = set(value) - schema
            if unknown:
                bad = f"unknown key(s) {sorted(unknown)}; allowed: {sorted(schema)}"
            elif family in ("denied", "allowed") and "path" not in value:
                bad = "needs a path"
    if bad:
        raise PolicyError(path, line, family, bad)
    exp = Expectation(family, value, line)
    try:  # run it once on nothing to surface bad values (unknown caps, modes, sizes) now
        _dry_run(exp)
    except (ValueError, SpecError) as exc:
        raise PolicyError(path, line, family, str(exc)) from None
    return exp


def _dry_run(exp: Expectation) -> None:
    from . import caps, masking, probe
    from .spec import parse_size

    v = exp.value
    if exp.family == "capabilities":
        for names in v.values():
            if not isinstance(names, list):
                raise ValueError("capability sets are lists of names")
            caps.normalize_set(names)
    elif exp.family == "seccomp" and v not in checks.SECCOMP_MODES:
        raise ValueError(f"must be one of {', '.join(checks.SECCOMP_MODES)}")
    elif exp.family in ("operation_denied", "operation_allowed") and v not in probe.OPERATIONS:
        raise ValueError(f"must be one of {', '.join(probe.OPERATIONS)}")
    elif exp.family in ("masked", "readonly_path") and v not in masking.STANDARD_PATHS:
        raise ValueError(f"must be one of {', '.join(masking.STANDARD_PATHS)}")
    elif exp.family == "cgroup" and v.get("memory") is not None:
        parse_size(v["memory"])
    elif exp.family in ("denied", "allowed"):
        probe.validate_access(f"{v['path']}:{v.get('mode', 'r')}")


def load(path: str | Path) -> Policy:
    """Parse and validate one policy file; errors name file, line and key."""
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
        unknown = [r for r in value if r not in KNOWN_NAMES]
        if unknown:
            raise PolicyError(
                p, line, "runtimes", f"unknown {unknown}; known: {', '.join(KNOWN_NAMES)}"
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
