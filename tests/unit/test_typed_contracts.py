"""The typed contracts: Declared, and the closed sets (seccomp mode, mismatch source) that
Facts JSON is validated against when it is read back."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest

from pytest_containersec.linux import procfs
from pytest_containersec.model import (
    MISMATCH_SOURCES,
    PROBE_MISMATCH_FIELD,
    SECCOMP_MODES,
    Capabilities,
    Declared,
    Facts,
    Mismatch,
    MismatchSource,
    ProcessRecord,
    SeccompMode,
    User,
    one_of,
)
from pytest_containersec.observe import analyze
from pytest_containersec.observe.facts import declared_mismatches, requested
from pytest_containersec.spec import ContainerSpec

from .factories import facts

DATA = Path(__file__).parent.parent / "data" / "facts"


def _with_process() -> Facts:
    p = ProcessRecord(1, 4242, "sleep", ("sleep", "1000"), User(0, 0, 0, 0), Capabilities(),
                      "filter", False, main=True)  # fmt: skip
    return facts(
        processes=(p,),
        mismatches=(Mismatch("user.uid", 1000, 0, "inside"),),
        declared={"engine": "docker", "seccomp": "default", "memory": 67108864},
    )


def _json_with(change: Any) -> str:
    d = json.loads(_with_process().to_json())
    change(d)
    return json.dumps(d)


def test_the_closed_sets_are_their_literals() -> None:
    assert SECCOMP_MODES == get_args(SeccompMode) == ("disabled", "strict", "filter")
    assert set(procfs.SECCOMP_MODES.values()) == set(SECCOMP_MODES)
    assert get_args(MismatchSource) == MISMATCH_SOURCES
    assert analyze.SOURCE in MISMATCH_SOURCES


def test_round_trip_with_processes_and_declared() -> None:
    f = _with_process()
    assert Facts.from_json(f.to_json()) == f


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("seccomp", lambda d: d.update(seccomp="filtered")),
        ("processes[].seccomp", lambda d: d["processes"][0].update(seccomp=2)),
        ("mismatch source", lambda d: d["mismatches"][0].update(source="engine")),
    ],
)
def test_from_json_rejects_a_value_outside_its_set(where: str, change: Any) -> None:
    text = _json_with(change)
    with pytest.raises(
        ValueError, match=rf"^{re.escape(where)}: unknown value .* \(expected one of "
    ):
        Facts.from_json(text)


def test_one_of_names_the_value_and_the_set() -> None:
    assert one_of("filter", SECCOMP_MODES, "seccomp") == "filter"
    with pytest.raises(ValueError, match="seccomp: unknown value None") as info:
        one_of(None, SECCOMP_MODES, "seccomp")
    assert "disabled, strict, filter" in str(info.value)


def test_json_of_the_first_version_still_loads() -> None:
    """Facts JSON as the first release wrote it (model.py of commit eed6a2a): no processes,
    identity, masked paths or sources; a docker declaration of that time."""
    text = (DATA / "docker-eed6a2a.json").read_text()
    f = Facts.from_json(text)
    assert (f.runtime, f.seccomp, f.host_pid) == ("docker", "filter", 4242)
    assert f.declared == json.loads(text)["declared"]
    assert f.declared.get("memory") == 64 * 1024**2
    assert [(m.field, m.source) for m in f.mismatches] == [
        ("cgroup.memory_max", "declared"),
        ("user.uid", "inside"),
    ]
    assert f.processes == ()
    assert f.identity is None
    assert f.masked == {}
    assert Facts.from_json(f.to_json()) == f


def test_declared_keys_declared_does_not_list_are_kept() -> None:
    d = json.loads(_with_process().to_json())
    d["declared"]["a_future_key"] = {"x": [1]}
    f = Facts.from_json(json.dumps(d))
    assert f.to_dict()["declared"]["a_future_key"] == {"x": [1]}
    assert f.declared["seccomp"] == "default"


def test_the_probe_mismatch_reads_back() -> None:
    f = replace(facts(), mismatches=(Mismatch(PROBE_MISMATCH_FIELD, "unmodified", "x", "probe"),))
    assert Facts.from_json(f.to_json()).probe_modified == "x"


def test_requested_is_the_spec_in_declared_shape() -> None:
    spec = ContainerSpec(user="1000:1000", cap_drop=["ALL"], seccomp="/etc/profile.json",
                         memory="64m", cpus=0.5, pids_limit=50, pid="host", uts="host",
                         group_add=[1234, "wheel"], tmpfs=["/run:size=1m"], read_only=True)  # fmt: skip
    expected: Declared = {
        "user": "1000:1000",
        "cap_add": [],
        "cap_drop": ["ALL"],
        "privileged": False,
        "seccomp": "custom",
        "no_new_privileges": False,
        "read_only": True,
        "memory": 64 * 1024**2,
        "cpus": 0.5,
        "pids_limit": 50,
        "pid_mode": "host",
        "uts_mode": "host",
        "group_add": ["1234", "wheel"],
        "tmpfs": ["/run"],
    }
    assert requested(spec) == expected
    assert requested(ContainerSpec())["seccomp"] == "default"
    assert requested(ContainerSpec(seccomp="unconfined"))["seccomp"] == "unconfined"
    assert "ipc_mode" not in requested(spec)


def test_declared_mismatches_of_a_requested_spec() -> None:
    spec = ContainerSpec(memory="64m", pids_limit=50, cpus=0.5, pid="host", group_add=[1234])
    f = facts(namespaces={"pid": "private"})
    got = {
        (m.field, str(m.expected), m.source)
        for m in declared_mismatches(f, requested(spec), "spec")
    }
    assert got == {
        ("cgroup.memory_max", str(64 * 1024**2), "spec"),
        ("cgroup.pids_max", "50", "spec"),
        ("cgroup.cpu_max", "0.5", "spec"),
        ("namespaces.pid", "host", "spec"),
        ("user.groups", "[1234]", "spec"),
    }
