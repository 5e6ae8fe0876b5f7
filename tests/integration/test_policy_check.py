"""`containersec check` runs a policy on every runtime: JUnit, SARIF and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema

from pytest_containersec.runtimes import RUNTIME_NAMES

from .conftest import runtime_or_skip

DATA = Path(__file__).parent.parent / "data"
POLICY = """\
name: confined
image: containersec/probe
spec:
  user: "1000"
  cap_drop: [ALL]
  read_only: true
  memory: 64m
expect:
  - capabilities: {effective: [], absent: [ALL]}
  - seccomp: filter
  - read_only_rootfs: true
  - denied: {path: /etc/shadow, mode: r, errno: EACCES}
  - cgroup: {memory: 64m}
"""


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_containersec.cli.cli", "check", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_policy_on_every_runtime(tmp_path: Path) -> None:
    for name in RUNTIME_NAMES:
        runtime_or_skip(name)  # in CI every runtime must be there
    policy = tmp_path / "containersec-confined.yaml"
    policy.write_text(POLICY)
    junit = tmp_path / "out.xml"
    r = check(str(policy), "--format", "junit", "--output", str(junit))
    root = ET.parse(junit).getroot()
    cases = root.findall("testcase")
    assert len(cases) == 5 * len(RUNTIME_NAMES)
    failed = {(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None}
    # engines that enforce limits pass everything; the others may fail the memory limit
    # only (rootless engines on cgroup v1; systemd without a delegated memory controller)
    enforcing = {"docker", "podman", "nspawn", "docker-userns"}
    assert {name for _, name in failed} <= {"cgroup"}
    assert not [cls for cls, _ in failed if str(cls).split(".", 1)[1] in enforcing]
    if Path("/sys/fs/cgroup/memory").is_dir():  # cgroup v1: rootless limits are ignored
        for rt in ("podman-rootless", "docker-rootless"):
            assert (f"containersec-confined.{rt}", "cgroup") in failed
    assert r.returncode == (1 if failed else 0), r.stdout + r.stderr
    assert f"{len(cases) - len(failed)} passed, {len(failed)} failed, 0 skipped" in r.stderr


def test_sarif_and_exit_codes(tmp_path: Path) -> None:
    runtime_or_skip("docker")
    policy = tmp_path / "containersec-root.yaml"
    policy.write_text(
        "image: containersec/probe\nexpect:\n  - non_root: true\n  - seccomp: filter\n"
    )
    out = tmp_path / "r.sarif"
    r = check(str(policy), "--runtime", "docker", "--format", "sarif", "--output", str(out))
    assert r.returncode == 1
    log = json.loads(out.read_text())
    jsonschema.validate(log, json.loads((DATA / "sarif-schema-2.1.0.json").read_text()))
    [result] = log["runs"][0]["results"]
    assert result["ruleId"] == "containersec/non_root"
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == 3
    bad = tmp_path / "containersec-bad.yaml"
    bad.write_text("image: x\nexpect:\n  - seccomp: sometimes\n")
    r = check(str(bad))
    assert r.returncode == 2
    assert "containersec-bad.yaml:3: seccomp" in r.stderr
    missing = tmp_path / "containersec-missing.yaml"
    missing.write_text("image: containersec/no-such-image\nexpect:\n  - seccomp: filter\n")
    r = check(str(missing), "--runtime", "docker")
    assert r.returncode == 2
    assert "image 'containersec/no-such-image' not found locally" in r.stderr
