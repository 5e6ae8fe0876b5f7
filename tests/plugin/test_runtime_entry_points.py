"""A runtime another package ships (a dist-info with a ``pytest_containersec.runtimes``
entry point on sys.path): the plugin selects it, runs tests and policy files on it, and
lists it in ``--help``; an unknown name stays a usage error."""

from __future__ import annotations

from .helpers import FakeEnv

SHIPPED = """\
def make():
    from tests.plugin.fake_runtime import FakeRuntime

    return FakeRuntime("shipped")
"""
POLICY = "image: containersec/probe\nruntimes: [shipped]\nexpect:\n  - seccomp: filter\n"
TEST = """\
import pytest
from pytest_containersec import expect

@pytest.mark.containersec(runtimes=["shipped"])
def test_on_it(containersec_container):
    assert containersec_container.runtime == "shipped"
    expect.no_new_privs(containersec_container, expected=False)
"""


def _install(fake: FakeEnv) -> None:
    path = fake.pytester.path / "site"
    dist = path / "shipped_runtime-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shipped-runtime\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest_containersec.runtimes]\nshipped = shipped_engine:make\n"
    )
    (path / "shipped_engine.py").write_text(SHIPPED)
    fake.monkeypatch.syspath_prepend(str(path))


def test_an_installed_runtime_runs_tests_and_policies(fake: FakeEnv) -> None:
    _install(fake)
    fake.pytester.makefile(".yaml", **{"containersec-app": POLICY})
    fake.pytester.makepyfile(test_app=TEST)
    r = fake.run("-v", "--containersec-runtime=shipped")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines([
        "containersec: shipped: available, Fake shipped 1.0",
        "*containersec-app.yaml::seccomp[[]filter[]][[]shipped[]] PASSED*",
        "*test_app.py::test_on_it[[]shipped[]] PASSED*",
    ])  # fmt: skip
    assert {e["runtime"] for e in fake.events("start")} == {"shipped"}


def test_help_lists_it(fake: FakeEnv) -> None:
    _install(fake)
    r = fake.run("--help")
    text = " ".join(r.stdout.str().split())
    assert "runtimes to run container tests on: docker, podman," in text
    assert ", shipped; podman-kube (kube= specs only)" in text


def test_without_the_package_the_name_is_unknown(fake: FakeEnv) -> None:
    fake.pytester.makefile(".yaml", **{"containersec-app": POLICY})
    r = fake.run("--containersec-runtime=shipped")
    assert r.ret == 4  # pytest's usage error
    r.stderr.fnmatch_lines(["*--containersec-runtime: unknown runtime(s) shipped*"])
    r = fake.run()
    assert r.ret == 2  # the policy file does not collect
    r.stdout.fnmatch_lines(["*containersec policy error: *runtimes: unknown [[]'shipped'[]]*"])


def test_an_optional_engine_runs_only_when_named(fake: FakeEnv) -> None:
    """incus (runtimes.OPTIONAL_NAMES) exists on some hosts only: not selected by default,
    so a host without it neither skips nor lists it."""
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_MORE", "incus")
    fake.pytester.makepyfile(test_app="def test_x(containersec_container):\n    pass\n")
    r = fake.run("-v")
    assert r.ret == 0
    assert "[incus]" not in r.stdout.str()
    assert "incus" not in {e["runtime"] for e in fake.events("start")}
    r = fake.run("-v", "--containersec-runtime=incus")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*test_app.py::test_x[[]incus[]] PASSED*"])
