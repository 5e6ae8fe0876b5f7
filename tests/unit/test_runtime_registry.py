"""The runtime registry: built-ins plus the ``pytest_containersec.runtimes`` entry-point
group, read by the CLI (``runtimes``, ``facts``, ``compare``, ``check``) and policy files;
an unknown name is a usage error (exit 2) everywhere."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec import runtimes
from pytest_containersec.cli import cli, runner
from pytest_containersec.errors import PolicyError, UnknownRuntime
from pytest_containersec.policy import policy
from pytest_containersec.runtimes.base import Availability, Container
from pytest_containersec.spec import ContainerSpec

GROUP = runtimes.ENTRY_POINT_GROUP


class ShippedRuntime:
    """What another package ships: a Runtime that is here, and starts nothing."""

    name = "shipped"

    def availability(self) -> Availability:
        return Availability(self.name, True, "Shipped 2.0")

    def start(self, spec: ContainerSpec) -> Container:
        raise NotImplementedError

    def reap(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def forget(self, container: Container) -> None:
        pass


def make_broken() -> Any:
    raise ImportError("no module named shipped_engine")


def _eps(*pairs: tuple[str, str]) -> list[importlib.metadata.EntryPoint]:
    return [importlib.metadata.EntryPoint(n, v, GROUP) for n, v in pairs]


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installed package declares ``shipped`` (and a broken ``broken``)."""
    here = __name__
    found = _eps(("shipped", f"{here}:ShippedRuntime"), ("broken", f"{here}:make_broken"))

    def entry_points(**select: Any) -> Any:
        return found if select.get("group") == GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    runtimes.registry(refresh=True)
    yield
    monkeypatch.undo()
    runtimes.registry(refresh=True)
    runtimes._instances.pop("shipped", None)


def test_builtins_alone() -> None:
    names = runtimes.known_names(refresh=True)
    assert names[: len(runtimes.KNOWN_NAMES)] == runtimes.KNOWN_NAMES
    assert runtimes.default_names() == runtimes.RUNTIME_NAMES
    assert runtimes.default_names(kube=True) == (*runtimes.RUNTIME_NAMES, "podman-kube")
    with pytest.raises(UnknownRuntime, match="unknown runtime"):
        runtimes.get_runtime("nosuch")


@pytest.mark.usefixtures("shipped")
def test_an_entry_point_runtime_is_known_selected_and_made() -> None:
    assert runtimes.known_names()[-2:] == ("shipped", "broken")
    assert "shipped" in runtimes.default_names()
    assert runtimes.registry()["shipped"].origin.startswith("entry point shipped = ")
    assert (
        runtimes.get_runtime("shipped").availability().line() == "shipped: available, Shipped 2.0"
    )
    assert runner.select(["shipped"]) == ["shipped"]
    with pytest.raises(ImportError):
        runtimes.get_runtime("broken")


@pytest.mark.usefixtures("shipped")
def test_runtimes_command_lists_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["runtimes", "shipped"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("shipped: available, Shipped 2.0 [entry point shipped = ")
    assert cli.main(["runtimes", "broken"]) == cli.EXIT_UNAVAILABLE
    out = capsys.readouterr().out
    assert out.startswith("broken: unavailable: ImportError: no module named shipped_engine")


@pytest.mark.usefixtures("shipped")
def test_a_policy_may_name_it(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("image: x\nruntimes: [shipped]\nexpect:\n  - seccomp: filter\n")
    assert policy.load(path).runtimes == ("shipped",)
    from pytest_containersec.policy.policy_schema import policy_schema

    assert "shipped" in policy_schema()["properties"]["runtimes"]["items"]["enum"]


def test_a_policy_may_not_name_an_unknown_one(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("image: x\nruntimes: [shipped]\nexpect:\n  - seccomp: filter\n")
    with pytest.raises(PolicyError, match=r"unknown \['shipped'\]"):
        policy.load(path)
    assert policy.load(path, known_runtimes=["shipped"]).runtimes == ("shipped",)


def test_clashing_or_malformed_entry_points_are_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = _eps(("docker", "x:y"), ("Bad Name", "x:y"), ("ok", "x:y"), ("ok", "z:w"))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: found)
    with pytest.warns(RuntimeWarning) as caught:
        names = runtimes.known_names(refresh=True)
    monkeypatch.undo()
    runtimes.registry(refresh=True)
    assert names.count("docker") == 1
    assert "Bad Name" not in names
    assert "ok" in names
    assert runtimes.registry().get("ok") is None
    messages = " ".join(str(w.message) for w in caught)
    for why in ("built-in", "does not match", "already"):
        assert why in messages


@pytest.mark.parametrize(
    "argv",
    [
        ["runtimes", "nosuch"],
        ["facts", "--runtime", "nosuch", "containersec/probe"],
        ["compare", "--runtime", "docker,nosuch", "containersec/probe"],
    ],
)
def test_an_unknown_runtime_is_a_usage_error_in_every_command(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "unknown runtime(s) nosuch" in capsys.readouterr().err


def test_check_with_an_unknown_runtime_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("image: x\nexpect:\n  - seccomp: filter\n")
    assert cli.main(["check", str(path), "--runtime", "nosuch"]) == cli.EXIT_USAGE
    assert "unknown runtime(s) nosuch" in capsys.readouterr().err
    path.write_text("image: x\nruntimes: [nosuch]\nexpect:\n  - seccomp: filter\n")
    assert cli.main(["check", str(path)]) == cli.EXIT_USAGE
    assert "unknown ['nosuch']" in capsys.readouterr().err
