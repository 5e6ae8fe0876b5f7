"""The check registry: every check once, in expect, SARIF, policy files and the JSON Schema,
with one spelling; the packaged schema equals the computed one and judges policy files."""

from __future__ import annotations

import inspect
import json
import operator
import pickle
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pytest_containersec import expect
from pytest_containersec.checks import check_params, profiles
from pytest_containersec.checks.check_registry import all_checks, get, legacy_names
from pytest_containersec.checks.verdict import Violation
from pytest_containersec.cli import cli
from pytest_containersec.model import Lsm, Mismatch
from pytest_containersec.policy import policy, policy_schema
from pytest_containersec.report import sarif

from .factories import privileged

ROOT = Path(__file__).parent.parent.parent
POLICIES = ROOT / "tests" / "data" / "policies"
VALID = [POLICIES / "good.yaml", *sorted((ROOT / "examples").glob("containersec*.yaml"))]
# Broken in a way the schema itself sees (the others: capability names, sizes, YAML
# syntax and duplicate keys are the loader's).
MALFORMED = ["bad-runtime", "bad-seccomp", "checks-nothing", "denied-no-path", "flag-false",
             "unknown-family", "unknown-spec"]  # fmt: skip
CHECKS = all_checks()

# Arguments on which each check fails for FACTS (privileged root, no LSM confinement,
# a mismatch, nothing scanned or observed beyond the defaults).
FACTS = privileged(lsm=Lsm("apparmor", "unconfined"), mismatches=(Mismatch("m", 1, 2, "spec"),))
FAILING: dict[str, dict[str, Any]] = {
    "root_unprivileged": {}, "uid_map": {"expected": [(0, 100000, 65536)]},
    "user": {"uid": 1000}, "denied": {"path": "/etc/shadow"},
    "allowed": {"path": "/proc/sys/kernel/hostname", "mode": "w"},
    "operation_denied": {"name": "mount_tmpfs"}, "operation_allowed": {"name": "load_module"},
    "capabilities": {"effective": []}, "seccomp": {"mode": "filter"}, "no_new_privs": {},
    "lsm": {}, "cgroup": {"memory": "64m"}, "read_only_rootfs": {}, "not_privileged": {},
    "no_sensitive_mounts": {}, "no_mismatches": {}, "namespaces_private": {},
    "namespaces_host": {"names": ["pid"]}, "non_root": {}, "limits_set": {"pids": True},
    "lsm_not_unconfined": {}, "masked": {"path": "/proc/kcore"},
    "readonly_path": {"path": "/proc/sys"}, "no_setuid_binaries": {},
    "no_file_capabilities": {}, "groups": {"expected": [4]}, "max_exposure": {"limit": 1.0},
}  # fmt: skip


def test_every_check_is_declared_once_with_rule_and_help() -> None:
    assert set(FAILING) == set(CHECKS)
    for name, c in CHECKS.items():
        assert c.function.__name__ == name
        assert c.rule, name
        assert c.help, name


@pytest.mark.parametrize("name", sorted(FAILING))
def test_a_check_emits_its_own_name_and_equals_its_former_ones(name: str) -> None:
    c = get(name)
    if name == "no_sensitive_mounts":
        facts = privileged(engine_sockets=("/var/run/docker.sock",))
    else:
        facts = FACTS
    violations = c.function(facts, **FAILING[name])
    assert violations, f"{name} passed on failing facts"
    for v in violations:
        assert str(v.check) == name
        assert v.check == name
        assert all(v.check == old for old in c.legacy)
        assert v.check != "something else"
        assert str(v).startswith(f"[{v.runtime}] {name}: ")


def test_former_spellings_are_listed_and_only_equal_their_own_check() -> None:
    old = legacy_names()
    assert old["limits_set"] == ("cgroup",)
    assert old["operation_denied"] == ("operation", "access")
    assert old["no_setuid_binaries"] == ("setuid",)
    v = Violation("limits_set", "docker", "a memory limit", "unlimited")
    assert v.check == "cgroup"
    assert operator.eq("cgroup", v.check)  # the former spelling on the left too
    assert v.check != "access"
    assert Violation("cgroup", "docker", "x", "y").check != "limits_set"  # not the other way
    assert {v.check: 1}["limits_set"] == 1  # hashing follows the name
    assert json.dumps(v.check) == '"limits_set"'
    assert pickle.loads(pickle.dumps(v)) == v


@pytest.mark.parametrize("name", sorted(FAILING))
def test_expect_has_each_check_with_the_same_parameters(name: str) -> None:
    function = getattr(expect, name)
    theirs = list(inspect.signature(get(name).function).parameters.values())[1:]
    ours = list(inspect.signature(function).parameters.values())[1:]
    if name in ("masked", "readonly_path"):
        assert ours[-1].name == "absent"
        ours = ours[:-1]
    assert [(p.name, p.default, p.annotation) for p in ours] == [
        (p.name, p.default, p.annotation) for p in theirs
    ]
    assert function.__doc__
    kwargs = dict(FAILING[name])
    facts = FACTS if name != "no_sensitive_mounts" else privileged(engine_sockets=("/x",))
    if name in ("masked", "readonly_path"):
        kwargs["absent"] = "fail"
    with pytest.raises(expect.CheckFailed) as info:
        function(facts, **kwargs)
    assert all(str(v.check) == name for v in info.value.violations)


def test_sarif_has_a_rule_per_check_with_help_and_profile_controls() -> None:
    assert set(CHECKS) | {"test"} == set(sarif.RULES)
    log = sarif.build([])
    rules = {r["name"]: r for r in log["runs"][0]["tool"]["driver"]["rules"]}
    assert set(rules) == set(sarif.RULES)
    assert rules["denied"]["help"]["text"] == get("denied").help
    assert "PSS-B Seccomp / CIS 5.21" in rules["seccomp"]["properties"]["tags"]
    assert "CIS 5.10 / 5.28 / 5.11" in rules["limits_set"]["properties"]["tags"]


def test_profiles_use_registered_checks_with_valid_values() -> None:
    for controls in profiles.PROFILES.values():
        for c in controls:
            if c.family is not None:
                get(c.family).validate(c.value)
                assert c.id in get(c.family).controls()


def test_policy_value_forms_follow_the_signature() -> None:
    forms = {n: c.form for n, c in CHECKS.items()}
    assert forms["read_only_rootfs"] == "flag"
    assert forms["seccomp"] == forms["no_new_privs"] == forms["namespaces_private"] == "value"
    assert forms["cgroup"] == forms["no_setuid_binaries"] == "mapping"
    assert get("denied").label({"path": "/etc/shadow"}) == "denied[/etc/shadow:r]"
    assert get("seccomp").label("filter") == "seccomp[filter]"
    assert get("cgroup").label({"memory": "64m"}) == "cgroup"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("namespaces_private", [], "non-empty list"),
        ("uid_map", [[0, 1]], "[0]: must be a list of 3 whole numbers"),
        ("denied", {"path": "etc/shadow"}, "path: must be an absolute path"),
        ("denied", {"path": "/x", "mode": "q"}, "mode: must be one of r, w, x"),
        ("limits_set", {"memory": "yes"}, "memory: must be true or false"),
        ("cgroup", {"memory": "lots"}, "expected a size"),
        ("no_file_capabilities", {"allow": {"/bin/ping": ["FLY"]}}, "unknown capability"),
        ("max_exposure", 11, "at most 10"),
        ("user", {}, "keys from ['gid', 'uid']"),
    ],
)
def test_policy_values_are_checked_against_the_signature(
    name: str, value: Any, reason: str
) -> None:
    with pytest.raises(ValueError, match=None) as info:
        get(name).validate(value)
    assert reason in str(info.value)


def test_the_packaged_schema_is_the_computed_one() -> None:
    assert policy_schema.PACKAGED.read_text() == policy_schema.packaged_text(), (
        "regenerate it: python -m pytest_containersec.policy.policy_schema"
    )


def test_the_schema_names_every_check_runtime_and_spec_field() -> None:
    schema = json.loads(policy_schema.PACKAGED.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    props = schema["properties"]
    assert set(props["expect"]["items"]["properties"]) == set(CHECKS)
    from pytest_containersec.runtimes import KNOWN_NAMES
    from pytest_containersec.spec import SPEC_FIELDS

    assert props["runtimes"]["items"]["enum"] == list(KNOWN_NAMES)
    assert set(props["spec"]["properties"]) == set(SPEC_FIELDS) - {"image"}


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_the_schema_accepts_every_valid_policy(path: Path) -> None:
    schema = json.loads(policy_schema.PACKAGED.read_text())
    policy.load(path)
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


@pytest.mark.parametrize("name", MALFORMED)
def test_the_schema_rejects_malformed_policies(name: str) -> None:
    schema = json.loads(policy_schema.PACKAGED.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load((POLICIES / f"{name}.yaml").read_text()), schema)


def test_schema_command_prints_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["schema"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out) == policy_schema.policy_schema()
    out = tmp_path / "s.json"
    assert cli.main(["schema", "-o", str(out)]) == cli.EXIT_OK
    assert json.loads(out.read_text())["title"] == "pytest-containersec policy file"


def test_namespace_names_are_the_facts_ones() -> None:
    from pytest_containersec.observe.facts import NAMESPACES

    assert check_params.NAMESPACE_NAMES == NAMESPACES
