"""Options and ini keys: runtime selection, image, report paths, validation."""

from __future__ import annotations

import json

import pytest

from tests.plugin.helpers import FakeEnv

CONTAINER_TEST = """
import pytest

def test_a(containersec_container):
    assert containersec_container.name
"""


def test_help_lists_options_and_ini_keys(fake: FakeEnv) -> None:
    r = fake.run("--help")
    out = r.stdout.str()
    for opt in (
        "--containersec-runtime=NAME[,NAME...]",
        "--containersec-image=IMAGE",
        "--containersec-keep={never,failed,always}",
        "--containersec-reuse={function,class,module,session}",
        "--containersec-strict",
        "--containersec-report=PATH",
        "--containersec-sarif=PATH",
        "--containersec-max-exposure=SCORE",
    ):
        assert opt in out
    for key in ("containersec_runtime", "containersec_image", "containersec_keep",
                "containersec_reuse", "containersec_strict", "containersec_report",
                "containersec_sarif", "containersec_max_exposure",
                "containersec_policy_files"):  # fmt: skip
        assert f"  {key} " in out


def test_default_selection_is_every_available_runtime(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(CONTAINER_TEST)
    fake.unavailable("podman-rootless")
    r = fake.run("-v", "-rs")
    r.stdout.fnmatch_lines(
        [
            "*test_a?docker? PASSED*",
            "*test_a?podman? PASSED*",
            "*test_a?podman-rootless? SKIPPED*",
            "*test_a?nspawn? PASSED*",
            "SKIPPED [[]1[]] *podman-rootless: unavailable: fake engine is down (fix: start it)",
        ]
    )
    assert r.ret == 0


def test_named_runtimes_select_and_order(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(CONTAINER_TEST)
    r = fake.run("-v", "--containersec-runtime", "nspawn,docker")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*test_a?nspawn? PASSED*", "*test_a?docker? PASSED*"])  # as named
    r2 = fake.run("-v", "--containersec-runtime", "podman", "--containersec-runtime", "docker")
    r2.assert_outcomes(passed=2)


def test_named_unavailable_runtime_is_a_usage_error(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(CONTAINER_TEST)
    fake.unavailable("podman")
    r = fake.run("--containersec-runtime", "docker,podman")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(
        ["ERROR: --containersec-runtime podman: unavailable: fake engine is down (fix: start it)"]
    )


def test_named_unavailable_runtime_without_container_tests_probes_nothing(
    fake: FakeEnv,
) -> None:
    fake.pytester.makepyfile("def test_plain(): pass")
    fake.unavailable("podman")
    r = fake.run("--containersec-runtime", "podman")
    r.assert_outcomes(passed=1)
    assert fake.events() == []  # no availability probe, no reap, no start


def test_unknown_runtime_name_is_a_usage_error(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(CONTAINER_TEST)
    r = fake.run("--containersec-runtime", "dokcer")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(
        [
            "ERROR: --containersec-runtime: unknown runtime(s) dokcer "
            "(known: docker, podman, podman-rootless, nspawn)"
        ]
    )


def test_ini_keys(fake: FakeEnv) -> None:
    fake.pytester.makeini(
        """
        [pytest]
        containersec_runtime = podman, nspawn
        containersec_image = myapp:1.4
        containersec_reuse = function
        """
    )
    fake.pytester.makepyfile(CONTAINER_TEST + "\ndef test_b(containersec_container): pass\n")
    r = fake.run("-v")
    r.assert_outcomes(passed=4)
    starts = fake.events("start")
    assert sorted({e["runtime"] for e in starts}) == ["nspawn", "podman"]
    assert {e["spec"]["image"] for e in starts} == {"myapp:1.4"}
    assert len(starts) == 4  # reuse = function: one container per test
    # The command line wins over the ini file.
    r = fake.run("-v", "--containersec-runtime=docker")
    r.assert_outcomes(passed=2)


def test_image_option_is_the_default_image_and_the_marker_wins(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        def test_default(containersec_container): pass

        @pytest.mark.containersec(image="other:2")
        def test_marked(containersec_container): pass
        """
    )
    r = fake.run("--containersec-runtime=docker", "--containersec-image=myapp:1.4")
    r.assert_outcomes(passed=2)
    assert sorted(e["spec"]["image"] for e in fake.events("start")) == ["myapp:1.4", "other:2"]


def test_default_image_is_the_probe(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(CONTAINER_TEST)
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=1)
    assert [e["spec"]["image"] for e in fake.events("start")] == ["containersec/probe"]


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--containersec-report=out.xml"], "",
         "ERROR: --containersec-report=out.xml: the file name must end in .json, .md, .html "
         "(the format follows the suffix)"),
        ([], "containersec_keep = sometimes",
         "ERROR: containersec_keep = 'sometimes' is not one of: never, failed, always "
         "(ini file or --containersec_keep)"),
        ([], "containersec_reuse = forever",
         "ERROR: containersec_reuse = 'forever' is not one of: module, function, class, session "
         "(ini file or --containersec_reuse)"),
    ],
)  # fmt: skip
def test_invalid_values_are_usage_errors(
    fake: FakeEnv, args: list[str], ini: str, message: str
) -> None:
    if ini:
        fake.pytester.makeini(f"[pytest]\n{ini}\n")
    fake.pytester.makepyfile(CONTAINER_TEST)
    r = fake.run(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([message])


def test_bad_choice_on_the_command_line_is_rejected_by_argparse(fake: FakeEnv) -> None:
    r = fake.run("--containersec-keep=sometimes")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*argument --containersec-keep: invalid choice: 'sometimes'*"])


@pytest.mark.parametrize("suffix", [".json", ".md", ".html"])
def test_report_formats(fake: FakeEnv, suffix: str) -> None:
    fake.pytester.makepyfile(
        CONTAINER_TEST + "\ndef test_fails(containersec_container):\n    assert False\n"
    )
    fake.unavailable("nspawn")
    r = fake.run(f"--containersec-report=out/matrix{suffix}")
    r.assert_outcomes(passed=3, failed=3, skipped=2)
    path = fake.pytester.path / "out" / f"matrix{suffix}"
    r.stdout.fnmatch_lines([f"containersec: report written to {path}"])
    text = path.read_text()
    if suffix == ".json":
        data = json.loads(text)["tests"]
        assert data["runtimes"]["docker"] == "Fake docker 1.0"
        assert data["runtimes"]["nspawn"] == ""
        assert data["host"]["cgroup"] in ("v1", "v2")
        tests = {t["test"]: t["results"] for t in data["tests"]}
        assert tests["test_report_formats.py::test_a"]["docker"] == {
            "outcome": "passed", "reason": ""}  # fmt: skip
        assert tests["test_report_formats.py::test_fails"]["podman"]["outcome"] == "failed"
        assert tests["test_report_formats.py::test_a"]["nspawn"] == {
            "outcome": "skipped",
            "reason": "nspawn: unavailable: fake engine is down (fix: start it)",
        }
    elif suffix == ".md":
        assert "| test | docker | podman | podman-rootless | nspawn |" in text
        assert "| test_report_formats.py::test_a | PASS | PASS | PASS | SKIP [1] |" in text
        assert "| test_report_formats.py::test_fails | FAIL | FAIL | FAIL | SKIP [1] |" in text
        assert "- [1] nspawn: unavailable: fake engine is down (fix: start it)" in text
    else:
        assert text.startswith("<!DOCTYPE html>")
        assert '<td class="fail">FAIL</td>' in text
        assert "<li>[1] nspawn: unavailable: fake engine is down (fix: start it)</li>" in text


def test_fixtures_are_documented(fake: FakeEnv) -> None:
    r = fake.run("--fixtures")
    r.stdout.fnmatch_lines(
        [
            "*fixtures defined from pytest_containersec.plugin.fixtures*",
            "containersec_runtime [[]session scope] -- *fixtures.py:*",
            "    The runtime (engine adapter) this test runs on; session scope.",
            "containersec_container -- *fixtures.py:*",
            "    The container of the nearest ``@pytest.mark.containersec(...)``, on this runtime.",
            "containersec_start -- *fixtures.py:*",
            "    Factory for several containers in one test, on this test's runtime::",
        ]
    )
    assert "_containersec_pool" not in r.stdout.str()  # private: shown only with -v


def test_fixture_requested_late_still_works(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        def test_late(request, containersec_runtime):
            c = request.getfixturevalue("containersec_container")
            assert c.runtime == containersec_runtime.name
        """
    )
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=1)


def test_a_session_without_container_tests_imports_no_runtime(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import sys

        def pytest_unconfigure(config):
            heavy = ("pytest_containersec.runtimes.docker.docker", "pytest_containersec.runtimes.podman.podman",
                     "pytest_containersec.runtimes.nspawn.nspawn", "docker", "podman",
                     "pytest_containersec.observe.facts", "pytest_containersec.report.matrix")
            print("LOADED:", sorted(m for m in sys.modules if m.startswith(heavy)))
        """
    )
    pytester.makepyfile("def test_plain(): pass")
    r = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", "--containersec-runtime=podman"
    )
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["LOADED: [[][]]"])
