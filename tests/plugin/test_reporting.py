"""Header, terminal matrix, JUnit properties, failure sections, assertion explanations."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pytest_containersec.linux import hostinfo, procfs
from tests.plugin.helpers import FakeEnv

MIXED = """
import pytest

def test_pass(containersec_container): pass

def test_fail(containersec_container, containersec_runtime):
    assert containersec_runtime.name != "podman", "podman is not wanted"

@pytest.mark.containersec(userns="auto")
def test_unsupported(containersec_container): pass

def test_plain(): pass
"""


def test_header_without_container_tests_probes_nothing(fake: FakeEnv) -> None:
    fake.pytester.makepyfile("def test_plain(): pass")
    r = fake.run()
    kernel, cgroup = hostinfo.kernel(), hostinfo.cgroup_version()
    r.stdout.fnmatch_lines([f"containersec: kernel {kernel}, cgroup v{cgroup}"])
    assert "containersec: docker" not in r.stdout.str()
    assert "containersec matrix" not in r.stdout.str()
    assert fake.events() == []


def test_header_lists_the_runtimes_of_collected_container_tests(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(MIXED)
    fake.unavailable("nspawn")
    r = fake.run("--collect-only", "-q")
    r.stdout.fnmatch_lines(
        [
            "containersec: docker: available, Fake docker 1.0",
            "containersec: podman: available, Fake podman 1.0",
            "containersec: podman-rootless: available, Fake podman-rootless 1.0",
            "containersec: nspawn: unavailable: fake engine is down (fix: start it)",
        ]
    )
    assert fake.events("start") == []


def test_terminal_matrix(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(test_matrix=MIXED)
    fake.unavailable("nspawn")
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_UNSUPPORTED", "userns")
    fake.monkeypatch.setenv("COLUMNS", "200")  # one block, lines unwrapped
    r = fake.run()
    r.assert_outcomes(passed=6, failed=1, skipped=6)
    kernel, cgroup = hostinfo.kernel(), hostinfo.cgroup_version()
    r.stdout.fnmatch_lines(
        [
            "*= containersec matrix =*",
            "test                              docker    podman    podman-rootless  nspawn",
            "test_matrix.py::test_pass         PASS      PASS      PASS             SKIP [[]1]",
            "test_matrix.py::test_fail         PASS      FAIL      PASS             SKIP [[]1]",
            "test_matrix.py::test_unsupported  SKIP [[]2]  SKIP [[]3]  SKIP [[]4]         SKIP [[]1]",
            "[[]1] nspawn: unavailable: fake engine is down (fix: start it)",
            "[[]2] docker: spec field 'userns' is not supported: the fake cannot express it",
            "[[]3] podman: spec field 'userns' is not supported: the fake cannot express it",
            "[[]4] podman-rootless: spec field 'userns' is not supported: the fake cannot express it",
            "runtimes: docker = Fake docker 1.0; podman = Fake podman 1.0; podman-rootless = "
            f"Fake podman-rootless 1.0; nspawn = unavailable (kernel {kernel}, cgroup v{cgroup}, "
            f"LSM {procfs.read_host_lsm() or 'none'})",
        ],
        consecutive=True,
    )


def test_junit_properties(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(test_junit=MIXED)
    fake.unavailable("nspawn")
    fake.run("--junitxml=junit.xml", "--containersec-runtime=docker")
    root = ET.parse(fake.pytester.path / "junit.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_pass[docker]"].iter("property")}
    assert props == {
        "containersec_runtime": "docker",
        "containersec_engine": "Fake docker 1.0",
        "containersec_kernel": hostinfo.kernel(),
        "containersec_cgroup": f"v{hostinfo.cgroup_version()}",
    }
    assert list(cases["test_plain"].iter("property")) == []


def test_failure_has_logs_and_a_facts_summary(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        def test_fail(containersec_container):
            assert containersec_container.exec(["x"]).rc == 0
        """
    )
    r = fake.run("--containersec-runtime=docker")
    r.stdout.fnmatch_lines(
        [
            "*- containersec logs [[]docker] containersec-fake-docker-* -*",
            "fake log of containersec-fake-docker-*",
            "*- containersec facts [[]docker] containersec-fake-docker-* -*",
            "engine rootless: false",
            "uid (inside -> host): 0 -> 0",
            "*",
            "the whole Facts JSON: --containersec-keep=failed or -vv (here), "
            "--containersec-report=FILE.json (a file)",
        ]
    )
    assert '"runtime": "docker",' not in r.stdout.str()


def test_the_whole_facts_json_on_demand(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        def test_fail(containersec_container):
            assert containersec_container.exec(["x"]).rc == 0
        """
    )
    for extra in ("--containersec-keep=failed", "-vv"):
        r = fake.run("--containersec-runtime=docker", extra)
        r.stdout.fnmatch_lines(
            [
                "*- containersec facts [[]docker] containersec-fake-docker-* -*",
                "{",
                '  "access": {},',
            ]
        )
        assert '"runtime": "docker",' in r.stdout.str()


def test_passing_tests_carry_no_sections(fake: FakeEnv) -> None:
    fake.pytester.makepyfile("def test_ok(containersec_container): pass")
    r = fake.run("--containersec-runtime=docker", "-rA")
    assert "containersec logs" not in r.stdout.str()


ASSERTS = """
import pytest
from pytest_containersec.model import Capabilities, Cgroup

@pytest.mark.containersec(runtimes=["podman-rootless"])
def test_caps(containersec_container):
    eff = set(containersec_container.facts().capabilities.effective)
    assert eff == {"CAP_CHOWN", "CAP_SETUID", "CAP_SYS_ADMIN"}

@pytest.mark.containersec(runtimes=["podman-rootless"])
def test_caps_subset(containersec_container):
    eff = set(containersec_container.facts().capabilities.effective)
    assert eff <= {"CAP_CHOWN"}

@pytest.mark.containersec(runtimes=["podman-rootless"], cap_add=["CAP_NET_ADMIN"])
def test_capabilities_object(containersec_container):
    assert containersec_container.facts().capabilities == Capabilities(
        ("CAP_CHOWN",), ("CAP_CHOWN",), ("CAP_CHOWN",))

@pytest.mark.containersec(runtimes=["podman-rootless"])
def test_uid_map(containersec_container):
    assert containersec_container.facts().uid_map == ((0, 1000, 1), (1, 100000, 65536))

@pytest.mark.containersec(runtimes=["podman-rootless"], memory="64m", pids_limit=10)
def test_cgroup(containersec_container):
    assert containersec_container.facts().cgroup == Cgroup(2, "/fake", 128 * 1024**2, 10, None)

@pytest.mark.containersec(runtimes=["podman-rootless"])
def test_facts(containersec_container, containersec_start):
    other = containersec_start(read_only=True, memory="1536m")
    assert containersec_container.facts() == other.facts()
"""


def test_assertrepr_lines(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(ASSERTS)
    r = fake.run()
    r.assert_outcomes(failed=6)
    r.stdout.fnmatch_lines(
        [
            "E       assert [[]podman-rootless] capability sets differ",
            "E         capabilities: missing (expected, not observed): CAP_SYS_ADMIN",
            "E         capabilities: extra (observed, not expected): CAP_KILL, CAP_NET_RAW",
            "E       assert [[]podman-rootless] capabilities not within the allowed set",
            "E         capabilities: not allowed (observed): CAP_KILL, CAP_NET_RAW, CAP_SETUID",
            "E       assert [[]podman-rootless] capability sets differ",
            "E         effective: extra (observed, not expected): CAP_KILL, CAP_NET_ADMIN, "
            "CAP_NET_RAW, CAP_SETUID",
            "E         permitted: extra (observed, not expected): CAP_KILL, CAP_NET_ADMIN, "
            "CAP_NET_RAW, CAP_SETUID",
            "E         bounding: extra (observed, not expected): CAP_KILL, CAP_NET_ADMIN, "
            "CAP_NET_RAW, CAP_SETUID",
            "E       assert [[]podman-rootless] id maps differ",
            "E         observed: 0-65535 -> 100000-165535 (65536 ids)",
            "E         expected: 0-0 -> 1000-1000 (1 id), 1-65536 -> 100000-165535 (65536 ids)",
            "E       assert [[]podman-rootless] cgroup limits differ",
            "E         cgroup.memory_max: observed 64 MiB (67108864 bytes), "
            "expected 128 MiB (134217728 bytes)",
            "E       assert [[]podman-rootless] Facts differ",
            "E         host_pid: observed *, expected *",
            "E         cgroup.memory_max: observed unlimited, expected 1.5 GiB (1610612736 bytes)",
            "E         rootfs_read_only: observed False, expected True",
        ],
        consecutive=False,
    )
