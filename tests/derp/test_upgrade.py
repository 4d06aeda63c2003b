"""The sans-IO reader of an upgrade response head (DERP mesh client, WebSocket test client)."""

from twisted.trial import unittest

from headscale_tw.derp._upgrade import HeadTooLong, ResponseHead


class ResponseHeadTests(unittest.TestCase):
    """A head arriving in pieces, the bytes after it, and a head that never ends."""

    def test_pieces_and_rest(self):
        """None until the blank line; then the status line, lower-cased headers and what followed."""
        head = ResponseHead()
        self.assertIsNone(head.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgr"))
        status, headers, rest = head.feed(b"ade: DERP\r\nX-Extra:  v \r\n\r\n\x02frame")
        self.assertEqual(status, b"HTTP/1.1 101 Switching Protocols")
        self.assertEqual(headers, {b"upgrade": b"DERP", b"x-extra": b"v"})
        self.assertEqual(rest, b"\x02frame")
        self.assertTrue(ResponseHead.is_switching(status))
        self.assertFalse(ResponseHead.is_switching(b"HTTP/1.1 403 Forbidden"))

    def test_too_long(self):
        """More than the limit without the end of the head is refused."""
        head = ResponseHead(max_size=32)
        self.assertIsNone(head.feed(b"HTTP/1.1 101 OK\r\n"))
        self.assertRaises(HeadTooLong, head.feed, b"X: " + b"y" * 20)
