"""Terminal tables: within the width, split into blocks repeating the labels, and no
cell's text lost (wrapped, never cut off)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_containersec.report.termtable import GAP, _cell_lines, fit, layout, wrap

TEXT = st.text(st.sampled_from("abc ,;:/->0123456789_"), max_size=70)


def _squash(s: str) -> str:
    return "".join(s.split())


def test_a_wide_table_becomes_blocks_that_repeat_the_label_column() -> None:
    head = ["", *(f"runtime-{i}" for i in range(7))]
    rows: list[list[str] | str] = [
        "-- facts",
        ["seccomp", *(["filter"] * 7)],
        ["uid_map", *(f"[0-65535->{100000 * i}-{100000 * i + 65535}]" for i in range(7))],
    ]
    lines = fit(head, rows, 100)
    assert max(map(len, lines)) <= 100
    blocks = "\n".join(lines).split("\n\n")
    assert len(blocks) >= 2
    for block in blocks:
        assert block.splitlines()[1] == "-- facts"
        assert any(line.startswith("seccomp  ") for line in block.splitlines())
    for i in range(7):
        assert f"runtime-{i}" in "\n".join(lines)
    # numbers are never split: a map breaks after its "->"
    assert "[0-65535->" in lines[4] or "[0-65535->" in "\n".join(lines)
    assert "100000-165535]" in "\n".join(lines)


def test_a_table_that_fits_is_one_block() -> None:
    lines = fit(["test", "docker", "podman"], [["t::a", "PASS", "FAIL"]], 80)
    assert lines == ["test  docker  podman", "t::a  PASS    FAIL"]


def test_cells_break_after_separators_and_only_cut_what_has_none() -> None:
    assert _cell_lines("[0-4294967294->0-4294967294]", 22) == ["[0-4294967294->", "0-4294967294]"]
    assert _cell_lines("a, b, c", 3) == ["a,", "b,", "c"]
    assert _cell_lines("x" * 20, 8) == ["x" * 8, "x" * 8, "x" * 4]
    assert wrap("one two three", 8, "  ") == ["one two", "  three"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(TEXT, min_size=2, max_size=8),
    st.lists(st.lists(TEXT, min_size=8, max_size=8), max_size=5),
    st.integers(min_value=40, max_value=160),
)
def test_every_line_fits_and_every_cell_survives_in_its_column(
    head: list[str], bodies: list[list[str]], width: int
) -> None:
    rows = [b[: len(head)] for b in bodies]
    lines = fit(head, rows, width)
    assert all(len(line) <= width for line in lines)
    label, widths, blocks = layout(head, rows, width)
    assert sorted(i for b in blocks for i in b) == list(range(len(head) - 1))
    at = 0
    for n, block in enumerate(blocks or [[]]):
        at += 1 if n else 0  # the empty line between blocks
        starts, x = [0], label
        for i in block:
            starts.append(x + len(GAP))
            x += len(GAP) + widths[i]
        cols = [0, *(i + 1 for i in block)]
        for row in [head, *rows]:
            height = max(len(_cell_lines(row[c], [label, *widths][c])) for c in cols)
            chunk = [line.ljust(x) for line in lines[at : at + height]]
            at += height
            for c, s in zip(cols, starts, strict=True):
                w = [label, *widths][c]
                got = "".join(line[s : s + w] for line in chunk)
                assert _squash(got) == _squash(row[c])
    assert at == len(lines)
