# -*- test-case-name: tests.cli.test_output -*-
"""
Printing results: human tables by default, or ``json``, ``json-line``, ``yaml``.

Machine formats reproduce Headscale's CLI output (see :mod:`._messages`);
errors in a machine format are ``{"error": "..."}`` on stderr, as Headscale does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from headscale_tw.timestamps import parse_timestamp

__all__ = ["FORMATS", "Output", "render_table", "table_time"]

FORMATS = ("", "json", "json-line", "yaml")
# Headscale's HeadscaleDateTimeFormat.
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def table_time(text: str | None, empty: str = "-") -> str:
    """An RFC 3339 timestamp as ``2006-01-02 15:04:05`` (UTC), or ``empty``."""
    if not text:
        return empty
    dt, _ = parse_timestamp(text)
    return dt.strftime(_TIME_FORMAT)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by `` | `` (like pterm's default)."""
    cells = [list(header)] + [[str(c) for c in row] for row in rows]
    # A multi-line cell (several tags) spreads over several lines.
    widths = [max(len(line) for row in cells for line in row[i].split("\n")) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [c.split("\n") for c in row]
        height = max(len(p) for p in parts)
        for j in range(height):
            lines.append(" | ".join((p[j] if j < len(p) else "").ljust(w) for p, w in zip(parts, widths)).rstrip())
    return "\n".join(lines)


class _YamlDumper(yaml.SafeDumper):
    """Block style, keys in the order given."""


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


class Output:
    """Writes results in the chosen format."""

    def __init__(self, fmt: str, stdout: TextIO, stderr: TextIO):
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; use json, json-line or yaml")
        self.format = fmt
        self.stdout = stdout
        self.stderr = stderr

    @property
    def machine(self) -> bool:
        """True for json, json-line and yaml."""
        return bool(self.format)

    def result(self, json_data: Any, yaml_data: Any, human: str) -> None:
        """Print one result: ``json_data`` / ``yaml_data`` for machines, ``human`` otherwise."""
        if self.format == "json":
            self.stdout.write(json.dumps(json_data, indent="\t", ensure_ascii=False) + "\n")
        elif self.format == "json-line":
            self.stdout.write(json.dumps(json_data, separators=(",", ":"), ensure_ascii=False) + "\n")
        elif self.format == "yaml":
            self.stdout.write(_yaml(yaml_data))
        else:
            self.stdout.write(human + "\n")

    def error(self, message: str) -> None:
        """Report a failure on stderr."""
        if self.format == "json":
            self.stderr.write(json.dumps({"error": message}, indent="\t") + "\n")
        elif self.format == "json-line":
            self.stderr.write(json.dumps({"error": message}) + "\n")
        elif self.format == "yaml":
            self.stderr.write(_yaml({"error": message}))
        else:
            self.stderr.write(f"Error: {message}\n")
