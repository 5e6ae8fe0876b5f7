"""The readers' shared value parsers and key tables: numbers are ASCII digits (with a sign
only where the format takes one) or a SourceError naming file and line (exit 2 in the CLI),
and every quadlet key is in exactly one table, each mapped key really reaching the spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_containersec.cli import cli
from pytest_containersec.errors import SourceError
from pytest_containersec.sources import compose, kube, quadlet
from pytest_containersec.sources.common import integer
from pytest_containersec.sources.yamlfile import Ctx

CTX = Ctx("f.yaml", 7, "pids_limit")


@pytest.mark.parametrize(
    ("value", "signed", "expected"),
    [(64, False, 64), ("64", False, 64), (" 64 ", False, 64), ("007", False, 7),
     (-1, True, -1), ("-1", True, -1), ("+5", True, 5), (0, False, 0)],
)  # fmt: skip
def test_integer_accepts(value: Any, signed: bool, expected: int) -> None:
    assert integer(CTX, value, signed=signed) == expected


@pytest.mark.parametrize(
    "value",
    ["--5", "-+5", "+-5", "²", "٣", "1²", "1_000", "1e3", "0x10", "", " ", "-", "+", "6 4",
     "64m", 1.5, None, True, [64]],
)  # fmt: skip
@pytest.mark.parametrize("signed", [False, True])
def test_integer_refuses_with_a_source_error(value: Any, signed: bool) -> None:
    with pytest.raises(SourceError) as info:
        integer(CTX, value, signed=signed)
    assert (info.value.path, info.value.line, info.value.key) == ("f.yaml", 7, "pids_limit")
    assert "expected a whole number" in str(info.value)


@pytest.mark.parametrize("value", ["-1", "+1", -1])
def test_integer_unsigned_refuses_a_sign_or_a_negative(value: Any) -> None:
    with pytest.raises(SourceError, match="expected a whole number >= 0"):
        integer(CTX, value)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("value", ["--5", "²", "-1"])
def test_quadlet_tasksmax_bad_number_names_file_and_line(tmp_path: Path, value: str) -> None:
    f = write(tmp_path, "a.container", f"[Container]\nImage=x\n[Service]\nTasksMax={value}\n")
    with pytest.raises(SourceError) as info:
        quadlet.load(f)
    assert (info.value.line, info.value.key) == (4, "[Service] TasksMax")


def test_quadlet_pidslimit_takes_a_sign(tmp_path: Path) -> None:
    f = write(tmp_path, "a.container", "[Container]\nImage=x\nPidsLimit=+32\n")
    assert quadlet.load(f).spec.pids_limit == 32
    f.write_text("[Container]\nImage=x\nPidsLimit=--5\n")
    with pytest.raises(SourceError, match=r"a.container:3: \[Container\] PidsLimit"):
        quadlet.load(f)


def test_compose_numbers(tmp_path: Path) -> None:
    f = write(tmp_path, "compose.yaml", "services:\n  a:\n    image: x\n    pids_limit: '-1'\n")
    assert compose.load(f, "a", environ={}).spec.pids_limit is None  # -1: unlimited
    f.write_text("services:\n  a:\n    image: x\n    pids_limit: '--5'\n")
    with pytest.raises(SourceError, match=r"compose.yaml:4: .*pids_limit: expected a whole"):
        compose.load(f, "a", environ={})
    f.write_text("services:\n  a:\n    image: x\n    cpu_quota: 50000\n    cpu_period: 0\n")
    with pytest.raises(SourceError, match=r"compose.yaml:5: .*cpu_period: expected a positive"):
        compose.load(f, "a", environ={})


def test_kube_ids_take_no_sign(tmp_path: Path) -> None:
    f = write(
        tmp_path, "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "    - name: a\n      image: x\n      securityContext:\n        runAsUser: '²'\n",
    )  # fmt: skip
    with pytest.raises(SourceError, match=r"pod.yaml:9: .*runAsUser: expected a whole number"):
        kube.load(f, "a")
    f.write_text(f.read_text().replace("'²'", "-1"))
    with pytest.raises(SourceError, match=r"pod.yaml:9: .*runAsUser: expected a whole number"):
        kube.load(f, "a")


def test_cli_bad_number_is_exit_2_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "a.container", "[Container]\nImage=x\nPidsLimit=--5\n")
    assert cli.main(["facts", "--quadlet", str(f)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{f}:3: [Container] PidsLimit: expected a whole number" in err
    assert "Traceback" not in err
