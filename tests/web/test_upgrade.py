"""Tests for headscale_tw.web.upgrade."""

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource, server

from headscale_tw.web.upgrade import NOT_DONE_YET, switch_protocols


class _Recorder(Protocol):
    def __init__(self):
        self.received = []
        self.made = False

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received.append(data)


class _Upgrading(resource.Resource):
    isLeaf = True

    def __init__(self, protocol):
        super().__init__()
        self.protocol = protocol

    def render_POST(self, request):
        switch_protocols(request, self.protocol, b"test-proto", [(b"X-Extra", b"1")], first_bytes=b"HELLO")
        return NOT_DONE_YET


class SwitchProtocolsTests(unittest.TestCase):
    """The HTTP channel hands its connection over to the upgraded protocol."""

    def _connect(self):
        recorder = _Recorder()
        site = server.Site(_Upgrading(recorder))
        http = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        http.makeConnection(transport)
        return recorder, http, transport

    def test_head_and_first_bytes(self):
        """The 101 head carries Upgrade/Connection and is followed by first_bytes in one write."""
        recorder, http, transport = self._connect()
        http.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        value = transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"\r\nUpgrade: test-proto\r\n", value)
        self.assertIn(b"\r\nConnection: upgrade\r\n", value)
        self.assertIn(b"\r\nX-Extra: 1\r\n", value)
        self.assertTrue(value.endswith(b"\r\n\r\nHELLO"))
        self.assertTrue(recorder.made)
        self.assertIs(transport.protocol, recorder)

    def test_later_bytes_reach_new_protocol(self):
        """Bytes that arrive after the switch reach the new protocol, not the HTTP channel."""
        recorder, http, transport = self._connect()
        http.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        # Later bytes arrive at the transport's protocol, which is now the recorder.
        transport.protocol.dataReceived(b"\x00\x01binary")
        self.assertEqual(b"".join(recorder.received), b"\x00\x01binary")

    def test_http_channel_detached(self):
        """The HTTP channel keeps no transport and no idle timer after the switch."""
        recorder, http, transport = self._connect()
        http.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertIsNone(http._channel.transport)
        self.assertIsNone(http._channel._TimeoutMixin__timeoutCall)

    def test_http_channel_no_longer_producer(self):
        """The HTTP channel is no longer registered as the transport's producer after the switch."""
        recorder, http, transport = self._connect()
        self.assertIsNotNone(transport.producer)
        http.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertIsNone(transport.producer)

    def test_bytes_in_same_read_reach_new_protocol(self):
        """Bytes that arrive in the same read as the request head go to the new protocol."""
        recorder, http, transport = self._connect()
        http.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n\x00\x01after-head")
        self.assertEqual(b"".join(recorder.received), b"\x00\x01after-head")

    def test_no_head(self):
        """send_head=False writes only first_bytes (DERP fast start reads no HTTP response)."""
        recorder = _Recorder()

        class FastStart(resource.Resource):
            isLeaf = True

            def render_POST(self, request):
                switch_protocols(request, recorder, b"DERP", first_bytes=b"FRAME", send_head=False)
                return NOT_DONE_YET

        http = server.Site(FastStart()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        http.makeConnection(transport)
        http.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(transport.value(), b"FRAME")
