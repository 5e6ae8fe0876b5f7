"""Quiet by default, whole on demand: the terminal summary fits the terminal's width,
facts matrices appear only for specs with a failure or a mismatch (all with ``-v``), and
a failed check reports what it read instead of the whole Facts JSON (fakes)."""

from __future__ import annotations

import json
import re

from pytest_containersec.report import report

from .helpers import FakeEnv

SEVEN = ("docker", "podman", "podman-rootless", "nspawn", "docker-userns", "docker-rootless", "lxc")

WIDE = """
import pytest
from pytest_containersec import expect

@pytest.mark.containersec(memory="64m")
def test_no_new_privs(containersec_container):
    expect.no_new_privs(containersec_container)

@pytest.mark.containersec(memory="64m")
def test_cgroup(containersec_container):
    expect.cgroup(containersec_container, memory="64m")
"""


def _section(out: str, title: str) -> list[str]:
    """The lines of one terminal summary section, up to the next one."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line) + 1
    end = next(i for i in range(start, len(lines)) if re.match(r"^[-=]{3,} ", lines[i]))
    return lines[start:end]


def _cells(block: list[str], columns: list[str]) -> dict[tuple[str, str], str]:
    """(row, column) -> cell text (wrapped lines joined, spaces removed) of one block."""
    head = block[0]
    starts = [head.index(c) for c in columns]
    bounds = [*starts, 10_000]
    out: dict[tuple[str, str], str] = {}
    row = ""
    for line in block[1:]:
        if line.startswith("-- "):
            continue
        label = line[: starts[0]].strip()
        row = label or row
        for i, c in enumerate(columns):
            part = line[bounds[i] : bounds[i + 1]]
            out[row, c] = out.get((row, c), "") + "".join(part.split())
    return out


def test_a_narrow_terminal_splits_the_matrices_and_every_cell_appears(fake: FakeEnv) -> None:
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_MORE", "docker-userns,docker-rootless,lxc")
    fake.monkeypatch.setenv("COLUMNS", "100")
    fake.pytester.makepyfile(test_wide=WIDE)
    r = fake.run(f"--containersec-runtime={','.join(SEVEN)}", "--containersec-report=r.json")
    r.assert_outcomes(passed=7, failed=7)
    out = r.stdout.str()
    facts_lines = [x for x in _section(out, "containersec facts: ") if "report written" not in x]
    tests_lines = _section(out, "containersec matrix")
    assert max(len(line) for line in facts_lines + tests_lines) <= 100
    # the facts matrix: several blocks, each repeating the row names
    blocks = "\n".join(facts_lines).split("\n\n")
    assert len(blocks) > 1
    seen: dict[tuple[str, str], str] = {}
    for block in blocks:
        lines = block.splitlines()
        columns = lines[0].split()
        assert any(line.startswith("no_new_privs ") for line in lines)
        seen.update(_cells(lines, columns))
    [matrix] = json.loads((fake.pytester.path / "r.json").read_text())["containers"]
    assert matrix["runtimes"] == list(SEVEN)
    for row in matrix["rows"]:
        for rt, cell in row["cells"].items():
            want = "".join(report._text(report.Cell(**cell)).split())
            assert seen[row["name"], rt] == want, (row["name"], rt)
    assert seen["test_no_new_privs", "lxc"] == "FAILFalse"
    # the tests x runtimes matrix: split too, every runtime's verdicts there
    blocks = "\n".join(tests_lines).split("\n\n")
    assert len(blocks) > 1
    verdicts: dict[tuple[str, str], str] = {}
    for block in blocks:
        lines = [line for line in block.splitlines() if not line.startswith(("runtimes:", " "))]
        verdicts.update(_cells(lines, lines[0].split()[1:]))
    for rt in SEVEN:
        assert verdicts["test_wide.py::test_no_new_privs", rt] == "FAIL"
        assert verdicts["test_wide.py::test_cgroup", rt] == "PASS"


PASSING = """
from pytest_containersec import expect

def test_ok(containersec_container):
    expect.seccomp(containersec_container, "filter")
"""


def test_a_passing_session_shows_no_facts_matrix_unless_verbose(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(test_ok=PASSING)
    r = fake.run("--containersec-runtime=docker,podman")
    r.assert_outcomes(passed=2)
    out = r.stdout.str()
    assert "containersec facts:" not in out
    r.stdout.fnmatch_lines(
        [
            "containersec: 1 facts matrix(es) not shown (1 without a failed test or a",
            "    mismatch): -v shows them, --containersec-report=FILE.html writes them",
        ]
    )
    r = fake.run("--containersec-runtime=docker,podman", "-v")
    r.stdout.fnmatch_lines(["*- containersec facts: containersec/probe (test_ok.py) -*"])
    assert "not shown" not in r.stdout.str()


def test_a_mismatch_shows_its_matrix_and_only_that_one(fake: FakeEnv) -> None:
    fake.monkeypatch.setenv("CONTAINERSEC_FAKE_IGNORE_MEMORY", "podman-rootless")
    fake.pytester.makepyfile(
        test_mm="""
        import pytest
        from pytest_containersec import expect

        @pytest.mark.containersec(memory="64m")
        def test_limited(containersec_container):
            expect.seccomp(containersec_container, "filter")

        def test_plain(containersec_container):
            expect.seccomp(containersec_container, "filter")
        """
    )
    r = fake.run("--containersec-runtime=docker,podman-rootless")
    r.assert_outcomes(passed=4)
    out = r.stdout.str()
    assert "containersec facts: containersec/probe memory=64m (test_mm.py)" in out
    assert "containersec facts: containersec/probe (test_mm.py)" not in out
    r.stdout.fnmatch_lines(["memory limit*64m*unlimited"])
    assert "containersec: 1 facts matrix(es) not shown" in out


def test_a_failed_check_reports_what_it_read_not_the_whole_json(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        test_nnp="""
        from pytest_containersec import expect

        def test_nnp(containersec_container):
            expect.no_new_privs(containersec_container)
        """
    )
    r = fake.run("--containersec-runtime=docker")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(
        [
            "E *CheckFailed: [[]docker] no_new_privs: expected True, observed False",
            "E *hint: *",
            "E *facts read:",
            "E *no_new_privs = false",
            "*- containersec facts [[]docker] containersec-fake-docker-* -*",
            "the whole Facts JSON: --containersec-keep=failed or -vv (here), *",
        ]
    )
    out = r.stdout.str()
    assert '"no_new_privs"' not in out
    assert '"capabilities"' not in out
    assert "engine rootless:" not in out  # the check's own lines say it all
    r = fake.run("--containersec-runtime=docker", "--containersec-keep=failed")
    assert '"no_new_privs": false' in r.stdout.str()


def test_an_assertion_on_facts_names_the_field_not_the_snapshot(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        test_plain="""
        def test_nnp(containersec_container):
            assert containersec_container.facts().no_new_privs
        """
    )
    r = fake.run("--containersec-runtime=docker")
    r.stdout.fnmatch_lines(["E        +  where False = <Facts docker host_pid=*>.no_new_privs"])
    assert "Facts(runtime=" not in r.stdout.str()
