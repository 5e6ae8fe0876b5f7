"""The CLI's exit statuses, run through ``cli.main`` on fake runtimes (no engine contacted):
0 passed, 1 findings only, 2 usage or bad input, 3 nothing judged / runtime missing, 4 an
error that stopped a verdict; the report on stdout, the summary and every error on stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec import runtimes
from pytest_containersec.cli import checkcmd, cli
from pytest_containersec.errors import ContainerStartError, ImageNotFound
from pytest_containersec.model import Declared, Facts, MaskedPath
from pytest_containersec.runtimes import RuntimeEntry
from pytest_containersec.runtimes.base import Availability, Container, ExecResult
from pytest_containersec.spec import ContainerSpec

from .factories import facts

KCORE_ABSENT = MaskedPath("absent", "host-absent")
KCORE_MASKED = MaskedPath("masked", "dev-null", "/proc/kcore", "tmpfs:/null")


class FakeContainer(Container):
    def __init__(self, rt: FakeRuntime, spec: ContainerSpec) -> None:
        self.runtime, self.id, self.name, self.host_pid = rt.name, "f1", "fake", 4242
        self.spec, self.engine_rootless = spec, False
        self._rt = rt

    def exec(self, argv: list[str], timeout: float = 30.0) -> ExecResult:
        raise AssertionError("no exec in these tests")

    def stop(self) -> None:
        self._rt.stopped += 1

    def declared(self) -> Declared:
        return {}

    def logs(self) -> str:
        return ""

    def facts(
        self, access: tuple[str, ...] | list[str] = (), refresh: bool = False, process: Any = None
    ) -> Facts:
        if self._rt.how == "facts-bug":
            raise KeyError("a bug while observing")
        kcore = KCORE_ABSENT if self._rt.how == "absent" else KCORE_MASKED
        return facts(runtime=self.runtime, masked={"/proc/kcore": kcore})


class FakeRuntime:
    """``how``: ok, absent (/proc/kcore absent on this kernel), down, refuses (start fails),
    noimage, avail-bug (availability() raises), facts-bug (facts() raises)."""

    def __init__(self, name: str, how: str) -> None:
        self.name, self.how, self.stopped = name, how, 0

    def availability(self) -> Availability:
        if self.how == "avail-bug":
            raise RuntimeError("engine API changed")
        if self.how == "down":
            return Availability(self.name, False, reason="fake engine is down", hint="start it")
        return Availability(self.name, True, "Fake 1.0")

    def start(self, spec: ContainerSpec) -> Container:
        if self.how == "refuses":
            raise ContainerStartError(self.name, ["fake", "run"], 125, "no such device")
        if self.how == "noimage":
            raise ImageNotFound(self.name, spec.image)
        return FakeContainer(self, spec)

    def reap(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def forget(self, container: Container) -> None:
        pass


def _factory(rt: FakeRuntime) -> Any:
    return lambda: rt


HOWS = ("ok", "absent", "down", "refuses", "noimage", "avail-bug", "facts-bug")


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeRuntime]]:
    """Runtimes ``f-ok``, ``f-absent``, ... installed as if by a package; nothing else known."""
    made = {f"f-{how}": FakeRuntime(f"f-{how}", how) for how in HOWS}
    entries = {n: RuntimeEntry(n, _factory(rt), "engine", "test") for n, rt in made.items()}
    runtimes.registry()  # discover once, then replace what was discovered
    monkeypatch.setattr(runtimes, "_installed", entries)
    yield made
    runtimes.close_all()


def policy(tmp_path: Path, *expect: str) -> str:
    path = tmp_path / "containersec-p.yaml"
    items = "".join(f"  - {e}\n" for e in expect or ("masked: /proc/kcore",))
    path.write_text(f"image: x\nexpect:\n{items}")
    return str(path)


def check(tmp_path: Path, *runtime_names: str, extra: tuple[str, ...] = ()) -> int:
    argv = ["check", policy(tmp_path), *extra]
    for name in runtime_names:
        argv += ["--runtime", f"f-{name}"]
    return cli.main(argv)


# -- containersec check ------------------------------------------------------------------


def test_check_all_passed_is_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(tmp_path, "ok") == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert "containersec check: 1 passed, 0 failed, 0 skipped" in err
    assert "containersec check" not in out  # the report alone on stdout


def test_check_a_finding_is_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", policy(tmp_path, "non_root: true"), "--runtime", "f-ok"]
    assert cli.main(argv) == cli.EXIT_FAILED
    assert "0 passed, 1 failed, 0 skipped" in capsys.readouterr().err


def test_check_only_absent_paths_judged_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Absent paths are not failures (not 1) and not a pass (not 0): nothing was judged (3),
    and the reason is the kernel, not the runtimes."""
    for extra in ((), ("--strict",)):
        assert check(tmp_path, "absent", extra=extra) == cli.EXIT_UNAVAILABLE
        err = capsys.readouterr().err
        assert "nothing was judged" in err
        assert "0 on an unavailable runtime, 1 absent on this kernel" in err
        assert "every runtime unavailable" not in err
        assert "--strict: a runtime was unavailable" not in err


def test_check_absent_beside_a_pass_is_0(tmp_path: Path) -> None:
    assert check(tmp_path, "absent", "ok") == cli.EXIT_OK
    assert check(tmp_path, "absent", "ok", extra=("--strict",)) == cli.EXIT_OK


def test_check_every_runtime_unavailable_is_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(tmp_path, "down") == cli.EXIT_UNAVAILABLE
    assert "(1 on an unavailable runtime, 0 absent on this kernel)" in capsys.readouterr().err
    assert check(tmp_path, "down", "ok") == cli.EXIT_OK
    assert check(tmp_path, "down", "ok", extra=("--strict",)) == cli.EXIT_UNAVAILABLE
    assert "--strict: a runtime was unavailable" in capsys.readouterr().err


def test_check_a_start_failure_is_an_error_not_a_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(tmp_path, "refuses", "ok") == cli.EXIT_ERROR
    out, err = capsys.readouterr()
    assert "1 passed, 0 failed, 0 skipped, 1 error(s)" in err
    assert "error: f-refuses: container failed to start (exit status 125): no such device" in err
    assert "not judged because of an error (not a finding)" in err
    assert "failed to start" in out  # the report notes it too


def test_check_a_finding_beside_an_error_is_1(tmp_path: Path) -> None:
    argv = ["check", policy(tmp_path, "non_root: true"), "--runtime", "f-ok,f-refuses"]
    assert cli.main(argv) == cli.EXIT_FAILED


@pytest.mark.parametrize("how", ["avail-bug", "facts-bug"])
def test_check_a_crashing_adapter_is_an_error_naming_runtime_and_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fakes: dict[str, FakeRuntime], how: str
) -> None:
    """Not a traceback out of the thread pool, not a pass, not a finding: exit 4, the cause
    named, the traceback on stderr; the other runtimes' results still reported."""
    assert check(tmp_path, how, "ok", extra=("--format", "json")) == cli.EXIT_ERROR
    out, err = capsys.readouterr()
    cause = "RuntimeError: engine API changed" if how == "avail-bug" else "KeyError"
    assert f"error: f-{how}: unexpected {cause}" in err
    assert "Traceback (most recent call last)" in err
    results = {r["runtime"]: r["outcome"] for r in json.loads(out)["results"]}
    assert results == {f"f-{how}": "error", "f-ok": "passed"}
    if how == "facts-bug":
        assert fakes["f-facts-bug"].stopped == 1  # the container is removed all the same


def test_check_a_missing_image_is_2_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(tmp_path, "noimage", "ok") == cli.EXIT_USAGE
    assert "error: f-noimage: image 'x' not found locally" in capsys.readouterr().err


def test_check_policy_errors_go_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "containersec-bad.yaml"
    path.write_text("image: x\nexpect:\n  - seccomp: sometimes\n")
    assert cli.main(["check", str(path)]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert "containersec: policy error: " in err
    assert "containersec-bad.yaml:3: seccomp" in err


@pytest.mark.parametrize("fmt", ["json", "sarif", "junit"])
def test_check_machine_formats_on_stdout_are_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    assert check(tmp_path, "ok", "refuses", extra=("--format", fmt)) == cli.EXIT_ERROR
    out = capsys.readouterr().out
    if fmt == "junit":
        assert out.rstrip().endswith("</testsuite>")
    else:
        json.loads(out)  # the summary line is not appended to it


def test_check_exit_constants_agree() -> None:
    assert (checkcmd.EXIT_OK, checkcmd.EXIT_FAILED, checkcmd.EXIT_USAGE) == (0, 1, 2)
    assert (checkcmd.EXIT_UNAVAILABLE, checkcmd.EXIT_ERROR) == (cli.EXIT_UNAVAILABLE, 4)
    assert cli.EXIT_ERROR == 4


# -- containersec compare ------------------------------------------------------------------


def compare(*names: str) -> int:
    return cli.main(["compare", "--runtime", ",".join(f"f-{n}" for n in names), "x"])


def test_compare_with_no_runtime_available_is_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare("down") == cli.EXIT_UNAVAILABLE
    assert "no runtime is available here" in capsys.readouterr().err


def test_compare_statuses() -> None:
    assert compare("ok", "down", "refuses") == cli.EXIT_OK  # the matrix notes the others
    assert compare("refuses", "down") == cli.EXIT_ERROR
    assert compare("noimage", "down") == cli.EXIT_USAGE


def test_compare_a_crashing_adapter_is_4_beside_facts(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare("ok", "avail-bug") == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "f-avail-bug: unexpected RuntimeError: engine API changed" in err
    assert "Traceback (most recent call last)" in err


# -- facts and main's own mapping ------------------------------------------------------------


def test_facts_start_failure_is_4_not_the_findings_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["facts", "--runtime", "f-refuses", "x"]) == cli.EXIT_ERROR
    assert "containersec: error: f-refuses: container failed to start" in capsys.readouterr().err


def test_an_unexpected_exception_is_4_with_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["facts", "--runtime", "f-facts-bug", "x"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "containersec: error: unexpected KeyError" in err
