"""Unit tests of the plugin's pure parts: testinfra backend, matrix, option parsing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_containersec.observe.testinfra_backend import ContainersecBackend, host_for
from pytest_containersec.plugin import assertrepr
from pytest_containersec.plugin.options import split_names
from pytest_containersec.plugin.session_report import write
from pytest_containersec.report.matrix import Matrix, classify
from pytest_containersec.runtimes.base import PROBE_BUSYBOX
from pytest_containersec.spec import ContainerSpec
from tests.plugin.fake_runtime import FakeRuntime


def test_testinfra_runs_command_strings_through_the_probe_shell() -> None:
    c = FakeRuntime("podman").start(ContainerSpec())
    host = host_for(c)
    assert host is host_for(c)  # cached per container
    out = host.run("echo %s", "hello")
    assert out.rc == 0
    assert out.stdout == "hello\n"
    assert c.execs[-1] == [PROBE_BUSYBOX, "sh", "-c", "echo hello"]  # type: ignore[attr-defined]
    host.run("cat %s", "/etc/my file; rm -rf /")
    assert c.execs[-1][-1] == "cat '/etc/my file; rm -rf /'"  # type: ignore[attr-defined]
    assert host.backend.get_pytest_id() == f"containersec://podman/{c.name}"
    with pytest.raises(AssertionError):
        host.check_output("false")


def test_backend_argv() -> None:
    c = FakeRuntime("nspawn").start(ContainerSpec())
    b = ContainersecBackend(c)
    assert b.argv("id -u %s", "x y") == [PROBE_BUSYBOX, "sh", "-c", "id -u 'x y'"]
    assert b.get_encoding() == "utf-8"


def _rep(when: str, outcome: str, **extra: Any) -> Any:
    longrepr = ("f.py", 1, "Skipped: engine down") if outcome == "skipped" else None
    fields: dict[str, Any] = {
        "containersec_runtime": "docker",
        "containersec_test": "t.py::test_a",
        "containersec_engine": "Docker 1",
        **extra,
    }
    return SimpleNamespace(
        when=when, outcome=outcome, passed=outcome == "passed", failed=outcome == "failed",
        skipped=outcome == "skipped", longrepr=longrepr, **fields,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("phases", "cell"),
    [
        ([("setup", "passed"), ("call", "passed"), ("teardown", "passed")], "PASS"),
        ([("setup", "passed"), ("call", "failed"), ("teardown", "passed")], "FAIL"),
        ([("setup", "failed"), ("teardown", "passed")], "ERROR"),
        ([("setup", "passed"), ("call", "passed"), ("teardown", "failed")], "ERROR"),
        ([("setup", "skipped"), ("teardown", "passed")], "SKIP [1]"),
        ([("setup", "passed"), ("call", "failed"), ("teardown", "failed")], "ERROR"),
    ],
)
def test_matrix_folds_phases(phases: list[tuple[str, str]], cell: str) -> None:
    m = Matrix()
    for when, outcome in phases:
        m.record(_rep(when, outcome))
    assert m.lines()[1].split("  ", 1)[1].strip() == cell


def test_classify_xfail() -> None:
    assert classify(_rep("call", "skipped", wasxfail="")) == ("xfailed", "")
    assert classify(_rep("call", "passed", wasxfail="")) == ("xpassed", "")
    assert classify(_rep("setup", "passed")) == (None, "")


def test_matrix_ignores_reports_of_other_tests_but_collects_kept() -> None:
    m = Matrix()
    m.record(SimpleNamespace(when="teardown", containersec_kept=["kept x"]))
    assert m.rows == {}
    assert m.kept == ["kept x"]
    assert m.lines() == []


def test_matrix_writers(tmp_path: Path) -> None:
    m = Matrix(host={"kernel": "6.1", "cgroup": "v2"})
    m.record(_rep("call", "passed"))
    m.record(_rep("setup", "skipped", containersec_runtime="nspawn", containersec_engine=""))
    write(tmp_path / "m.json", m, [])
    data = json.loads((tmp_path / "m.json").read_text())["tests"]
    assert data["tests"] == [
        {"test": "t.py::test_a", "results": {
            "docker": {"outcome": "passed", "reason": ""},
            "nspawn": {"outcome": "skipped", "reason": "engine down"}}}
    ]  # fmt: skip
    write(tmp_path / "m.md", m, [])
    assert (tmp_path / "m.md").read_text().splitlines()[2:8] == [
        "runtimes: docker = Docker 1; nspawn = unavailable (kernel 6.1, cgroup v2)",
        "",
        "| test | docker | nspawn |",
        "|---|---|---|",
        "| t.py::test_a | PASS | SKIP [1] |",
        "",
    ]
    write(tmp_path / "sub" / "m.html", m, [])
    assert "<td>t.py::test_a</td>" in (tmp_path / "sub" / "m.html").read_text()


def test_split_names() -> None:
    assert split_names(["docker,podman", "nspawn docker"]) == ("docker", "podman", "nspawn")
    assert split_names(" podman-rootless , ") == ("podman-rootless",)
    assert split_names([]) == ()


def test_human_size_and_ranges() -> None:
    assert assertrepr.human_size(None) == "unlimited"
    assert assertrepr.human_size(512) == "512 bytes"
    assert assertrepr.human_size(64 * 1024**2) == "64 MiB (67108864 bytes)"
    assert assertrepr.human_size(1536 * 1024**2) == "1.5 GiB (1610612736 bytes)"
    assert assertrepr.fmt_ranges([(0, 100000, 65536)]) == "0-65535 -> 100000-165535 (65536 ids)"
    assert assertrepr.fmt_ranges([]) == "(empty)"


def test_compare_leaves_other_values_to_pytest() -> None:
    assert assertrepr.compare("==", {"a"}, {"b"}, "docker") is None
    assert assertrepr.compare("==", 1, 2, None) is None
    assert assertrepr.compare("!=", {"CAP_A"}, {"CAP_A"}, None) is None
    assert assertrepr.compare("==", {"CAP_A"}, {"CAP_B"}, None) == [
        "capability sets differ",
        "capabilities: missing (expected, not observed): CAP_B",
        "capabilities: extra (observed, not expected): CAP_A",
    ]


def test_the_packages_modules_are_imported_without_assertion_rewriting() -> None:
    # imported after the plugin registered (this session's own plugin): pytest's rewriting
    # would parse each module again in every process where bytecode is not written
    from _pytest.assertion.rewrite import AssertionRewritingHook

    from pytest_containersec.plugin import fixtures, hooks, options, plugin

    for module in (fixtures, hooks, options):  # all but the small entry point module
        assert not isinstance(module.__loader__, AssertionRewritingHook), module.__name__
    assert plugin.pytest_runtest_makereport is hooks.pytest_runtest_makereport
