# -*- test-case-name: tests.nodesapi.test_cli -*-
"""Flag helpers shared by the command modules."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["split_list"]


def split_list(values: Sequence[str] | None) -> list[str]:
    """cobra's StringSlice: repeated flags, each comma-separated; empty items dropped."""
    items: list[str] = []
    for value in values or ():
        items.extend(v.strip() for v in value.split(",") if v.strip())
    return items
