"""Rendering of listing and status output as a table, JSON or YAML."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    show: Callable[[Any], Any] | None = None
    """Turns a present value into what the table shows (JSON and YAML keep the value)."""

    def text(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.key)
        return cell(self.show(value) if self.show and value is not None else value)


MISSING = "<none>"


def cell(value: Any) -> str:
    if value is None or value in ("", []):
        return MISSING
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """kubectl-style: upper-case headers, columns padded to their widest cell, 3 spaces apart."""
    grid = [[column.header.upper() for column in columns]]
    grid += [[column.text(row) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    lines = [
        "   ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
        for line in grid
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def render(data: Any, fmt: Format, columns: Sequence[Column] = ()) -> str:
    """``data`` (a list of rows, or one mapping) in ``fmt``; a table shows ``columns``."""
    if fmt is Format.JSON:
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt is Format.YAML:
        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    rows = data if isinstance(data, list) else [data]
    return table(rows, columns)
