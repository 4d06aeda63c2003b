"""Tests for the map-session lifecycle (:class:`~headscale_tw.control.sessions.MapSession`)."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.control.framing import KEEPALIVE_FRAMES, PLAIN, FramedMessage
from headscale_tw.control.sessions import MapSession


class MapSessionLifecycleTests(unittest.TestCase):
    """What a session does depends on its state: new, streaming or closed."""

    def setUp(self):
        self.clock = Clock()
        self.writes = []
        self.finished = []
        self.aborted = []
        self.closed = []
        self.unsent = 0
        self.session = MapSession(
            7, self.writes.append, lambda: self.finished.append(True), self.clock, self.closed.append,
            interval=lambda: 50.0, unsent=lambda: self.unsent, abort=lambda: self.aborted.append(True),
            max_unsent=100, encoding=PLAIN,
        )

    def test_new_drops_deltas(self):
        """Before the full map a delta is not written and no keep-alive is scheduled."""
        self.session.send(FramedMessage(b'{"a":1}'))
        self.clock.advance(60)
        self.assertEqual((self.writes, self.session.state, self.clock.getDelayedCalls()), ([], "new", []))

    def test_start_then_deltas_and_keepalives(self):
        """After the full map deltas are written and an idle stream gets a keep-alive."""
        self.session.start(FramedMessage(b'{"full":1}'))
        self.session.send(FramedMessage(b'{"a":1}'))
        self.clock.advance(50)
        self.assertEqual(self.writes[1:], [FramedMessage(b'{"a":1}').framed(PLAIN), KEEPALIVE_FRAMES[PLAIN]])
        self.assertEqual((self.session.state, self.session.messages_sent), ("streaming", 3))

    def test_started_twice(self):
        """Starting a session a second time is a programming error, raised, and writes nothing."""
        self.session.start(FramedMessage(b"{}"))
        self.assertRaises(RuntimeError, self.session.start, FramedMessage(b"{}"))
        self.assertEqual(len(self.writes), 1)

    def test_close_before_start(self):
        """Closing a session that never started finishes the response and tells the notifier once."""
        self.session.close()
        self.session.close()
        self.session.connection_lost()
        self.assertEqual((self.finished, self.closed, self.session.state), ([True], [self.session], "closed"))

    def test_closed_ignores_everything(self):
        """A closed session writes nothing more, has no timer and is reported closed once."""
        self.session.start(FramedMessage(b"{}"))
        self.session.connection_lost()
        self.session.send(FramedMessage(b"{}"))
        self.session.close()
        self.clock.advance(100)
        self.assertEqual((len(self.writes), self.finished, self.closed), (1, [], [self.session]))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, self.session.start, FramedMessage(b"{}"))

    def test_write_failure_closes(self):
        """A write that raises ends the session as if the client went away, with no keep-alive left."""

        def broken(data):
            raise OSError("gone")

        self.session._write = broken
        self.session.start(FramedMessage(b"{}"))
        self.assertEqual((self.session.state, self.closed, self.finished), ("closed", [self.session], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_stalled_on_the_full_map(self):
        """A client with too much unread after the full map is aborted, not finished, and not kept alive."""
        self.unsent = 101
        self.session.start(FramedMessage(b"{}"))
        self.assertEqual((self.session.state, self.aborted, self.finished), ("closed", [True], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class MapSessionDeltaTests(unittest.TestCase):
    """
    Deltas bypass the lifecycle machine (:meth:`MapSession.send` reads a flag it sets), so
    every way out of ``streaming`` must still stop them, including ends caused by a delta.
    """

    def setUp(self):
        self.clock = Clock()
        self.writes = []
        self.finished = []
        self.aborted = []
        self.closed = []
        self.unsent = 0
        self.session = MapSession(
            7, self.writes.append, lambda: self.finished.append(True), self.clock, self.closed.append,
            interval=lambda: 50.0, unsent=lambda: self.unsent, abort=lambda: self.aborted.append(True),
            max_unsent=100, encoding=PLAIN,
        )
        self.session.start(FramedMessage(b'{"full":1}'))

    def test_close_drops_later_deltas(self):
        """After the server closes a stream, a delta is neither written nor re-arms the keep-alive."""
        self.session.close()
        self.session.send(FramedMessage(b'{"a":1}'))
        self.clock.advance(100)
        self.assertEqual((len(self.writes), self.finished, self.closed), (1, [True], [self.session]))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_delta_write_closes(self):
        """A delta whose write raises ends the session once; the next delta is not attempted."""
        attempts = []

        def broken(data):
            attempts.append(data)
            raise OSError("gone")

        self.session._write = broken
        self.session.send(FramedMessage(b'{"a":1}'))
        self.session.send(FramedMessage(b'{"b":2}'))
        self.assertEqual((len(attempts), self.session.state, self.closed), (1, "closed", [self.session]))
        self.assertEqual((self.finished, self.aborted, self.clock.getDelayedCalls()), ([], [], []))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_stalled_on_a_delta(self):
        """A delta that leaves too much unread aborts the stream; later deltas are dropped."""
        self.unsent = 101
        self.session.send(FramedMessage(b'{"a":1}'))
        self.session.send(FramedMessage(b'{"b":2}'))
        self.assertEqual((len(self.writes), self.session.state, self.aborted), (2, "closed", [True]))
        self.assertEqual((self.finished, self.closed, self.clock.getDelayedCalls()), ([], [self.session], []))

    def test_delta_sent_while_closing_is_dropped(self):
        """A delta sent to the session from its own close callback (the notifier) is not written."""
        told = []

        def on_closed(session):
            session.send(FramedMessage(b'{"late":1}'))
            told.append(session)

        self.session._on_closed = on_closed
        self.session.connection_lost()
        self.assertEqual((len(self.writes), told, self.session.state), (1, [self.session], "closed"))
