# -*- test-case-name: tests.policy.test_hujson -*-
"""Tests for :mod:`headscale_tw.policy.hujson`."""

__all__ = ["HuJSONTests", "HuJSONFuzzTests"]

import json
import random

from twisted.trial import unittest

from headscale_tw.policy.hujson import HuJSONError, loads


class HuJSONTests(unittest.TestCase):
    """HuJSON text becomes plain JSON values."""

    def test_plain_json(self) -> None:
        """Ordinary JSON parses to the same value as json.loads."""
        text = '{"a": [1, 2.5, "x\\n", true, false, null], "b": {}}'
        self.assertEqual(loads(text), json.loads(text))

    def test_comments(self) -> None:
        """Line and block comments are ignored."""
        text = '// head\n{ /* k */ "a": 1, // tail\n "b": /* mid */ 2 }\n// end'
        self.assertEqual(loads(text), {"a": 1, "b": 2})

    def test_trailing_commas(self) -> None:
        """A trailing comma after the last element is allowed."""
        self.assertEqual(loads('{"a": [1, 2,], "b": 3,}'), {"a": [1, 2], "b": 3})

    def test_bytes_and_bom(self) -> None:
        """UTF-8 bytes with a byte-order mark are accepted."""
        self.assertEqual(loads('\ufeff{"a": "é"}'.encode()), {"a": "é"})

    def test_comment_like_text_in_string(self) -> None:
        """Comment markers inside strings are kept."""
        self.assertEqual(loads('{"u": "http://x/*y*/"}'), {"u": "http://x/*y*/"})

    def test_error_position(self) -> None:
        """Errors report line and column of the problem."""
        e = self.assertRaises(HuJSONError, loads, '{\n  "a": 1\n  "b": 2\n}')
        self.assertEqual((e.line, e.column), (3, 3))
        self.assertIn("3:3", str(e))

    def test_double_comma(self) -> None:
        """Two commas in a row are an error."""
        self.assertRaises(HuJSONError, loads, "[1,,2]")

    def test_unterminated_comment(self) -> None:
        """An unterminated block comment is an error."""
        self.assertRaises(HuJSONError, loads, "[1] /* open")

    def test_trailing_garbage(self) -> None:
        """Data after the top-level value is an error."""
        self.assertRaises(HuJSONError, loads, "{} {}")

    def test_duplicate_key(self) -> None:
        """A key repeated in one object is an error."""
        self.assertRaises(HuJSONError, loads, '{"a": 1, "a": 2}')

    def test_empty(self) -> None:
        """Empty input is an error."""
        self.assertRaises(HuJSONError, loads, "  // nothing\n")


class HuJSONFuzzTests(unittest.TestCase):
    """Random input never raises anything but HuJSONError."""

    ALPHABET = list('{}[]",:/*\n\\ -+.eE0123456789abtrufalsnx\x00\u00e9') + [
        "true", "null", "//", "/*", "*/", '"a"', "\\u12", "\\u00e9",
    ]

    def _check(self, text: str) -> None:
        try:
            loads(text)
        except HuJSONError:
            pass

    def test_random_tokens(self) -> None:
        """Random token soup only ever raises HuJSONError."""
        rng = random.Random(20240601)
        for _ in range(5000):
            n = rng.randint(0, 40)
            self._check("".join(rng.choice(self.ALPHABET) for _ in range(n)))

    def test_mutated_valid(self) -> None:
        """Single-character mutations of a valid document only raise HuJSONError."""
        rng = random.Random(7)
        base = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"],},], /* c */ "x": -1.5e3}'
        for _ in range(3000):
            chars = list(base)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(chars))
                op = rng.random()
                if op < 0.4:
                    del chars[i]
                elif op < 0.8:
                    chars.insert(i, rng.choice(self.ALPHABET))
                else:
                    chars[i] = rng.choice(self.ALPHABET)
            self._check("".join(chars))

    def test_deep_nesting(self) -> None:
        """Very deep nesting is reported as an error, not a crash."""
        self.assertRaises(HuJSONError, loads, "[" * 100000)
