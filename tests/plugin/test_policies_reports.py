"""Policy files as test items, SARIF, the exposure gate and the facts matrices (fakes)."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_containersec.model import Facts

from .helpers import FakeEnv

SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "sarif-schema-2.1.0.json").read_text())
POLICY = """\
name: app
image: containersec/probe
spec:
  cap_drop: [ALL]
expect:
  - capabilities: {effective: []}
  - read_only_rootfs: true
"""
TEST = """\
import pytest
from pytest_containersec import expect

@pytest.mark.containersec(cap_drop=["ALL"], read_only=True)
def test_confined(containersec_container):
    expect.capabilities(containersec_container, effective=[])
"""


def test_policy_items_per_expectation_and_runtime(fake: FakeEnv) -> None:
    fake.pytester.makefile(".yaml", **{"containersec-app": POLICY})
    fake.unavailable("nspawn")
    r = fake.run("-v", "-rs")
    r.assert_outcomes(passed=3, failed=3, skipped=2)
    r.stdout.fnmatch_lines([
        "*containersec-app.yaml::capabilities[[]docker[]] PASSED*",
        "*containersec-app.yaml::read_only_rootfs[[]podman[]] FAILED*",
    ])  # fmt: skip
    r.stdout.fnmatch_lines([
        "*containersec-app.yaml:7: read_only_rootfs",
        "[[]docker[]] read_only_rootfs: expected read-only root file system, observed writable",
        "*",
        "  facts read:",
        "    rootfs_read_only = false",
    ])  # fmt: skip
    starts = fake.events("start")
    assert sorted(e["runtime"] for e in starts) == ["docker", "podman", "podman-rootless"]
    assert len(fake.events("stop")) == 3  # one container per runtime, stopped at file end


def test_policy_schema_error_names_file_line_and_key(fake: FakeEnv) -> None:
    fake.pytester.makefile(".yaml", **{"containersec-bad": "image: x\nexpect:\n  - seccomp: on\n"})
    r = fake.run()
    assert r.ret == 2  # collection error
    r.stdout.fnmatch_lines(
        ["*containersec policy error: *containersec-bad.yaml:3: seccomp: must be a string*"]
    )


def test_other_yaml_files_are_not_policies(fake: FakeEnv) -> None:
    fake.pytester.makefile(".yaml", config="a: 1\n")
    fake.pytester.makepyfile("def test_x():\n    pass\n")
    fake.run().assert_outcomes(passed=1)


def test_sarif_from_a_session(fake: FakeEnv) -> None:
    fake.pytester.makefile(".yaml", **{"containersec-app": POLICY})
    fake.pytester.makepyfile(TEST)
    r = fake.run("--containersec-sarif=out/cs.sarif", "--containersec-runtime=docker")
    r.assert_outcomes(passed=2, failed=1)
    log = json.loads((fake.pytester.path / "out" / "cs.sarif").read_text())
    import jsonschema

    jsonschema.validate(log, SCHEMA)
    [result] = log["runs"][0]["results"]
    assert result["ruleId"] == "containersec/read_only_rootfs"
    assert result["properties"]["runtime"] == "docker"
    loc = result["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "containersec-app.yaml"
    assert loc["region"]["startLine"] == 7


def test_max_exposure_gate(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(TEST)
    r = fake.run("--containersec-runtime=docker", "--containersec-max-exposure=0.1")
    r.assert_outcomes(passed=1)
    assert r.ret == 1
    r.stdout.fnmatch_lines([
        "*containersec exposure above 0.1 (exit status 1)*",
        "[[]docker[]] containersec/probe cap_drop=ALL read_only=True: exposure * > 0.1",
    ])  # fmt: skip
    ok = fake.run("--containersec-runtime=docker", "--containersec-max-exposure=10")
    assert ok.ret == 0


def test_facts_matrix_in_the_terminal_and_report(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(TEST)
    r = fake.run("--containersec-runtime=docker,podman", "--containersec-report=r.json", "-v")
    r.stdout.fnmatch_lines([
        "*containersec facts: containersec/probe cap_drop=ALL read_only=True (test_facts_matrix*",
        "*docker*podman*",
        "rootfs read-only*true*true*",
        "test_confined*PASS ok*PASS ok*",
    ])  # fmt: skip
    data = json.loads((fake.pytester.path / "r.json").read_text())
    [container] = data["containers"]
    assert container["runtimes"] == ["docker", "podman"]
    whole = {e["runtime"]: Facts.from_dict(e["facts"]) for e in data["facts"]}
    assert sorted(whole) == ["docker", "podman"]
    assert whole["docker"].rootfs_read_only
