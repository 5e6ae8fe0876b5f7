"""Policy files: good ones load; broken ones name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_containersec.checks import profiles
from pytest_containersec.errors import PolicyError
from pytest_containersec.policy import policy

from .factories import facts

DATA = Path(__file__).parent.parent / "data" / "policies"


def test_good_policy() -> None:
    p = policy.load(DATA / "good.yaml")
    assert p.name == "hardened"
    assert p.runtimes == ("docker", "nspawn")
    assert p.spec.user == "1000"
    assert p.spec.memory == 64 * 1024**2
    own = [e for e in p.expectations if not e.source]
    assert [e.family for e in own] == [
        "capabilities",
        "seccomp",
        "denied",
        "cgroup",
        "max_exposure",
    ]
    assert own[2].line == 15
    assert own[2].name == "denied[/etc/shadow:r]"
    assert "/etc/shadow:r" in p.access_keys()
    from_profile = [e for e in p.expectations if e.source]
    assert len(from_profile) == len([c for c in profiles.RESTRICTED if c.family])
    assert all(e.source.startswith("restricted ") for e in from_profile)


@pytest.mark.parametrize(
    ("name", "line", "key", "reason"),
    [
        ("unknown-family", 4, "capabilitiez", "unknown check family"),
        ("bad-memory", 2, "memory", "expected a size"),
        ("unknown-spec", 3, "usr", "unknown spec field"),
        ("flag-false", 3, "read_only_rootfs", "must be true"),
        ("bad-cap", 3, "capabilities", "unknown capability"),
        ("denied-no-path", 3, "denied", "needs a path"),
        ("bad-runtime", 2, "runtimes", "unknown ['rkt']"),
        ("checks-nothing", 1, "expect", "checks nothing"),
        ("broken-yaml", 4, "yaml", ""),
        ("duplicate", 2, "image", "duplicate key"),
        ("bad-seccomp", 3, "seccomp", "must be a string"),
    ],
)
def test_broken_policies_name_file_line_and_key(
    name: str, line: int, key: str, reason: str
) -> None:
    path = DATA / f"{name}.yaml"
    with pytest.raises(PolicyError) as info:
        policy.load(path)
    err = info.value
    assert (err.path, err.line, err.key) == (str(path), line, key)
    assert reason in err.reason
    assert str(err).startswith(f"{path}:{line}: {key}: ")


def test_missing_file() -> None:
    with pytest.raises(PolicyError, match="No such file"):
        policy.load(DATA / "nope.yaml")


def test_expectations_evaluate_on_facts() -> None:
    p = policy.load(DATA / "good.yaml")
    by_family = {e.family: e for e in p.expectations if not e.source}
    f = facts()  # default docker: root, default caps, no limits
    assert by_family["capabilities"].evaluate(f)
    assert by_family["seccomp"].evaluate(f) == []
    assert by_family["cgroup"].evaluate(f)
    assert by_family["max_exposure"].evaluate(f)[0].check == "exposure"


def test_every_profile_control_maps_to_a_known_family() -> None:
    for controls in profiles.PROFILES.values():
        for c in controls:
            assert c.family is None or c.family in policy.FAMILIES, c.id
            if c.family is None:
                assert c.note, c.id
    md = profiles.controls_markdown()
    assert "PSS-R Capabilities" in md
    assert "does not apply" in md
