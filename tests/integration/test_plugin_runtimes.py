"""The plugin against real runtimes: parametrization, reuse, testinfra, keep, xdist.

Each test runs pytest in a subprocess on a small project; the inner tests record what they
saw (container names, ids, host pids) in JSON files that the outer test checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec.runtimes import RUNTIME_NAMES
from tests.integration.test_plugin_signals import docker_leftovers, wait_gone

RECORDING = """
import json, os, pathlib

def record(c, test):
    out = pathlib.Path(os.environ.get("CS_RECORD", "records"))
    out.mkdir(exist_ok=True)
    data = {"test": test, "runtime": c.runtime, "name": c.name, "id": c.id,
            "pid": c.host_pid, "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}
    (out / f"{test}-{c.runtime}-{c.name}.json").write_text(json.dumps(data))
"""

SUITE = (
    RECORDING
    + """
import pytest
from pytest_containersec import expect

pytestmark = pytest.mark.containersec(cap_drop=["ALL"])

@pytest.mark.containersec(user="1000", no_new_privileges=True)
def test_confined(containersec_container, containersec_runtime):
    c = containersec_container
    record(c, "confined")
    assert c.runtime == containersec_runtime.name
    expect.capabilities(c, effective=set())
    expect.user(c, uid=1000)
    expect.no_new_privs(c)

@pytest.mark.containersec(user="1000", no_new_privileges=True)
def test_reused(containersec_container):
    record(containersec_container, "reused")

def test_testinfra(containersec_container):
    record(containersec_container, "testinfra")
    host = containersec_container.testinfra
    assert host.file("/etc/passwd").exists
    assert host.file("/etc/passwd").mode == 0o644
    assert not host.file("/nonexistent").exists
    assert host.user("root").uid == 0
    assert host.check_output("echo %s", "a b") == "a b"
    assert host.run("exit 3").rc == 3
    assert any("sleep" in p.args for p in host.process.filter())

def test_factory(containersec_start):
    a = containersec_start(user="1000")
    b = containersec_start(user="1000", read_only=True)
    record(a, "factory-a")
    record(b, "factory-b")
    assert a.id != b.id
    expect.read_only_rootfs(b)
"""
)


def run_pytest(path: Path, *args: str) -> tuple[int, str]:
    # -rfEs: the reasons of failures, errors and skips come last, where a cut log still shows them
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", *args]
    env = {**os.environ, "COLUMNS": "400"}  # wide: each matrix in one block, one line a row
    proc = subprocess.run(argv, cwd=path, capture_output=True, text=True, timeout=600, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted((path / "records").glob("*.json"))]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "test_suite.py").write_text(SUITE)
    return tmp_path


def check_no_leftovers(recs: list[dict[str, Any]]) -> None:
    assert wait_gone([r["pid"] for r in recs]) == []
    assert docker_leftovers([r["name"] for r in recs if r["runtime"] == "docker"]) == []


def test_every_available_runtime_with_module_reuse(project: Path) -> None:
    rc, out = run_pytest(project, "-v")
    assert rc == 0, out
    assert "test_confined[docker] PASSED" in out
    recs = records(project)
    runtimes = [rt for rt in RUNTIME_NAMES if any(r["runtime"] == rt for r in recs)]
    assert "docker" in runtimes
    for rt in ("podman", "podman-rootless", "nspawn"):
        assert rt in runtimes or f"{rt}: unavailable" in out, out  # ran, or skipped with why
    for rt in runtimes:
        by_test = {r["test"]: r for r in recs if r["runtime"] == rt}
        assert by_test["confined"]["id"] == by_test["reused"]["id"]  # same spec: shared
        assert by_test["testinfra"]["id"] != by_test["confined"]["id"]  # another spec
        assert by_test["factory-b"]["id"] != by_test["factory-a"]["id"]
    assert "= containersec matrix =" in out
    assert re.search(r"^test +" + " +".join(re.escape(rt) for rt in runtimes) + "$", out, re.M)
    assert re.search(r"^test_suite\.py::test_confined +(PASS +)+PASS$", out, re.M), out
    assert "containersec: docker: available, Docker" in out
    check_no_leftovers(recs)


def test_function_reuse_restarts(project: Path) -> None:
    rc, out = run_pytest(project, "--containersec-runtime=docker", "--containersec-reuse=function")
    assert rc == 0, out
    by_test = {r["test"]: r for r in records(project)}
    assert by_test["confined"]["id"] != by_test["reused"]["id"]
    check_no_leftovers(records(project))


def test_xdist_two_workers(project: Path) -> None:
    pytest.importorskip("xdist")
    for i in range(3):
        (project / f"test_more{i}.py").write_text(
            RECORDING
            + f"""
import pytest

@pytest.mark.parametrize("n", range(3))
def test_n(containersec_container, n):
    record(containersec_container, "more{i}-" + str(n))
"""
        )
    rc, out = run_pytest(project, "-n", "2", "--containersec-runtime=docker", "--junitxml=j.xml")
    assert rc == 0, out
    recs = records(project)
    assert {r["worker"] for r in recs} == {"gw0", "gw1"}
    sessions = {r["worker"]: {r["name"].split("-")[1] for r in recs if r["worker"] == w}
                for w in ("gw0", "gw1") for r in recs if r["worker"] == w}  # fmt: skip
    assert len(sessions["gw0"]) == len(sessions["gw1"]) == 1
    assert sessions["gw0"] != sessions["gw1"]  # names never collide between workers
    assert re.search(r"^test_more0\.py::test_n\[0\] +PASS$", out, re.MULTILINE), out
    junit = (project / "j.xml").read_text()
    assert '<property name="containersec_runtime" value="docker" />' in junit
    check_no_leftovers(recs)


def test_keep_failed_then_reaped(project: Path) -> None:
    (project / "test_fail.py").write_text(
        RECORDING
        + """
def test_fails(containersec_container):
    record(containersec_container, "fails")
    assert False
"""
    )
    rc, out = run_pytest(project, "test_fail.py", "--containersec-runtime=docker",
                         "--containersec-keep=failed")  # fmt: skip
    assert rc == 1, out
    (rec,) = records(project)
    assert f"kept container {rec['name']}" in out
    assert f"docker rm -f {rec['name']}" in out
    assert docker_leftovers([rec["name"]]) == [rec["name"]]  # kept running
    rc, out = run_pytest(project, "test_suite.py", "--containersec-runtime=docker", "-k", "reused")
    assert rc == 0, out
    check_no_leftovers([rec])  # the next session reaped it
