"""Tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def field(name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda row: row.get(name)


def text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(text(item) for item in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{key}={text(item)}" for key, item in value.items()) or "-"
    return str(value)


def when(value: Any) -> str:
    """``2026-12-03T10:11:12.345+00:00`` as ``2026-12-03 10:11:12``: what a person reads."""
    if not isinstance(value, str) or len(value) < 19:
        return text(value)
    return value[:10] + " " + value[11:19]


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[h for h, _ in columns]] + [[text(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def pairs(row: Mapping[str, Any]) -> str:
    """One object as ``key: value`` lines."""
    width = max((len(key) for key in row), default=0)
    return "\n".join(f"{key.ljust(width)}  {text(value)}" for key, value in row.items())


def emit(value: Any, *, as_json: bool, columns: Sequence[Column] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(value, indent=2, sort_keys=True))
    elif columns is not None:
        click.echo(table(value, columns))
    elif isinstance(value, Mapping):
        click.echo(pairs(value))
    else:
        click.echo(text(value))
