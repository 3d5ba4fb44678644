"""What the commands print: tables for people on standard output, JSON for scripts
(``--output json``), and notes and errors on standard error. Rich writes no escape codes when its
stream is not a terminal (or ``NO_COLOR`` is set)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def _console(stderr: bool) -> Console:
    # Rich draws 80 columns where it cannot ask a terminal; a log or a pipe gets whole lines.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 200
    return Console(stderr=stderr, highlight=False, width=width)


out = _console(stderr=False)
err = _console(stderr=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    err.print(message, markup=False, soft_wrap=True)


def error(message: str) -> None:
    err.print(f"error: {message}", markup=False, style="red", soft_wrap=True)


def field(row: dict[str, Any], path: str) -> str:
    """``row``'s value at a dotted path (``result.thumbnailUrl``), as text; empty when absent."""
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str | None = None
) -> None:
    """One line per row; ``columns`` are (heading, dotted path) pairs. Only the last column
    wraps (ids and names stay whole, to copy): give it the free text."""
    grid = Table(title=title, title_justify="left")
    for i, (heading, _) in enumerate(columns):
        last = i == len(columns) - 1
        grid.add_column(heading, overflow="fold" if last else "ellipsis", no_wrap=not last)
    for row in rows:
        grid.add_row(*(field(row, path) for _, path in columns))
    out.print(grid)


def record(row: dict[str, Any], title: str | None = None) -> None:
    """One object as a two-column table: its fields, nested ones flattened with dots."""
    grid = Table(title=title, title_justify="left", show_header=False)
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in _flatten(row):
        grid.add_row(name, value)
    out.print(grid)


def _flatten(value: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for name, item in value.items():
        if isinstance(item, dict):
            rows.extend(_flatten(item, f"{prefix}{name}."))
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            rows.extend((f"{prefix}{name}[{i}]", json.dumps(v)) for i, v in enumerate(item))
        else:
            rows.append((prefix + name, ", ".join(map(str, item)) if isinstance(item, list) else str(item)))
    return rows
