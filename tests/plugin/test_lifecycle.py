"""Container lifecycle: reuse scope, keep policy, strict mode, reaping, interrupts, xdist."""

from __future__ import annotations

import pytest

from tests.plugin.helpers import FakeEnv

TWO_MODULES = {
    "test_one": """
import pytest

@pytest.mark.containersec(user="1000")
def test_a(containersec_container): pass

@pytest.mark.containersec(user="1000")
def test_b(containersec_container): pass

@pytest.mark.containersec(user="2000")
def test_c(containersec_container): pass

class TestK:
    @pytest.mark.containersec(user="1000")
    def test_d(self, containersec_container): pass

    @pytest.mark.containersec(user="1000")
    def test_e(self, containersec_container): pass
""",
    "test_two": """
import pytest

@pytest.mark.containersec(user="1000")
def test_f(containersec_container): pass
""",
}


@pytest.mark.parametrize(
    ("reuse", "starts"),
    [
        (None, 3),  # default (module): test_one {1000, 2000}, test_two {1000}
        ("module", 3),
        ("function", 6),
        ("class", 5),  # a test outside a class is its own class scope (pytest's rule)
        ("session", 2),  # {1000, 2000}
    ],
)
def test_reuse_scope(fake: FakeEnv, reuse: str | None, starts: int) -> None:
    fake.pytester.makepyfile(**TWO_MODULES)
    args = ["--containersec-runtime=docker,podman"]
    if reuse:
        args.append(f"--containersec-reuse={reuse}")
    fake.run(*args).assert_outcomes(passed=12)
    started = fake.events("start")
    count = {rt: sum(e["runtime"] == rt for e in started) for rt in ("docker", "podman")}
    assert count == {"docker": starts, "podman": starts}
    assert len(fake.events("stop")) == len(started)  # everything stopped


def test_reuse_shares_the_same_container_object(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        seen = {}

        def test_a(containersec_container):
            seen["a"] = containersec_container.id

        def test_b(containersec_container):
            assert containersec_container.id == seen["a"]
        """
    )
    fake.run("--containersec-runtime=docker", "-p", "no:randomly").assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("keep", "kept"),
    [("never", []), ("failed", ["test_bad"]), ("always", ["test_good", "test_bad"])],
)
def test_keep_policy(fake: FakeEnv, keep: str, kept: list[str]) -> None:
    fake.pytester.makepyfile(
        test_keep="""
        import pytest

        def test_good(containersec_container): pass

        @pytest.mark.containersec(user="1")
        def test_bad(containersec_container):
            assert False
        """
    )
    r = fake.run("--containersec-runtime=docker", f"--containersec-keep={keep}")
    r.assert_outcomes(passed=1, failed=1)
    forgotten = [e["name"] for e in fake.events("forget")]
    stopped = [e["name"] for e in fake.events("stop")]
    assert len(forgotten) == len(kept)
    assert not set(forgotten) & set(stopped)
    out = r.stdout.str()
    for test in kept:
        why = "failed test" if test == "test_bad" else "test"
        r.stdout.fnmatch_lines(
            [
                f"containersec: [[]docker] kept container containersec-fake-docker-* (id *, host "
                f"pid *) of {why} test_keep.py::{test}[[]docker]; remove it with "
                "`docker rm -f containersec-fake-docker-*`, or the next containersec "
                "session reaps it"
            ]
        )
    if not kept:
        assert "kept container" not in out


def test_a_container_that_cannot_be_stopped_is_said_not_hidden(
    fake: FakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTAINERSEC_FAKE_STOP_FAILS", "podman")
    fake.pytester.makepyfile("def test_a(containersec_container): pass")
    r = fake.run("--containersec-runtime=docker,podman")
    r.assert_outcomes(passed=2)  # the tests passed; the leftover is the session's to say
    r.stdout.fnmatch_lines(
        [
            "containersec: [[]podman] could not stop container containersec-fake-podman-* "
            "(host pid *): *the fake engine stopped answering*; the next session's reap "
            "removes it"
        ]
    )
    assert "could not stop container containersec-fake-docker" not in r.stdout.str()


def test_keep_via_ini(fake: FakeEnv) -> None:
    fake.pytester.makeini("[pytest]\ncontainersec_keep = always\n")
    fake.pytester.makepyfile("def test_a(containersec_container): pass")
    r = fake.run("--containersec-runtime=docker")
    assert "kept container" in r.stdout.str()
    assert fake.events("stop") == []


def test_strict_fails_on_a_skipped_runtime(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(test_s="def test_a(containersec_container): pass")
    fake.unavailable("podman")
    assert fake.run().ret == pytest.ExitCode.OK
    r = fake.run("--containersec-strict")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(
        [
            "*= containersec strict mode =*",
            "--containersec-strict: 1 container test run(s) skipped, so the session fails "
            "(exit status 1):",
            "  test_s.py::test_a [[]podman]: podman: unavailable: fake engine is down "
            "(fix: start it)",
        ]
    )


def test_strict_fails_on_an_unsupported_spec_and_via_ini(fake: FakeEnv) -> None:
    fake.pytester.makeini("[pytest]\ncontainersec_strict = true\n")
    fake.pytester.makepyfile(
        test_s="""
        import pytest

        @pytest.mark.containersec(userns="auto")
        def test_a(containersec_container): pass
        """
    )
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_UNSUPPORTED", "userns")
    r = fake.run("--containersec-runtime=docker")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(
        ["  test_s.py::test_a [[]docker]: docker: spec field 'userns' is not supported: *"]
    )


def test_strict_fails_when_no_selected_runtime_matches_the_marker(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        @pytest.mark.containersec(runtimes=["nspawn"])
        def test_a(containersec_container): pass
        """
    )
    r = fake.run("--containersec-runtime=docker", "--containersec-strict")
    assert r.ret == pytest.ExitCode.TESTS_FAILED


def test_strict_passes_when_nothing_is_skipped(fake: FakeEnv) -> None:
    fake.pytester.makepyfile("def test_a(containersec_container): pass")
    assert fake.run("--containersec-strict").ret == pytest.ExitCode.OK


def test_reap_once_per_used_runtime_and_never_for_unused_ones(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        def test_a(containersec_container): pass
        def test_b(containersec_container): pass

        @pytest.mark.containersec(runtimes=["podman"])
        def test_c(containersec_container): pass
        """
    )
    fake.unavailable("nspawn")
    fake.run("--containersec-runtime=docker,podman").assert_outcomes(passed=5)
    assert sorted(e["runtime"] for e in fake.events("reap")) == ["docker", "podman"]
    assert {e["runtime"] for e in fake.events("availability")} == {"docker", "podman"}


def test_keyboard_interrupt_stops_every_container(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        @pytest.mark.containersec(user="1")
        def test_a(containersec_container, containersec_start):
            containersec_start(user="2")
            raise KeyboardInterrupt

        def test_b(containersec_container): pass
        """
    )
    r = fake.run("--containersec-runtime=docker", "--containersec-reuse=session")
    assert r.ret == pytest.ExitCode.INTERRUPTED
    assert len(fake.events("start")) == 3  # test_b's was started ahead
    assert len(fake.events("stop")) == 3
    assert [e["runtime"] for e in fake.events("close")] == ["docker"]


def test_sigterm_unwinds_like_ctrl_c(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import os, signal

        def test_a(containersec_container):
            os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    r = fake.run("--containersec-runtime=docker")
    assert r.ret == pytest.ExitCode.INTERRUPTED
    r.stdout.fnmatch_lines(["*KeyboardInterrupt*signal 15 (SIGTERM): stopping containers*"])
    assert len(fake.events("stop")) == 1


def test_sigterm_handler_is_restored(fake: FakeEnv) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    fake.pytester.makepyfile("def test_a(containersec_container): pass")
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_xdist_matrix_properties_and_usage_errors(fake: FakeEnv) -> None:
    pytest.importorskip("xdist")
    fake.pytester.makepyfile(
        test_x="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_a(containersec_container, n):
            assert containersec_container.name.startswith("containersec-fake-")
        """
    )
    r = fake.run("-n", "2", "--containersec-runtime=docker,nspawn", "--junitxml=j.xml")
    r.assert_outcomes(passed=8)
    r.stdout.fnmatch_lines(["test_x.py::test_a[[]0]  PASS    PASS"])
    assert "containersec_engine" in (fake.pytester.path / "j.xml").read_text()
    fake.pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.containersec(usr="1")
        def test_bad(containersec_container): pass
        """
    )
    r = fake.run("-n", "2", "--containersec-runtime=docker")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stdout.fnmatch_lines(
        [
            "*containersec usage errors (exit status 4)*",
            "test_bad.py::test_bad: @pytest.mark.containersec: unknown field 'usr'*",
        ]
    )
