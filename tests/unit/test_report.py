"""The side-by-side matrix and its renderings."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from pytest_containersec.checks import checks
from pytest_containersec.cli.checkcmd import junit
from pytest_containersec.model import Mismatch
from pytest_containersec.report import report
from pytest_containersec.report.results import CheckResult

from .factories import facts, privileged, rootless


def matrix() -> report.Matrix:
    d = facts(mismatches=(Mismatch("cgroup.memory_max", 67108864, None, "declared"),))
    r = rootless()
    checks_rows: list[tuple[str, dict[str, list[checks.Violation] | None]]] = [
        ("seccomp[filter]", {"docker": checks.seccomp(d, "filter"), "podman-rootless": None}),
        ("root_unprivileged", {"docker": checks.root_unprivileged(d),
                               "podman-rootless": checks.root_unprivileged(r)}),
    ]  # fmt: skip
    return report.from_facts("probe", {"docker": d, "podman-rootless": r}, checks_rows,
                             {"nspawn": "unavailable: not installed"})  # fmt: skip


def cell(m: report.Matrix, name: str, runtime: str) -> report.Cell:
    return next(r for r in m.rows if r.name == name).cells[runtime]


def test_rows_and_cells() -> None:
    m = matrix()
    assert m.runtimes == ["docker", "podman-rootless", "nspawn"]
    assert cell(m, "uid (inside -> host)", "podman-rootless").value == "0 -> 1001"
    assert cell(m, "memory limit", "docker").mismatch == "declared 67108864"
    assert cell(m, "seccomp[filter]", "docker") == report.Cell("ok", "pass")
    assert cell(m, "seccomp[filter]", "podman-rootless").verdict == "skip"
    assert cell(m, "root_unprivileged", "docker").verdict == "fail"
    assert cell(m, "/etc/shadow:r", "docker").value == "allowed"
    assert cell(m, "mount_tmpfs", "docker").value == "denied EPERM"
    assert cell(m, "exposure (0-10)", "docker").value.endswith(("OK", "MEDIUM"))


def test_privileged_scores_fail_in_the_matrix() -> None:
    m = report.from_facts("p", {"docker": privileged()})
    assert cell(m, "exposure (0-10)", "docker") == report.Cell("10.0 UNSAFE", "fail")


def test_text_markdown_json() -> None:
    m = matrix()
    text = report.to_text(m, width=200)
    assert "FAIL uid_map [0-4294967294" in text
    assert "nspawn: unavailable: not installed" in text
    md = report.to_markdown(m)
    assert "| | docker | podman-rootless | nspawn |" in md
    assert "**PASS** ok" in md
    assert "≠ declared 67108864" in md
    data = json.loads(report.to_json(m))
    assert data["rows"][0]["cells"]["docker"]["verdict"] == "info"


def test_html_is_self_contained_and_parses() -> None:
    page = report.to_html([matrix()])
    assert "<link" not in page
    assert "<script" not in page
    assert "http" not in page

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tds: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "td":
                self.tds.append(dict(attrs).get("class") or "")

    p = Cells()
    p.feed(page)
    assert "fail" in p.tds
    assert "pass" in p.tds


def test_junit() -> None:
    results = [
        CheckResult("seccomp[filter]", "seccomp", "docker", "passed", "", "p.yaml", 3),
        CheckResult(
            "capabilities", "capabilities", "docker", "failed", "[docker] x\nmore", "p.yaml", 4
        ),
        CheckResult(
            "capabilities", "capabilities", "nspawn", "skipped", "unavailable", "p.yaml", 4
        ),
    ]
    root = ET.fromstring(junit(results))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    case = root.findall("testcase")[1]
    assert case.get("classname") == "p.docker"
    assert case.find("failure").get("message") == "[docker] x"  # type: ignore[union-attr]
