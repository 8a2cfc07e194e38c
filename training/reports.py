"""How every tool's report prints numbers: percentages, figures and tables, with a missing value (None or NaN)
shown one way, "n/a"."""
from __future__ import annotations

from typing import Sequence

MISSING = "n/a"


def missing(value: float | None) -> bool:
    """True for a value a report cannot show: None or NaN."""
    return value is None or value != value  # NaN is the one value unequal to itself (numpy scalars included)


def pct(value: float | None, digits: int = 1) -> str:
    """A share (0..1) as a percentage without the sign, e.g. 0.8765 -> "87.7"."""
    return MISSING if missing(value) else f"{100 * value:.{digits}f}"


def num(value: float | None, digits: int = 1) -> str:
    """A number with `digits` decimals."""
    return MISSING if missing(value) else f"{value:.{digits}f}"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An aligned plain-text table with a rule under the header; the first `left` columns align left, the rest
    right (numbers)."""
    cells = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    if any(len(r) != len(header) for r in cells):
        raise ValueError(f"every row of a table needs {len(header)} cells")
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (for README and docs pages)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row of a table needs {len(header)} cells")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)
