"""
Tests for headscale_tw._twisted_private.write_through: a plain TCP transport with
nothing buffered sends at once; everything else takes Twisted's buffered path.
"""

import errno

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial import unittest

from headscale_tw._twisted_private import tcp_buffered, write_through


class _Socket:
    """A socket whose ``send`` takes at most ``room`` bytes (or fails with ``error``)."""

    def __init__(self, room=1 << 20, error=None):
        self.room = room
        self.error = error
        self.sent = []

    def fileno(self):
        return 99

    def setblocking(self, flag):
        pass

    def send(self, data):
        if self.error is not None:
            raise OSError(self.error, "send failed")
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)


def _connection(socket):
    reactor = MemoryReactor()
    connection = tcp.Connection(socket, Protocol(), reactor=reactor)
    connection.connected = 1
    return connection, reactor


class WriteThroughTests(unittest.TestCase):
    """Direct sends skip the write-interest round trip only when that keeps the byte order."""

    def test_idle_connection_sends_at_once(self):
        """Nothing buffered: one send(), no write interest registered, nothing left in the buffer."""
        socket = _Socket()
        connection, reactor = _connection(socket)
        write_through(connection, b"record")
        self.assertEqual(socket.sent, [b"record"])
        self.assertEqual(reactor.getWriters(), [])
        self.assertEqual(tcp_buffered(connection), (0, b""))

    def test_partial_send_buffers_the_rest(self):
        """What the socket does not take is buffered and waits for writability, as Twisted would."""
        socket = _Socket(room=4)
        connection, reactor = _connection(socket)
        write_through(connection, b"record")
        self.assertEqual(socket.sent, [b"reco"])
        self.assertEqual(reactor.getWriters(), [connection])
        self.assertEqual(b"".join(connection._tempDataBuffer), b"rd")

    def test_buffered_data_keeps_order(self):
        """With data already waiting, new data queues behind it instead of overtaking it."""
        socket = _Socket(room=0)
        connection, reactor = _connection(socket)
        write_through(connection, b"first")
        socket.room = 100
        write_through(connection, b"second")
        self.assertEqual(b"".join(socket.sent), b"")
        self.assertEqual(b"".join(connection._tempDataBuffer), b"firstsecond")

    def test_would_block_buffers(self):
        """EWOULDBLOCK sends nothing; the data is buffered whole."""
        connection, reactor = _connection(_Socket(error=errno.EWOULDBLOCK))
        write_through(connection, b"record")
        self.assertEqual(b"".join(connection._tempDataBuffer), b"record")
        self.assertEqual(reactor.getWriters(), [connection])

    def test_broken_connection_left_to_twisted(self):
        """A send error is not raised here: the data is buffered and the reactor finds the error."""
        connection, reactor = _connection(_Socket(error=errno.EPIPE))
        write_through(connection, b"record")
        self.assertEqual(b"".join(connection._tempDataBuffer), b"record")

    def test_tls_and_other_transports_untouched(self):
        """A TLS connection, a closing one, or any other transport gets a plain write()."""
        socket = _Socket()
        connection, _ = _connection(socket)
        connection.TLS = True
        connection.write = lambda data: socket.sent.append(("write", data))
        write_through(connection, b"a")
        closing, _ = _connection(_Socket())
        closing.disconnecting = True
        write_through(closing, b"b")
        other = StringTransport()
        write_through(other, b"c")
        self.assertEqual(socket.sent, [("write", b"a")])
        self.assertEqual(other.value(), b"c")
