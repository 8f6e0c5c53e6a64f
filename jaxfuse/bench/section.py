"""One report section (a table, notes and the raw numbers) and the number formats of its cells."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass
class Section:
    """One part of the report: a table, notes, and the raw numbers for the JSON copy and the plots."""

    key: str
    title: str
    intro: str
    columns: list[str]
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def format_seconds(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} us"


def format_ratio(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"


def format_fraction(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}%"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_section(section: Section) -> str:
    """One section as markdown: title, intro, table, notes."""
    parts = [f"## {section.title}", section.intro, markdown_table(section.columns, section.rows)]
    parts += [f"- {note}" for note in section.notes]
    return "\n\n".join(parts)
