"""The Noise layer's HTTP/2 connection computes a stream's remaining window in O(1), with Twisted's result."""

from collections import deque

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw._twisted_private import (
    END_STREAM,
    BatchingH2Connection,
    CountingQueue,
    TwistedH2Connection,
    add_outbound_queue,
    outbound_queue,
)


class CountingQueueTests(unittest.TestCase):
    """The queue tracks its byte count through every operation Twisted uses."""

    def test_counts(self):
        """append, appendleft and popleft keep nbytes equal to the bytes held; the sentinel counts zero."""
        q = CountingQueue([b"abc"])
        q.append(b"de")
        q.appendleft(b"f")
        q.append(END_STREAM)
        self.assertEqual(q.nbytes, 6)
        self.assertEqual(q.popleft(), b"f")
        self.assertEqual(q.nbytes, 5)
        q.popleft(), q.popleft()
        self.assertEqual((q.nbytes, q.popleft()), (0, END_STREAM))
        self.assertEqual(q.nbytes, 0)

    def test_same_as_twisted(self):
        """remainingOutboundWindow equals Twisted's summing implementation for the same queue."""
        conn = BatchingH2Connection(Clock())

        class FakeH2:
            def local_flow_control_window(self, stream_id):
                return 65535

        conn.conn = FakeH2()
        add_outbound_queue(conn, 1, deque())  # as Twisted does for a new stream
        for chunk in (b"x" * 100, b"y" * 7, END_STREAM):
            outbound_queue(conn, 1).append(chunk)
        self.assertIsInstance(outbound_queue(conn, 1), CountingQueue)
        self.assertEqual(conn.remainingOutboundWindow(1), TwistedH2Connection.remainingOutboundWindow(conn, 1))
        self.assertEqual(conn.remainingOutboundWindow(1), 65535 - 107)
