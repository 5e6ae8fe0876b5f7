"""What a failed check read: the recording view gives every check the same verdict as the
real Facts, and each recorded field resolves to a value in short."""

from __future__ import annotations

import pytest

from pytest_containersec import expect
from pytest_containersec.checks.check_registry import get
from pytest_containersec.checks.facts_read import (
    _Recorder,
    _View,
    describe,
    fields_read,
    short,
    value_at,
)
from pytest_containersec.model import AccessResult, Capabilities

from .factories import facts
from .test_check_registry import FACTS, FAILING


@pytest.mark.parametrize("name", sorted(FAILING))
def test_the_view_judges_like_the_facts_and_its_fields_resolve(name: str) -> None:
    check = get(name)
    args = FAILING[name]
    paths = fields_read(check.function, FACTS, args)
    assert paths, name
    view = _View(FACTS, "", _Recorder())
    assert check.function(view, **args) == check.function(FACTS, **args)
    for path in paths:
        value_at(FACTS, path)  # raises on a path that does not exist
    assert [p for p, _ in describe(FACTS, paths)]


def test_the_fields_of_simple_checks() -> None:
    f = facts(no_new_privs=False)
    assert fields_read(get("no_new_privs").function, f, {}) == ["no_new_privs"]
    paths = fields_read(get("capabilities").function, f, {"effective": []})
    assert "capabilities.effective" in paths
    paths = fields_read(get("denied").function, f, {"path": "/etc/shadow"})
    assert "access[/etc/shadow:r]" in paths
    assert describe(f, ["access[/etc/shadow:r]"]) == [
        ("access[/etc/shadow:r]", "(allowed=true, errno=none)")
    ]
    assert describe(f, ["access[/nope:r]"]) == [("access[/nope:r]", "(not present)")]


def test_a_check_the_view_cannot_run_reports_no_fields() -> None:
    def picky(f: object) -> list[object]:
        assert type(f).__name__ == "Facts"
        return []

    assert fields_read(picky, facts(), {}) == []


def test_values_in_short() -> None:
    assert short(False) == "false"
    assert short(None) == "none"
    assert short(()) == "[] (none)"
    assert short((0, 100000, 65536)) == "(0, 100000, 65536)"
    assert short(AccessResult(False, "EPERM")) == "(allowed=false, errno=EPERM)"
    caps = tuple(f"CAP_{i}" for i in range(10))
    assert short(caps).endswith(", ... 2 more of 10]")
    assert short(Capabilities()).startswith("(effective=[] (none), ")


def test_check_failed_names_expected_observed_and_what_was_read() -> None:
    with pytest.raises(expect.CheckFailed) as info:
        expect.no_new_privs(facts(no_new_privs=False))
    text = str(info.value)
    assert text.startswith("[docker] no_new_privs: expected True, observed False")
    assert text.endswith("  facts read:\n    no_new_privs = false")
    assert info.value.facts_read == [("no_new_privs", "false")]
    assert "capabilities" not in text
