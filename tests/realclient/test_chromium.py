# -*- test-case-name: tests.realclient.test_chromium -*-
"""Tests for the pure parts of :mod:`headscale_tw.testing.chromium` (no browser started)."""

from __future__ import annotations

import struct
import zlib

from twisted.trial import unittest

from headscale_tw.testing.chromium import decode_png, find_chromium, spki_sha256
from headscale_tw.testing.realclient._process import HarnessError
from headscale_tw.testing.realclient.tlsca import make_test_ca

__all__ = ["DecodePngTests", "FindChromiumTests"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, lines: list[bytes], colour_type: int = 2) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"".join(lines)))
            + _chunk(b"IEND", b""))


class DecodePngTests(unittest.TestCase):
    """The screenshot reader undoes every PNG row filter and reports size, colours and ink."""

    def test_filters(self) -> None:
        """Rows stored with filters None, Sub, Up, Average and Paeth decode to the pixels written."""
        # 2x5 RGB; each row holds (10, 20, 30) then (40, 50, 60), stored with filter 0 to 4.
        plain = bytes([10, 20, 30, 40, 50, 60])
        sub = bytes([10, 20, 30, 30, 30, 30])            # minus the pixel to the left
        up = bytes(6)                                     # minus the row above (the same row)
        average = bytes([5, 10, 15, 15, 15, 15])         # minus floor((left + up) / 2)
        paeth = bytes([0, 0, 0, 0, 0, 0])                # the predictor picks "up" here
        lines = [b"\x00" + plain, b"\x01" + sub, b"\x02" + up, b"\x03" + average, b"\x04" + paeth]
        image = decode_png(_png(2, 5, lines))
        self.assertEqual((image.width, image.height), (2, 5))
        self.assertEqual(set(image.rows), {((10, 20, 30), (40, 50, 60))})
        self.assertEqual(image.colours(), {(10, 20, 30): 5, (40, 50, 60): 5})
        self.assertEqual(image.ink(), 0.5)

    def test_rgba_and_blank(self) -> None:
        """An RGBA image of one colour has no ink."""
        image = decode_png(_png(3, 2, [b"\x00" + bytes([255, 255, 255, 255]) * 3] * 2, colour_type=6))
        self.assertEqual((image.colours(), image.ink()), ({(255, 255, 255): 6}, 0.0))

    def test_refused(self) -> None:
        """Not a PNG, a palette PNG, or data that does not match the size: ValueError naming it."""
        self.assertIn("signature", str(self.assertRaises(ValueError, decode_png, b"GIF89a")))
        self.assertIn("colour type 3", str(self.assertRaises(ValueError, decode_png, _png(1, 1, [b"\x00\x00"], 3))))
        self.assertIn("does not match", str(self.assertRaises(ValueError, decode_png, _png(2, 2, [b"\x00" + bytes(6)]))))


class FindChromiumTests(unittest.TestCase):
    """Finding the browser and naming the test certificates' keys."""

    def test_missing_names_the_setup_step(self) -> None:
        """A missing browser fails with the install step, never a skip."""
        error = self.assertRaises(HarnessError, find_chromium, "/nonexistent/chromium")
        self.assertIn("60-chromium", str(error))

    def test_spki_hash(self) -> None:
        """The SPKI hash is base64 of 32 bytes, and differs between two certificates' keys."""
        first = spki_sha256(make_test_ca(self.mktemp()).cert_pem)
        second = spki_sha256(make_test_ca(self.mktemp()).cert_pem)
        self.assertEqual(len(first), 44)
        self.assertNotEqual(first, second)
