# -*- test-case-name: tests.test_keyfile -*-
"""Tests for :mod:`headscale_tw.keyfile`."""

import os
import stat

from twisted.trial import unittest

from headscale_tw.keyfile import MAX_KEY_FILE, KeyFileError, read_key_file

__all__ = ["ReadKeyFileTests"]


class ReadKeyFileTests(unittest.TestCase):
    """Key files are read bounded, created once with mode 0600, and every failure names the file."""

    def test_create_then_read(self) -> None:
        """A missing file is created from ``create`` (0600, parents 0700) and read back the next time."""
        top = self.mktemp()
        path = os.path.join(top, "sub", "k.key")
        made = []

        def create() -> str:
            made.append(1)
            return "privkey:abc\n"

        self.assertEqual(read_key_file(path, "test key file", create=create), "privkey:abc")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        self.assertEqual(read_key_file(path, "test key file", create=create), "privkey:abc")
        self.assertEqual(len(made), 1)

    def test_missing_without_create(self) -> None:
        """Without ``create`` a missing file is an error that names it and carries the hint."""
        path = self.mktemp()
        e = self.assertRaises(KeyFileError, read_key_file, path, "mesh key file", missing_hint="make one")
        self.assertIn(repr(path), str(e))
        self.assertIn("mesh key file", str(e))
        self.assertIn("make one", str(e))
        self.assertFalse(os.path.exists(path))

    def test_not_text_and_unreadable(self) -> None:
        """Binary content and a directory in the file's place are refused with the file's name."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\xff\xfe")
        self.assertIn(repr(path), str(self.assertRaises(KeyFileError, read_key_file, path, "k")))
        folder = self.mktemp()
        os.mkdir(folder)
        self.assertIn(repr(folder), str(self.assertRaises(KeyFileError, read_key_file, folder, "k")))

    def test_bounded_read(self) -> None:
        """Only the first MAX_KEY_FILE bytes of a huge file are read."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a" * (MAX_KEY_FILE * 4))
        self.assertEqual(len(read_key_file(path, "k")), MAX_KEY_FILE)
