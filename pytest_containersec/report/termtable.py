"""Plain-text tables that fit a terminal's width.

A table wider than the terminal is split into blocks of columns that fit, each block
repeating the label column and the header; a cell wider than its column wraps onto more
lines. Nothing is cut off: every cell's whole text appears (a verdict is never clipped).
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Sequence

GAP = "  "
MIN_WIDTH = 40  # narrower terminals are laid out as if they were this wide
MAX_CELL = 30  # a column wider than this wraps its cells
MIN_CELL = 16  # ... and down to this, when narrower columns need fewer blocks


def terminal_width(fallback: int = 80) -> int:
    """The terminal's width in columns (``COLUMNS`` first; ``fallback`` without one)."""
    return shutil.get_terminal_size((fallback, 24)).columns


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    """``text`` in lines of at most ``width`` characters (continuations indented)."""
    lines = textwrap.wrap(text, max(width, len(indent) + 8), subsequent_indent=indent,
                          break_on_hyphens=False)  # fmt: skip
    return lines or [""]


def _cell_lines(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``, broken after a space, ``,``, ``;``, ``/``,
    ``:`` or ``->`` where it can be (``[0-65535->100000-165535]`` keeps its numbers
    whole, a test id breaks after ``::``)."""
    if len(text) <= width:
        return [text]
    lines, line = [], ""
    for token in re.split(r"(?<=[ ,;>/:])", text):
        while len(token) > width:  # no break point: cut the token itself
            if line:
                lines.append(line.rstrip())
                line = ""
            lines.append(token[:width])
            token = token[width:]
        if len((line + token).rstrip()) > width:
            lines.append(line.rstrip())
            line = token.lstrip()
        else:
            line += token
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def _blocks(widths: list[int], label: int, width: int) -> list[list[int]]:
    """Column indexes in blocks that each fit ``width`` beside the label column."""
    blocks: list[list[int]] = []
    used = label
    for i, w in enumerate(widths):
        if not blocks or used + len(GAP) + w > width:
            blocks.append([])
            used = label
        blocks[-1].append(i)
        used += len(GAP) + w
    return blocks


def layout(
    head: Sequence[str],
    rows: Sequence[Sequence[str] | str],
    width: int,
    max_cell: int = MAX_CELL,
    max_label: float = 0.4,
) -> tuple[int, list[int], list[list[int]]]:
    """(label column width, each column's width, the column indexes of each block) of
    :func:`fit`'s table."""
    width = max(width, MIN_WIDTH)
    cells = [r for r in rows if not isinstance(r, str)]
    label = max(len(head[0]), *(len(r[0]) for r in cells)) if cells else len(head[0])
    natural = [
        max(len(head[i]), *(len(r[i]) for r in cells)) if cells else len(head[i])
        for i in range(1, len(head))
    ]
    if label + sum(len(GAP) + min(n, max_cell) for n in natural) > width:
        label = min(label, max(12, int(width * max_label)))  # else everything fits as is
    room = max(8, width - label - len(GAP))
    # The widest cell limit that needs the fewest blocks: narrower columns (down to
    # MIN_CELL, never narrower than their header) when that puts more side by side.
    best: tuple[list[int], list[list[int]]] = ([], [])
    for limit in range(max(max_cell, MIN_CELL), MIN_CELL - 1, -1):
        widths = [min(n, max(limit, len(h)), room) for n, h in zip(natural, head[1:], strict=True)]
        blocks = _blocks(widths, label, width)
        if not best[1] or len(blocks) < len(best[1]):
            best = widths, blocks
    return label, *best


def fit(
    head: Sequence[str],
    rows: Sequence[Sequence[str] | str],
    width: int,
    max_cell: int = MAX_CELL,
    max_label: float = 0.4,
) -> list[str]:
    """The table as lines of at most ``width`` characters.

    ``head``: the label column's header, then one header per column; ``rows``: cells in
    the same order, or a string (a group heading such as ``-- facts``, repeated in every
    block). Blocks are separated by an empty line. A cell wraps beyond ``max_cell``
    characters, a row label beyond ``max_label`` of the width."""
    label, widths, blocks = layout(head, rows, width, max_cell, max_label)
    out: list[str] = []
    for n, block in enumerate(blocks or [[]]):
        if n:
            out.append("")
        col_widths = [label, *(widths[i] for i in block)]
        for row in [head, *rows]:
            if isinstance(row, str):
                out.append(row)
                continue
            parts = [
                _cell_lines(row[0], label),
                *(_cell_lines(row[i + 1], widths[i]) for i in block),
            ]
            for k in range(max(len(p) for p in parts)):
                line = GAP.join((p[k] if k < len(p) else "").ljust(w)
                                for p, w in zip(parts, col_widths, strict=True))  # fmt: skip
                out.append(line.rstrip())
    return out
