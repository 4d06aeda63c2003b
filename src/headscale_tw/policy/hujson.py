# -*- test-case-name: tests.policy.test_hujson -*-
"""
HuJSON ("human JSON") reader: JSON plus comments and trailing commas.

Tailscale policy files are HuJSON: standard JSON that also allows ``//`` line
comments, ``/* */`` block comments and a trailing comma after the last element
of an object or array. This module turns such text into plain Python values
(``dict``, ``list``, ``str``, ``int``/``float``, ``bool``, ``None``).

Every syntax problem raises :class:`HuJSONError`, whose message names the
1-based ``line:column`` where the problem was found. Nothing else is raised
for any input string.
"""

from __future__ import annotations

__all__ = ["HuJSONError", "loads"]

import json
from typing import Any


class HuJSONError(ValueError):
    """The text is not valid HuJSON; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.line = line
        self.column = column
        self.reason = message


_WS = " \t\r\n"
_NUMBER_CHARS = set("0123456789+-.eE")
_MAX_DEPTH = 200


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- position helpers -------------------------------------------------

    def error(self, message: str, pos: int | None = None) -> HuJSONError:
        if pos is None:
            pos = self.pos
        pos = min(pos, len(self.text))
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return HuJSONError(message, line, column)

    def skip(self) -> None:
        """Skip whitespace and comments."""
        text = self.text
        n = len(text)
        while self.pos < n:
            c = text[self.pos]
            if c in _WS:
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated block comment")
                self.pos = end + 2
            else:
                return

    # -- values -----------------------------------------------------------

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.error("nesting too deep")
        self.skip()
        if self.pos >= len(self.text):
            raise self.error("unexpected end of input, expected a value")
        c = self.text[self.pos]
        if c == "{":
            return self.obj(depth)
        if c == "[":
            return self.array(depth)
        if c == '"':
            return self.string()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return val
        if c == "-" or c.isdigit():
            return self.number()
        raise self.error(f"unexpected character {c!r}")

    def obj(self, depth: int) -> dict[str, Any]:
        self.pos += 1
        result: dict[str, Any] = {}
        while True:
            self.skip()
            if self.pos >= len(self.text):
                raise self.error("unexpected end of input in object")
            if self.text[self.pos] == "}":
                self.pos += 1
                return result
            if self.text[self.pos] != '"':
                raise self.error("expected a string key or '}'")
            key_pos = self.pos
            key = self.string()
            if key in result:
                raise self.error(f"duplicate key {key!r}", key_pos)
            self.skip()
            if self.pos >= len(self.text) or self.text[self.pos] != ":":
                raise self.error("expected ':' after object key")
            self.pos += 1
            result[key] = self.value(depth + 1)
            self.skip()
            if self.pos >= len(self.text):
                raise self.error("unexpected end of input in object")
            c = self.text[self.pos]
            if c == ",":
                self.pos += 1
            elif c != "}":
                raise self.error("expected ',' or '}' in object")

    def array(self, depth: int) -> list[Any]:
        self.pos += 1
        result: list[Any] = []
        while True:
            self.skip()
            if self.pos >= len(self.text):
                raise self.error("unexpected end of input in array")
            if self.text[self.pos] == "]":
                self.pos += 1
                return result
            result.append(self.value(depth + 1))
            self.skip()
            if self.pos >= len(self.text):
                raise self.error("unexpected end of input in array")
            c = self.text[self.pos]
            if c == ",":
                self.pos += 1
            elif c != "]":
                raise self.error("expected ',' or ']' in array")

    def string(self) -> str:
        start = self.pos
        text = self.text
        i = start + 1
        n = len(text)
        while i < n:
            c = text[i]
            if c == '"':
                break
            if c == "\\":
                i += 2
                continue
            if c < " ":
                raise self.error("control character in string", i)
            i += 1
        else:
            raise self.error("unterminated string", start)
        raw = text[start : i + 1]
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise self.error(f"invalid string escape ({e})", start) from None
        self.pos = i + 1
        return value

    def number(self) -> int | float:
        start = self.pos
        n = len(self.text)
        while self.pos < n and self.text[self.pos] in _NUMBER_CHARS:
            self.pos += 1
        raw = self.text[start : self.pos]
        try:
            value = json.loads(raw)
        except ValueError:
            raise self.error(f"invalid number {raw!r}", start) from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.error(f"invalid number {raw!r}", start)
        return value


def loads(text: str | bytes) -> Any:
    """
    Parse HuJSON text into a Python value.

    :raises HuJSONError: for any syntax error, with ``line:column``.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise HuJSONError(f"input is not UTF-8 ({e.reason})", 1, 1) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    p = _Parser(text)
    value = p.value(0)
    p.skip()
    if p.pos != len(text):
        raise p.error("unexpected data after the top-level value")
    return value
