"""The HTML matrix page as a person sees it: Facts of real docker and nspawn containers,
rendered by ``report.to_html``, opened in headless Chromium (Debian's ``chromium``,
installed by scripts/setup.d/70-chromium.sh). The DOM Chromium built must show the runtime
columns, a FAIL cell and the exposure row; its screenshot must show the coloured cells.
To look at the page yourself: CONTAINERSEC_KEEP_SCREENSHOT=/tmp/matrix.png pytest ..."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_containersec.checks import checks
from pytest_containersec.checks.checks import Violation
from pytest_containersec.model import Facts
from pytest_containersec.plugin.session_report import spec_title
from pytest_containersec.report import report
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

CHROMIUM = Path("/usr/bin/chromium")
RUNTIMES = ("docker", "nspawn")
SPEC = ContainerSpec(cap_drop=["ALL"], memory="64m", pids_limit=64)
WINDOW = (1400, 2000)
# report.HTML_STYLE's cell backgrounds: .pass #dafbe1, .fail #ffebe9
PASS_RGB = (0xDA, 0xFB, 0xE1)
FAIL_RGB = (0xFF, 0xEB, 0xE9)


def chromium_argv(profile: Path) -> list[str]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/setup (its step scripts/setup.d/70-chromium.sh "
            "installs Debian's chromium package), or `apt-get install chromium`",
            pytrace=False,
        )
    return [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}"]  # fmt: skip


def chromium(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def facts() -> dict[str, Facts]:
    out = {}
    for name in RUNTIMES:
        with runtime_or_skip(name).start(SPEC) as c:
            out[name] = c.facts()
    return out


def matrix(facts: dict[str, Facts]) -> report.Matrix:
    rows: list[tuple[str, dict[str, list[Violation] | None]]] = [
        (f"test_{name}", {rt: check(f) for rt, f in facts.items()})
        for name, check in (
            ("root_unprivileged", checks.root_unprivileged),
            ("seccomp_filter", lambda f: checks.seccomp(f, "filter")),
            ("no_capabilities", lambda f: checks.capabilities(f, effective=())),
            ("memory_64m", lambda f: checks.cgroup(f, "64m", 64, None)),
            ("read_only_rootfs", checks.read_only_rootfs),
        )
    ]
    rows.append(("test_skipped_on_nspawn", {"docker": [], "nspawn": None}))
    notes = {"podman-rootless": "not selected in this test (a note column)"}
    return report.from_facts(spec_title(SPEC), facts, rows, notes)


class Table(HTMLParser):
    """The first table of the page: its header cells and its rows of (tag, class, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str, str]]] = []
        self._cell: tuple[str, str] | None = None
        self._text: list[str] = []
        self._tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._tables += 1
        if self._tables != 1:
            return
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._text = (tag, dict(attrs).get("class") or ""), []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((*self._cell, "".join(self._text).strip()))
            self._cell = None


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, unfiltered pixel rows) of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert (depth, interlace) == (8, 0), f"unexpected PNG: {ihdr!r}"
    assert colour in (2, 6), f"not RGB or RGBA: {ihdr!r}"
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                row[i] = (row[i] + pred) & 0xFF
        out += row
        prev = row
    return width, height, bpp, bytes(out)


def colours(data: bytes) -> set[tuple[int, int, int]]:
    width, height, bpp, pixels = png_pixels(data)
    assert (width, height) == WINDOW
    return {(pixels[i], pixels[i + 1], pixels[i + 2]) for i in range(0, len(pixels), bpp)}


def test_chromium_renders_the_matrix(facts: dict[str, Facts], tmp_path: Path) -> None:
    m = matrix(facts)
    assert any(c.verdict == "fail" for r in m.rows for c in r.cells.values())
    page = tmp_path / "matrix.html"
    page.write_text(report.to_html([m], title="pytest-containersec browser test"), "utf-8")
    base = chromium_argv(tmp_path / "profile")

    dom = chromium([*base, "--dump-dom", page.as_uri()], tmp_path).stdout
    table = Table()
    table.feed(dom)
    header = [text for _, _, text in table.rows[0]]
    assert header == ["", "check / fact", *RUNTIMES, "podman-rootless"], header
    by_name = {row[1][2]: row[2:] for row in table.rows[1:]}
    exposure = [text for _, _, text in by_name["exposure (0-10)"]]
    assert all(re.fullmatch(r"\d+\.\d [A-Z]+", t) for t in exposure[:2]), exposure
    assert exposure[2] == "-", exposure  # the note column has no facts
    root = by_name["test_root_unprivileged"]
    assert root[0][1] == "fail", root
    assert root[0][2].startswith("FAIL uid_map [0-4294967294->0-"), root
    assert root[1][1:] == ("pass", "PASS ok"), root
    assert by_name["test_skipped_on_nspawn"][1][1:] == ("skip", "SKIP skipped")
    assert "<b>podman-rootless</b>: not selected in this test" in dom

    shot = tmp_path / "shot.png"
    width, height = WINDOW
    chromium([*base, f"--screenshot={shot}", f"--window-size={width},{height}",
              page.as_uri()], tmp_path)  # fmt: skip
    data = shot.read_bytes()
    if os.environ.get("CONTAINERSEC_KEEP_SCREENSHOT"):
        Path(os.environ["CONTAINERSEC_KEEP_SCREENSHOT"]).write_bytes(data)
    assert len(data) > 20_000, f"screenshot of {len(data)} bytes: a blank page?"
    seen = colours(data)
    assert len(seen) > 50, f"only {len(seen)} colours: the page did not render"
    assert PASS_RGB in seen, "no green PASS cell on the screen"
    assert FAIL_RGB in seen, "no red FAIL cell on the screen"
