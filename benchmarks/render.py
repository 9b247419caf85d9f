"""The one renderer of the benchmark pages: a script keeps its results as JSON records (lists of
dicts) and describes its page here (title, a header with command / machine / date, sections,
tables whose columns say which field they show and how), so every page is rebuilt from its
record alone and no script formats Markdown by hand or reads Markdown back.

    page = Page("Speed-up", command="python benchmarks/speedup.py", machine="2 CPU cores ...")
    page.section("(a) asked vs measured", "A paragraph.")
    page.table([Col("model", "model"), Col("asked x", "asked", ".2f"),
                Col("share", lambda r: r["a"] / r["b"], ".1%", missing="-")], rows)
    text = page.text()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

Value = Union[str, Callable[[dict], object]]
Format = Union[str, Callable[[object], str]]


@dataclass(frozen=True)
class Col:
    """One column: its header, the row's field (a key, or a function of the row) and its format
    (a format spec such as ``".2f"``/``".1%"``, or a function); None or an absent key shows
    ``missing``."""

    header: str
    value: Value
    fmt: Format = ""
    missing: str = ""

    def cell(self, row: dict) -> str:
        v = self.value(row) if callable(self.value) else row.get(self.value)
        if v is None:
            return self.missing
        if callable(self.fmt):
            return self.fmt(v)
        return format(v, self.fmt) if self.fmt else default_format(v)


def default_format(v) -> str:
    """Floats with 4 decimals below 10, 1 above (the benchmarks' historical table format)."""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def grid(headers: list[str], rows: list[list]) -> str:
    """A Markdown table of rows given as lists of cells (strings kept, numbers formatted)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(default_format(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def table(columns: list[Col], rows: list[dict]) -> str:
    """A Markdown table of records: one line per dict, one cell per column."""
    return grid([c.header for c in columns], [[c.cell(r) for c in columns] for r in rows])


class Page:
    """A Markdown page assembled block by block (a blank line after each)."""

    def __init__(self, title: str, *, command: str | None = None, machine: str | None = None,
                 date: str | None = None):
        self.lines = [f"# {title}", ""]
        facts = [f"Command: `{command}`" if command else None, f"Machine: {machine}" if machine else None,
                 f"Date: {date}" if date else None]
        facts = [f for f in facts if f]
        if facts:  # one line each, kept apart by Markdown's trailing-two-spaces line break
            self.block("  \n".join(facts))

    def block(self, *texts: str) -> Page:
        for text in texts:
            self.lines += [text, ""]
        return self

    para = block

    def section(self, title: str, *paragraphs: str) -> Page:
        return self.block(f"## {title}", *paragraphs)

    def table(self, columns: list[Col], rows: list[dict]) -> Page:
        return self.block(table(columns, rows))

    def grid(self, headers: list[str], rows: list[list]) -> Page:
        return self.block(grid(headers, rows))

    def text(self) -> str:
        """The page, ending with one newline."""
        return "\n".join(self.lines).rstrip("\n") + "\n"
