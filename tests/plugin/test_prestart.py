"""Concurrent starts: a scope's containers are started together, ahead of its tests."""

from __future__ import annotations

import pytest

from tests.plugin.helpers import FakeEnv

MODULE = """
import json, os, time, pytest

def mark(name):
    with open(os.environ["CONTAINERSEC_FAKE_EVENTS"], "a") as fh:
        fh.write(json.dumps({"op": "test", "name": name, "t": time.monotonic()}) + "\\n")

@pytest.mark.containersec(user="1")
def test_a(containersec_container):
    mark("a")

@pytest.mark.containersec(user="2")
def test_b(containersec_container):
    mark("b")

@pytest.mark.containersec(user="3")
def test_c(containersec_container):
    mark("c")
"""


def _order(fake: FakeEnv) -> list[str]:
    return [e["op"] for e in fake.events() if e["op"] in ("start", "test")]


def test_a_modules_containers_start_together_before_its_first_test(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(MODULE)
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_START_DELAY", "0.3")
    fake.run("--containersec-runtime=docker,podman").assert_outcomes(passed=6)
    starts = fake.events("start")
    first_test = min(e["t"] for e in fake.events("test"))
    # the default 4 at a time: the first four began before any test ran
    assert sorted(e["began"] for e in starts)[3] < first_test
    # the starts overlapped: some began before another ended
    overlapping = [
        (a["name"], b["name"]) for a in starts for b in starts
        if a is not b and a["began"] < b["began"] < a["ended"]
    ]  # fmt: skip
    assert overlapping
    assert len(fake.events("stop")) == 6


def test_parallel_1_starts_each_when_its_test_asks(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(MODULE)
    fake.run("--containersec-runtime=docker", "--containersec-parallel=1").assert_outcomes(passed=3)
    assert _order(fake) == ["start", "test"] * 3


def test_a_failed_start_fails_only_its_tests(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(MODULE)
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_FAIL_USER", "2")
    r = fake.run("--containersec-runtime=docker")
    r.assert_outcomes(passed=2, errors=1)
    r.stdout.fnmatch_lines(["*ERROR at setup of test_b*", "*the fake refused to start*"])
    assert len(fake.events("stop")) == 2


def test_containers_no_test_took_are_stopped_with_their_scope(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        MODULE
        + """
@pytest.mark.skipif(True, reason="not today")
@pytest.mark.containersec(user="4")
def test_d(containersec_container):
    pass
"""
    )
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=3, skipped=1)
    started = {e["name"] for e in fake.events("start")}
    assert started == {e["name"] for e in fake.events("stop")}


SESSION_END_CONFTEST = """

def pytest_sessionfinish(session):
    with open(os.environ["CONTAINERSEC_FAKE_EVENTS"], "a") as fh:
        fh.write(json.dumps({"op": "sessionfinish", "t": time.monotonic()}) + "\\n")
"""


def test_a_scopes_containers_stop_in_the_background_while_the_next_scope_runs(
    fake: FakeEnv,
) -> None:
    fake.pytester.makepyfile(test_one=MODULE, test_two=MODULE.replace('mark("', 'mark("2'))
    fake.pytester.makeconftest(fake.conftest() + SESSION_END_CONFTEST)
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_STOP_DELAY", "0.4")
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_STOP_FAILS", "podman")
    r = fake.run("--containersec-runtime=podman,docker")
    r.assert_outcomes(passed=12)
    stops = fake.events("stop")
    assert len(stops) == 6  # docker's; podman's six failed, each said (below)
    tests = {e["name"]: e["t"] for e in fake.events("test")}  # docker's: the later ones
    # test_one's docker containers were still stopping when test_two's docker tests ran
    assert min(e["ended"] for e in stops) > min(tests[n] for n in ("2a", "2b", "2c"))
    # ... and every stop was over before the session ended
    assert max(e["ended"] for e in stops) < fake.events("sessionfinish")[0]["t"]
    assert r.stdout.str().count("containersec: [podman] could not stop container") == 6


def test_parallel_1_stops_a_scopes_containers_before_the_next_test(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(test_one=MODULE, test_two=MODULE.replace('mark("', 'mark("2'))
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_STOP_DELAY", "0.1")
    fake.run("--containersec-runtime=docker", "--containersec-parallel=1").assert_outcomes(passed=6)
    stops = fake.events("stop")
    first_of_two = min(e["t"] for e in fake.events("test") if e["name"].startswith("2"))
    assert len(stops) == 6
    assert sorted(e["ended"] for e in stops)[2] < first_of_two


def test_unsupported_and_unavailable_still_skip_with_their_reason(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(MODULE)
    fake.unavailable("podman")
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_UNSUPPORTED", "user")
    r = fake.run("--containersec-runtime=docker")
    r.assert_outcomes(skipped=3)
    r.stdout.no_fnmatch_line("*Traceback*")


@pytest.mark.parametrize("value", ["0", "x", "65"])
def test_a_bad_parallel_value_is_a_usage_error(fake: FakeEnv, value: str) -> None:
    fake.pytester.makepyfile("def test_a(): pass")
    r = (
        fake.run(f"--containersec-parallel={value}")
        if value != "x"
        else fake.run("-o", "containersec_parallel=x")
    )
    assert r.ret == pytest.ExitCode.USAGE_ERROR


LOOP_CONFTEST = """

@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    with open(os.environ["CONTAINERSEC_FAKE_EVENTS"], "a") as fh:
        fh.write(json.dumps({"op": "loop", "t": time.monotonic()}) + "\\n")
"""


def test_the_runtimes_of_collected_tests_are_made_ready_before_the_first_test(
    fake: FakeEnv,
) -> None:
    fake.pytester.makepyfile(MODULE)
    fake.pytester.makeconftest(fake.conftest() + LOOP_CONFTEST)
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_REAP_DELAY", "0.3")
    fake.run("--containersec-runtime=docker,podman,nspawn", "-k", "not nspawn").assert_outcomes(
        passed=6, deselected=3
    )
    reaps = fake.events("reap")
    loop = fake.events("loop")[0]["t"]
    assert sorted(r["runtime"] for r in reaps) == ["docker", "podman"]  # once each, as used
    assert all(r["began"] < loop for r in reaps)  # before the test loop began


SLOW_MODULE = """
import json, os, time
time.sleep(0.4)  # collected after test_a.py, slowly
with open(os.environ["CONTAINERSEC_FAKE_EVENTS"], "a") as fh:
    fh.write(json.dumps({"op": "collected", "t": time.monotonic()}) + "\\n")

def test_plain():
    pass
"""


def test_without_deselection_the_runtimes_are_made_ready_while_tests_are_collected(
    fake: FakeEnv,
) -> None:
    fake.pytester.makepyfile(test_a=MODULE, test_z=SLOW_MODULE)
    fake.run("--containersec-runtime=docker,podman").assert_outcomes(passed=7)
    reaps = fake.events("reap")
    assert sorted(r["runtime"] for r in reaps) == ["docker", "podman"]
    assert all(r["began"] < fake.events("collected")[0]["t"] for r in reaps)


def test_collect_only_makes_nothing_ready(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(MODULE)
    fake.run("--containersec-runtime=docker", "--collect-only").assert_outcomes()
    assert fake.events("reap") == []


def test_a_failed_reap_ahead_errors_the_first_test_there(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(MODULE)
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_REAP_FAIL", "podman")
    r = fake.run("--containersec-runtime=docker,podman")
    r.assert_outcomes(passed=5, errors=1)
    r.stdout.fnmatch_lines(["*ERROR at setup of test_*podman*", "*lost its containers*"])
    assert len(fake.events("reap")) == 2
