"""Tests for headscale_tw.keys."""

import os
import stat

from twisted.trial import unittest

from headscale_tw.errors import InvalidInput
from headscale_tw.keys import (
    ChallengePublic,
    DiscoPublic,
    KeyFileError,
    KeyParseError,
    MachinePrivate,
    MachinePublic,
    NodePrivate,
    NodePublic,
    load_or_generate_private_key,
)

HEX = "f86c3fb4f340dcc94354b37230b944c5c10163850a8b34fb59fff38a90360f25"


class KeyTextTests(unittest.TestCase):
    """Text forms of keys."""

    def test_roundtrip(self):
        """Each public key type parses its own prefix and prints it back in lower case."""
        for cls, prefix in [
            (MachinePublic, "mkey:"),
            (NodePublic, "nodekey:"),
            (DiscoPublic, "discokey:"),
            (ChallengePublic, "chalpub:"),
        ]:
            key = cls.parse(prefix + HEX.upper())
            self.assertEqual(key.raw, bytes.fromhex(HEX))
            self.assertEqual(str(key), prefix + HEX)
            self.assertEqual(key.text, prefix + HEX)

    def test_bytes_input(self):
        """ASCII bytes parse like str."""
        self.assertEqual(NodePublic.parse(b"nodekey:" + HEX.encode()), NodePublic.parse("nodekey:" + HEX))

    def test_types_differ(self):
        """Keys of different types with the same bytes are not equal."""
        self.assertNotEqual(NodePublic(bytes(32)), MachinePublic(bytes(32)))

    def test_rejects(self):
        """Empty, wrong prefix, short, long, non-hex and whitespace forms are refused with InvalidInput."""
        for text in ["", "mkey:", "nodekey:" + HEX, "mkey:" + HEX[:-2], "mkey:" + HEX + "00",
                     "mkey:" + "g" * 64, "mkey: " + HEX[1:], "mkey:" + HEX[:-1] + "\n"]:
            e = self.assertRaises(KeyParseError, MachinePublic.parse, text)
            self.assertIsInstance(e, InvalidInput)
            self.assertIn("MachinePublic", str(e))

    def test_zero(self):
        """The zero key prints as the prefix and 64 zeros."""
        self.assertEqual(MachinePublic.zero().text, "mkey:" + "0" * 64)
        self.assertTrue(MachinePublic.zero().is_zero())

    def test_private(self):
        """Private keys use privkey:, derive their public key and hide their bytes in repr."""
        key = MachinePrivate.generate()
        self.assertTrue(key.text.startswith("privkey:"))
        self.assertIsInstance(key.public(), MachinePublic)
        self.assertIsInstance(NodePrivate.generate().public(), NodePublic)
        self.assertNotIn(key.raw.hex(), repr(key))
        self.assertEqual(MachinePrivate.parse(key.text), key)

    def test_raw_size(self):
        """Constructing a key from the wrong number of bytes fails."""
        self.assertRaises(ValueError, NodePublic, bytes(31))


class KeyFileTests(unittest.TestCase):
    """The server's Noise private key file."""

    def test_generate(self):
        """A missing file is created (with its directory) in mode 0600 and read back the same."""
        path = os.path.join(self.mktemp(), "sub", "noise_private.key")
        key = load_or_generate_private_key(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(f.read(), key.text)
        self.assertEqual(load_or_generate_private_key(path), key)

    def test_headscale_file(self):
        """A Headscale key file with a trailing newline loads."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("privkey:" + HEX + "\n")
        self.assertEqual(load_or_generate_private_key(path).raw, bytes.fromhex(HEX))

    def test_bare_hex(self):
        """A bare 64-hex key (old Headscale) loads."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(HEX)
        self.assertEqual(load_or_generate_private_key(path).raw, bytes.fromhex(HEX))

    def test_bad_content(self):
        """A file with something else gives a clear error naming the file and is left alone."""
        for content in [b"", b"hello", b"mkey:" + HEX.encode(), b"\xff\xfe"]:
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            e = self.assertRaises(KeyFileError, load_or_generate_private_key, path)
            self.assertIn(path, str(e))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), content)

    def test_unreadable(self):
        """A path that is a directory gives a KeyFileError, not a traceback."""
        path = self.mktemp()
        os.mkdir(path)
        self.assertRaises(KeyFileError, load_or_generate_private_key, path)
