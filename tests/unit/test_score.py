"""Exposure score: bands, host-equivalent findings, monotonicity."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_containersec.checks.score import band, score
from pytest_containersec.linux.caps import CAP_NAMES
from pytest_containersec.model import Capabilities, Cgroup, Mount

from .factories import facts, privileged, rootless


def confined() -> object:
    return replace(
        rootless(),
        capabilities=Capabilities(),
        no_new_privs=True,
        rootfs_read_only=True,
        cgroup=Cgroup(2, "/x", 64 << 20, 50, 0.5),
        operations={k: replace(v, allowed=False) for k, v in rootless().operations.items()},
    )


def test_bands() -> None:
    assert [band(v) for v in (0.0, 0.9, 1.0, 4.9, 5.0, 7.5, 9.0, 10.0)] == [
        "SAFE",
        "SAFE",
        "OK",
        "OK",
        "MEDIUM",
        "EXPOSED",
        "UNSAFE",
        "UNSAFE",
    ]


def test_confined_is_low_and_default_docker_is_higher() -> None:
    low = score(confined())  # type: ignore[arg-type]
    default = score(facts())
    assert low.value < 1.0
    assert low.band == "SAFE"
    assert default.value > low.value


def test_privileged_without_userns_is_host_equivalent() -> None:
    s = score(privileged())
    assert s.value == 10.0
    assert "privileged" in s.reason


def test_privileged_in_a_user_namespace_is_still_the_top_band() -> None:
    s = score(privileged(uid_map=((0, 100000, 65536),)))
    assert s.value >= 9.0
    assert s.band == "UNSAFE"


def test_engine_socket_or_writable_host_root_is_host_equivalent() -> None:
    assert score(rootless(engine_sockets=("/var/run/docker.sock",))).value == 10.0
    root = Mount("/host", "ext4", "/dev/vda", "/", False, ("rw",), "/")
    assert score(rootless(mounts=(root,), host_root_mounts=("/host",))).value == 10.0
    ro = replace(root, read_only=True)
    assert score(rootless(mounts=(ro,), host_root_mounts=("/host",))).value < 10.0


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.sampled_from(CAP_NAMES)),
    st.sampled_from(CAP_NAMES),
    st.booleans(),
    st.sampled_from(["filter", "disabled"]),
)
def test_dropping_a_capability_never_raises_the_score(
    caps: set[str], drop: str, userns: bool, seccomp: str
) -> None:
    base = privileged() if seccomp == "disabled" else facts()
    if userns:
        base = replace(base, uid_map=((0, 100000, 65536),))
    names = tuple(sorted(caps | {drop}))
    before = replace(base, capabilities=Capabilities(names, names, names, (), ()))
    rest = tuple(c for c in names if c != drop)
    after = replace(base, capabilities=Capabilities(rest, rest, rest, (), ()))
    assert score(after).value <= score(before).value


def test_privileged_is_always_the_maximum_band() -> None:
    for f in (
        privileged(),
        privileged(uid_map=((0, 100000, 65536),)),
        privileged(no_new_privs=True),
    ):
        assert score(f).band == "UNSAFE"
