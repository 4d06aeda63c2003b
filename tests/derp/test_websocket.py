"""Tests for headscale_tw.derp._websocket (the sans-IO RFC 6455 codec)."""

import random

from twisted.trial import unittest

from headscale_tw.derp import _websocket as ws

# RFC 6455 section 5.7 examples.
UNMASKED_HELLO = bytes.fromhex("810548656c6c6f")
MASKED_HELLO = bytes.fromhex("818537fa213d7f9f4d5158")
FRAGMENTED_HELLO = bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")
UNMASKED_PING_HELLO = bytes.fromhex("890548656c6c6f")
MASKED_PONG_HELLO = bytes.fromhex("8a8537fa213d7f9f4d5158")
RFC_MASK = bytes.fromhex("37fa213d")


def masked(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    """A client (masked) frame."""
    return ws.encode_frame(opcode, payload, fin=fin, mask=mask)


def raw_header(b0, b1, extended=b"", mask=b"\x00\x00\x00\x00"):
    """A hand-made frame head, for frames the encoder refuses to make."""
    return bytes((b0, b1)) + extended + mask


class HandshakeTests(unittest.TestCase):
    """Opening handshake validation and the accept key."""

    def headers(self, **overrides):
        h = {
            b"upgrade": [b"websocket"],
            b"connection": [b"Upgrade"],
            b"sec-websocket-version": [b"13"],
            b"sec-websocket-key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
            b"sec-websocket-protocol": [b"chat, derp"],
        }
        for k, v in overrides.items():
            name = k.replace("_", "-").encode()
            if v is None:
                h.pop(name, None)
            else:
                h[name] = v
        return h

    def test_rfc_accept_key(self):
        """The RFC 6455 section 1.3 sample key gives the sample accept value."""
        self.assertEqual(ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_valid(self):
        """A valid request yields the accept value and the subprotocol we speak."""
        hs = ws.validate_handshake(b"GET", self.headers(), [b"derp"])
        self.assertEqual(hs.accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        self.assertEqual(hs.subprotocol, b"derp")
        self.assertEqual(hs.offered, [b"chat", b"derp"])

    def test_no_common_subprotocol(self):
        """With no common subprotocol none is chosen."""
        hs = ws.validate_handshake(b"GET", self.headers(sec_websocket_protocol=[b"chat"]), [b"derp"])
        self.assertIsNone(hs.subprotocol)

    def test_connection_token_list_and_case(self):
        """``Connection: keep-alive, upgrade`` and ``Upgrade: WebSocket`` are accepted."""
        h = self.headers(connection=[b"keep-alive, upgrade"], upgrade=[b"WebSocket"])
        self.assertEqual(ws.validate_handshake(b"GET", h).accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def assertRefused(self, method, headers, text, status=400):
        with self.assertRaises(ws.HandshakeError) as cm:
            ws.validate_handshake(method, headers, [b"derp"])
        self.assertIn(text, cm.exception.reason)
        self.assertEqual(cm.exception.status, status)
        return cm.exception

    def test_refusals(self):
        """Each missing or malformed part of the request is named in the error."""
        self.assertRefused(b"POST", self.headers(), "must use GET")
        self.assertRefused(b"GET", self.headers(upgrade=None), "Upgrade: websocket")
        self.assertRefused(b"GET", self.headers(connection=[b"keep-alive"]), "Connection: Upgrade")
        self.assertRefused(b"GET", self.headers(sec_websocket_key=None), "exactly one Sec-WebSocket-Key")
        self.assertRefused(b"GET", self.headers(sec_websocket_key=[b"a", b"b"]), "exactly one Sec-WebSocket-Key")
        self.assertRefused(b"GET", self.headers(sec_websocket_key=[b"not base64!"]), "not base64")
        self.assertRefused(b"GET", self.headers(sec_websocket_key=[b"AAAA"]), "16 bytes, not 3")

    def test_wrong_version_426(self):
        """A version other than 13 gets 426 with ``Sec-WebSocket-Version: 13``."""
        e = self.assertRefused(b"GET", self.headers(sec_websocket_version=[b"8"]), "only 13", status=426)
        self.assertEqual(e.headers, [(b"Sec-WebSocket-Version", b"13")])
        self.assertRefused(b"GET", self.headers(sec_websocket_version=None), "only 13", status=426)


class EncodeTests(unittest.TestCase):
    """Frames we write, byte for byte."""

    def test_rfc_examples(self):
        """The encoder reproduces the RFC 6455 section 5.7 examples."""
        self.assertEqual(ws.encode_frame(ws.Opcode.TEXT, b"Hello"), UNMASKED_HELLO)
        self.assertEqual(ws.encode_frame(ws.Opcode.TEXT, b"Hello", mask=RFC_MASK), MASKED_HELLO)
        self.assertEqual(
            ws.encode_frame(ws.Opcode.TEXT, b"Hel", fin=False) + ws.encode_frame(ws.Opcode.CONTINUATION, b"lo"),
            FRAGMENTED_HELLO,
        )
        self.assertEqual(ws.encode_frame(ws.Opcode.PING, b"Hello"), UNMASKED_PING_HELLO)
        self.assertEqual(ws.encode_frame(ws.Opcode.PONG, b"Hello", mask=RFC_MASK), MASKED_PONG_HELLO)

    def test_lengths(self):
        """256 bytes use the 16-bit length, 64 KiB the 64-bit length (RFC 6455 section 5.7)."""
        self.assertEqual(ws.encode_frame(ws.Opcode.BINARY, bytes(256))[:4], bytes.fromhex("827e0100"))
        self.assertEqual(ws.encode_frame(ws.Opcode.BINARY, bytes(65536))[:10], bytes.fromhex("827f0000000000010000"))
        self.assertEqual(ws.encode_frame(ws.Opcode.BINARY, bytes(125))[:2], bytes.fromhex("827d"))
        self.assertEqual(ws.encode_frame(ws.Opcode.BINARY, bytes(65535))[:4], bytes.fromhex("827effff"))

    def test_server_frames_unmasked(self):
        """A server connection's frames carry no mask."""
        conn = ws.WebSocketConnection()
        self.assertEqual(conn.send_binary(b"\x00\x01"), bytes.fromhex("82020001"))
        self.assertEqual(conn.send_pong(b"Hello"), bytes.fromhex("8a0548656c6c6f"))
        self.assertEqual(conn.send_close(1000, "ok"), bytes.fromhex("880403e86f6b"))
        self.assertTrue(conn.close_sent)

    def test_client_frames_masked(self):
        """A client connection masks with keys from its mask source."""
        conn = ws.WebSocketConnection(client=True, mask_source=lambda n: RFC_MASK)
        self.assertEqual(conn.send_text("Hello"), MASKED_HELLO)

    def test_close_reason_truncated(self):
        """A long close reason is cut so the payload fits 125 bytes, on a character boundary."""
        frame = ws.WebSocketConnection().send_close(1002, "é" * 100)
        self.assertEqual(frame[1], 124)
        frame[4:].decode("utf-8")

    def test_close_without_status(self):
        """Closing with 1005 (no status) sends an empty close payload."""
        self.assertEqual(ws.WebSocketConnection().send_close(ws.CloseCode.NO_STATUS), b"\x88\x00")

    def test_ping_too_long(self):
        """A ping payload over 125 bytes is refused."""
        self.assertRaises(ValueError, ws.WebSocketConnection().send_ping, bytes(126))


class DecodeTests(unittest.TestCase):
    """Frames we read."""

    def feed_bytewise(self, conn, data):
        events = []
        for i in range(len(data)):
            events += conn.receive_data(data[i : i + 1])
        return events

    def test_rfc_masked_text(self):
        """The server decodes the RFC's masked "Hello", fed a byte at a time."""
        self.assertEqual(self.feed_bytewise(ws.WebSocketConnection(), MASKED_HELLO), [ws.TextData("Hello", True)])

    def test_rfc_unmasked_examples_client_side(self):
        """The client decodes the RFC's unmasked text, fragmented text and ping."""
        conn = ws.WebSocketConnection(client=True)
        self.assertEqual(conn.receive_data(UNMASKED_HELLO), [ws.TextData("Hello", True)])
        self.assertEqual(
            conn.receive_data(FRAGMENTED_HELLO), [ws.TextData("Hel", False), ws.TextData("lo", True)]
        )
        self.assertEqual(conn.receive_data(UNMASKED_PING_HELLO), [ws.Ping(b"Hello")])

    def test_rfc_masked_pong(self):
        """The server decodes the RFC's masked pong."""
        self.assertEqual(ws.WebSocketConnection().receive_data(MASKED_PONG_HELLO), [ws.Pong(b"Hello")])

    def test_extended_lengths(self):
        """16- and 64-bit lengths decode, byte at a time for the 16-bit case."""
        conn = ws.WebSocketConnection()
        data = bytes(range(256))
        self.assertEqual(self.feed_bytewise(conn, masked(ws.Opcode.BINARY, data)), [ws.BinaryData(data, True)])
        big = bytes(random.Random(1).randbytes(70000))
        self.assertEqual(conn.receive_data(masked(ws.Opcode.BINARY, big)), [ws.BinaryData(big, True)])

    def test_fragments_with_interleaved_ping(self):
        """A ping between fragments is delivered in order; the message continues after it."""
        conn = ws.WebSocketConnection()
        data = (
            masked(ws.Opcode.BINARY, b"ab", fin=False)
            + masked(ws.Opcode.PING, b"p")
            + masked(ws.Opcode.CONTINUATION, b"cd", fin=False)
            + masked(ws.Opcode.CONTINUATION, b"", fin=True)
        )
        self.assertEqual(
            conn.receive_data(data),
            [ws.BinaryData(b"ab", False), ws.Ping(b"p"), ws.BinaryData(b"cd", False), ws.BinaryData(b"", True)],
        )

    def test_utf8_split_across_fragments(self):
        """A character split between two text fragments is reassembled."""
        conn = ws.WebSocketConnection()
        e = "é".encode()
        events = conn.receive_data(masked(ws.Opcode.TEXT, b"a" + e[:1], fin=False) + masked(ws.Opcode.CONTINUATION, e[1:]))
        self.assertEqual("".join(ev.text for ev in events), "aé")

    def test_close(self):
        """A close frame gives its code and reason; later input is ignored."""
        conn = ws.WebSocketConnection()
        events = conn.receive_data(masked(ws.Opcode.CLOSE, b"\x03\xe8bye") + masked(ws.Opcode.BINARY, b"x"))
        self.assertEqual(events, [ws.CloseReceived(1000, "bye")])
        self.assertTrue(conn.close_received)
        self.assertEqual(conn.receive_data(masked(ws.Opcode.BINARY, b"y")), [])

    def test_close_without_code(self):
        """An empty close payload reports 1005."""
        self.assertEqual(ws.WebSocketConnection().receive_data(masked(ws.Opcode.CLOSE, b"")), [ws.CloseReceived(1005, "")])

    def assertViolation(self, data, code, text, client=False, **kwargs):
        conn = ws.WebSocketConnection(client=client, **kwargs)
        with self.assertRaises(ws.WebSocketProtocolError) as cm:
            conn.receive_data(data)
        self.assertEqual(cm.exception.code, code)
        self.assertIn(text, cm.exception.reason)
        # The connection is failed: further input is ignored.
        self.assertEqual(conn.receive_data(masked(ws.Opcode.BINARY, b"x")), [])
        return conn

    def test_violations(self):
        """Each protocol violation fails the connection with the right close code and a clear reason."""
        P, T = ws.CloseCode.PROTOCOL_ERROR, ws.Opcode
        self.assertViolation(UNMASKED_HELLO, P, "client frames must be masked")
        self.assertViolation(MASKED_HELLO, P, "server frames must not be masked", client=True)
        self.assertViolation(raw_header(0xC2, 0x80), P, "reserved bits")
        self.assertViolation(raw_header(0x83, 0x80), P, "unknown opcode 0x3")
        self.assertViolation(raw_header(0x8B, 0x80), P, "unknown opcode 0xb")
        self.assertViolation(raw_header(0x89, 0x80 | 126, b"\x00\x7e"), P, "PING frame longer than 125")
        self.assertViolation(masked(T.PING, b"", fin=False), P, "fragmented PING")
        self.assertViolation(masked(T.CONTINUATION, b"x"), P, "continuation frame without a message")
        self.assertViolation(masked(T.BINARY, b"a", fin=False) + masked(T.BINARY, b"b"), P, "new data message")
        self.assertViolation(raw_header(0x82, 0x80 | 126, b"\x00\x05"), P, "16-bit length")
        self.assertViolation(raw_header(0x82, 0x80 | 127, (70000).to_bytes(8, "big")[:2] + bytes(6)), P, "64-bit length used")
        self.assertViolation(raw_header(0x82, 0x80 | 127, b"\x80" + bytes(7)), P, "most significant bit")
        self.assertViolation(masked(T.CLOSE, b"\x03"), P, "1-byte payload")
        self.assertViolation(masked(T.CLOSE, b"\x03\xed"), P, "invalid close code 1005")
        self.assertViolation(masked(T.CLOSE, b"\x03\xe7"), P, "invalid close code 999")
        self.assertViolation(masked(T.CLOSE, b"\x03\xe8\xff"), ws.CloseCode.INVALID_DATA, "close reason")
        self.assertViolation(masked(T.TEXT, b"\xff"), ws.CloseCode.INVALID_DATA, "not valid UTF-8")

    def test_too_big_detected_on_header(self):
        """An oversized frame is refused from its header alone (1009), before its payload is buffered."""
        head = raw_header(0x82, 0x80 | 127, (1 << 30).to_bytes(8, "big"))[:10]
        self.assertViolation(head, ws.CloseCode.MESSAGE_TOO_BIG, "exceeds the limit of 1048576")
        small = masked(ws.Opcode.BINARY, bytes(101))
        self.assertViolation(small, ws.CloseCode.MESSAGE_TOO_BIG, "frame of 101 bytes", max_frame_size=100)


class FuzzTests(unittest.TestCase):
    """Seeded random round trips and corruptions."""

    def test_round_trip(self):
        """Random fragmented messages with interleaved pings, split at random points, decode to what was sent."""
        rng = random.Random(6455)
        for _round in range(200):
            client = ws.WebSocketConnection(client=True, mask_source=rng.randbytes)
            wire = bytearray()
            sent: list = []
            for _ in range(rng.randint(1, 6)):
                data = rng.randbytes(rng.choice([0, 1, 125, 126, 200, 65535, 65536, 70000]) if rng.random() < 0.3 else rng.randint(0, 300))
                cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 3))))
                pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
                for i, piece in enumerate(pieces):
                    fin = i == len(pieces) - 1
                    wire += client.send_binary(piece, fin=fin) if i == 0 else client.send_continuation(piece, fin=fin)
                    if not fin and rng.random() < 0.5:
                        ping = rng.randbytes(rng.randint(0, 125))
                        wire += client.send_ping(ping)
                        sent.append(("ping", ping))
                sent.append(("data", data))
            wire += client.send_close(1000, "done")
            server = ws.WebSocketConnection()
            events = []
            pos = 0
            while pos < len(wire):
                step = rng.randint(1, 5000)
                events += server.receive_data(bytes(wire[pos : pos + step]))
                pos += step
            got: list = []
            buf = b""
            for e in events:
                if isinstance(e, ws.BinaryData):
                    buf += e.data
                    if e.final:
                        got.append(("data", buf))
                        buf = b""
                elif isinstance(e, ws.Ping):
                    got.append(("ping", e.payload))
            # A ping between fragments completes before the message it interrupts; compare per kind.
            self.assertEqual([x for x in got if x[0] == "data"], [x for x in sent if x[0] == "data"])
            self.assertEqual([x for x in got if x[0] == "ping"], [x for x in sent if x[0] == "ping"])
            self.assertEqual(events[-1], ws.CloseReceived(1000, "done"))

    def test_corruption_never_crashes(self):
        """Randomly corrupted streams give events or a WebSocketProtocolError, never another exception."""
        rng = random.Random(1002)
        client = ws.WebSocketConnection(client=True, mask_source=rng.randbytes)
        base = b"".join(
            [client.send_binary(b"abc", fin=False), client.send_ping(b"p"), client.send_continuation(bytes(300)),
             client.send_text("hé"), client.send_binary(bytes(70000)), client.send_close(1001, "x")]
        )
        for _ in range(2000):
            data = bytearray(base)
            for _flip in range(rng.randint(1, 4)):
                data[rng.randrange(min(len(data), 400))] = rng.randrange(256)
            server = ws.WebSocketConnection(max_frame_size=1 << 17)
            try:
                server.receive_data(bytes(data))
            except ws.WebSocketProtocolError as e:
                self.assertIn(e.code, (1002, 1007, 1009))
