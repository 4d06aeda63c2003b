"""
The Noise layer's HTTP/2 send loop: several frames per reactor turn, one transport write.

Most tests drive ``BatchingH2Connection`` directly with an h2 client and a
``Clock``, so reactor turns and ``callLater`` calls can be counted; one goes
end to end through Noise with the fake client over iosim.
"""


import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET, Site

from headscale_tw._twisted_private import SEND_BATCH_FRAMES, BatchingH2Connection, outbound_queue, use_twisted_send_loop
from headscale_tw.keys import MachinePrivate
from headscale_tw.noise.resource import Ts2021Resource
from headscale_tw.testing.noise_client import NoiseClient


class _CountingClock(Clock):
    """A Clock that counts callLater calls."""

    def __init__(self):
        super().__init__()
        self.scheduled = 0

    def callLater(self, *args, **kwargs):
        self.scheduled += 1
        return super().callLater(*args, **kwargs)

    def turn(self):
        """Run the calls that are due now, but not those they schedule: one reactor turn."""
        self._sortCalls()
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        self.calls = [call for call in self.calls if call.getTime() > self.seconds()]
        for call in due:
            call.called = 1
            call.func(*call.args, **call.kw)


class _Hold(resource.Resource):
    """Keeps every request open so the test can write to its stream."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render_GET(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class _WritesTransport(StringTransport):
    """A StringTransport that remembers each write separately."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


class _Harness:
    """A ``BatchingH2Connection`` on a counting Clock, and an h2 client talking to it."""

    def __init__(self, client_settings=None, connection_window=0, twisted_loop=False, clock=None):
        self.clock = clock or _CountingClock()
        self.hold = _Hold()
        site = Site(self.hold, reactor=self.clock)
        self.server = BatchingH2Connection(self.clock)
        self.server.site = site
        self.server.factory = site
        self.server.requestFactory = site.requestFactory
        self.server.timeOut = None
        self.server.callLater = self.clock.callLater
        if twisted_loop:
            # For comparison: Twisted's own one-frame-per-turn loop.
            loop = use_twisted_send_loop(self.server)
            for call in self.clock.getDelayedCalls():
                call.cancel()
            self.clock.callLater(0, loop)
        self.transport = _WritesTransport()
        self.server.makeConnection(self.transport)
        self.transport.registerProducer(self.server, True)
        self.clock.advance(0)  # the send loop starts and waits for data

        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        if connection_window:
            self.client.increment_flow_control_window(connection_window)
        self.data = {}  # stream id -> bytes received
        self.order = []  # stream id of each DATA frame, in order
        self.ended = set()

    def to_server(self):
        data = self.client.data_to_send()
        if data:
            self.server.dataReceived(data)

    def to_client(self):
        """Deliver what the server wrote; return the number of DATA frames in it."""
        data = self.transport.value()
        self.transport.clear()
        frames = 0
        for event in self.client.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                if event.data:
                    frames += 1
                    self.order.append(event.stream_id)
                self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
            if isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
        return frames

    def drain(self, turns=50):
        """Run reactor turns until the send loop is idle (at most ``turns``: a busy loop fails the test)."""
        for _ in range(turns):
            if not self.clock.getDelayedCalls():
                return
            self.turn()

    def open_streams(self, n):
        ids = []
        for _ in range(n):
            sid = self.client.get_next_available_stream_id()
            self.client.send_headers(
                sid,
                [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"), (b":path", b"/")],
                end_stream=True,
            )
            ids.append(sid)
        self.to_server()
        for request in self.hold.requests:
            request.write(b"")  # sends the response headers
        self.to_client()
        self.transport.writes.clear()
        return ids, list(self.hold.requests)

    def turn(self):
        """One reactor turn; return the transport writes it made."""
        before = len(self.transport.writes)
        self.clock.turn()
        return self.transport.writes[before:]


class BatchingTests(unittest.TestCase):
    def test_small_frames_share_one_write(self):
        """Up to SEND_BATCH_FRAMES queued small frames go out in one transport write per turn."""
        h = _Harness()
        n = 2 * SEND_BATCH_FRAMES + 1
        ids, requests = h.open_streams(n)
        for request in requests:
            request.write(b"d" * 100)
        # The first write woke the idle loop, which sent that frame at once.
        self.assertEqual(len(h.transport.writes), 1)
        self.assertEqual(h.to_client(), 1)
        writes = h.turn()
        self.assertEqual(len(writes), 1)
        self.assertEqual(h.to_client(), SEND_BATCH_FRAMES)
        writes = h.turn()
        self.assertEqual(len(writes), 1)
        self.assertEqual(h.to_client(), SEND_BATCH_FRAMES)
        self.assertEqual({sid: len(h.data[sid]) for sid in ids}, {sid: 100 for sid in ids})
        # Nothing left: the loop waits for data instead of spinning.
        h.turn()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_same_frames_as_twisted(self):
        """Streams are interleaved frame by frame exactly as Twisted's loop does, only fewer writes."""

        def run(twisted_loop):
            h = _Harness(
                client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20},
                connection_window=1 << 24,
                twisted_loop=twisted_loop,
            )
            h.to_server()
            ids, requests = h.open_streams(3)
            requests[0].write(b"a" * 16384 * 3)
            for k in range(4):
                requests[1].write(b"b%d" % k * 5000)
                requests[2].write(b"c" * 100)
            requests[2].finish()
            h.drain()
            h.to_client()
            self.assertEqual(h.clock.getDelayedCalls(), [])
            return h.order, h.data, h.ended, len(h.transport.writes)

        order, data, ended, writes = run(twisted_loop=False)
        t_order, t_data, t_ended, t_writes = run(twisted_loop=True)
        self.assertEqual((order, data, ended), (t_order, t_data, t_ended))
        self.assertEqual(len(order), 11)
        # Twisted: one write per frame (11 DATA + END_STREAM). Here: the frame sent on
        # waking, then two batches (the second because of SEND_BATCH_BYTES).
        self.assertEqual((writes, t_writes), (3, 12))

    def test_end_stream_in_batch(self):
        """Finishing responses end their streams (and clean them up) inside a batch."""
        h = _Harness()
        ids, requests = h.open_streams(4)
        for request in requests:
            request.write(b"body")
            request.finish()
        h.drain()
        h.to_client()
        self.assertEqual(h.ended, set(ids))
        self.assertEqual({h.data[sid] for sid in ids}, {b"body"})
        self.assertEqual(h.server.streams, {})
        self.assertEqual(h.clock.getDelayedCalls(), [])


class DirectSendTests(unittest.TestCase):
    """A write to an idle connection goes out at once, skipping the loop; one shared turn per reactor turn."""

    def test_fan_out_costs_one_call_later(self):
        """One frame written to each of three idle connections: three immediate writes, one callLater in all."""
        clock = _CountingClock()
        harnesses = [_Harness(clock=clock) for _ in range(3)]
        streams = [h.open_streams(1) for h in harnesses]
        clock.turn()  # whatever opening the streams scheduled
        before = clock.scheduled
        for h, (_, (request,)) in zip(harnesses, streams):
            request.write(b"delta")
        self.assertEqual([len(h.transport.writes) for h in harnesses], [1, 1, 1])
        self.assertEqual([h.server.direct_frames for h in harnesses], [1, 1, 1])
        self.assertEqual(clock.scheduled - before, 1)
        for h, ((sid,), _) in zip(harnesses, streams):
            h.to_client()
            self.assertEqual(h.data[sid], b"delta")
        clock.turn()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_later_writes_batched_next_turn(self):
        """After a direct frame, further writes and the end of the stream go out together in the next turn."""
        h = _Harness()
        (sid,), (request,) = h.open_streams(1)
        request.write(b"first")
        request.write(b"second")
        request.write(b"third")
        request.finish()
        self.assertEqual(len(h.transport.writes), 1)
        writes = h.turn()
        self.assertEqual(len(writes), 1)
        h.to_client()
        self.assertEqual(h.data[sid], b"firstsecondthird")
        self.assertIn(sid, h.ended)
        self.assertEqual(h.server.direct_frames, 1)
        h.drain()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_busy_connection_keeps_the_loop(self):
        """A frame too large for one DATA frame (or the window) still goes through the loop."""
        h = _Harness()
        (sid,), (request,) = h.open_streams(1)
        request.write(b"x" * (h.server.conn.max_outbound_frame_size + 1))
        self.assertEqual(h.server.direct_frames, 0)
        h.drain()
        h.to_client()
        self.assertEqual(len(h.data[sid]), h.server.conn.max_outbound_frame_size + 1)


class FlowControlTests(unittest.TestCase):
    def test_zero_window_stream_waits_for_window_update(self):
        """A stream whose window is exhausted is not picked again (no busy loop) until WINDOW_UPDATE; others go on."""
        h = _Harness(connection_window=1 << 24)
        h.to_server()
        (s1, s3), (r1, r3) = h.open_streams(2)
        r1.write(b"a" * 100000)  # more than the 65535-byte stream window
        h.drain()
        h.to_client()
        self.assertEqual(len(h.data[s1]), 65535)
        # Stream 1 is blocked and nothing else has data: the loop has stopped.
        self.assertEqual(h.clock.getDelayedCalls(), [])
        scheduled = h.clock.scheduled
        for _ in range(10):
            self.assertEqual(h.turn(), [])
        self.assertEqual(h.clock.scheduled, scheduled)

        # Another stream is still served while stream 1 waits.
        r3.write(b"c" * 1000)
        h.drain()
        h.to_client()
        self.assertEqual(h.data[s3], b"c" * 1000)
        self.assertEqual(len(h.data[s1]), 65535)
        self.assertEqual(h.clock.getDelayedCalls(), [])

        h.client.increment_flow_control_window(100000, stream_id=s1)
        h.to_server()
        h.drain()
        h.to_client()
        self.assertEqual(h.data[s1], b"a" * 100000)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_unsent_bytes_and_abort(self):
        """stream_backlog counts what waits for the client's window; aborting drops it and resets the stream."""
        from headscale_tw._twisted_private import stream_backlog

        h = _Harness(connection_window=1 << 24)
        h.to_server()
        (s1, s3), (r1, r3) = h.open_streams(2)
        unsent = stream_backlog(r1)
        self.assertEqual(unsent(), 0)
        r1.write(b"a" * 100000)  # the stream window takes 65535
        h.drain()
        h.to_client()
        self.assertEqual(unsent(), 100000 - 65535)
        self.assertEqual(h.server.backlog(s1), 100000 - 65535)
        self.assertEqual(stream_backlog(r3)(), 0)
        r1.channel.abortConnection()
        h.drain()
        events = h.client.receive_data(h.transport.value())
        self.assertEqual([type(e) for e in events], [h2.events.StreamReset])
        self.assertEqual(unsent(), 0)
        self.assertIsNone(outbound_queue(h.server, s1))
        r3.write(b"still served")
        h.drain()
        h.transport.clear()
        self.assertIsNone(stream_backlog(object()))

    def test_settings_raising_window_unblocks(self):
        """A SETTINGS frame raising INITIAL_WINDOW_SIZE also resumes a stream blocked on its window."""
        h = _Harness(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}, connection_window=1 << 24)
        h.to_server()
        (s1,), (r1,) = h.open_streams(1)
        r1.write(b"a" * 5000)
        h.drain()
        h.to_client()
        self.assertNotIn(s1, h.data)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        h.to_server()
        h.drain()
        h.to_client()
        self.assertEqual(h.data[s1], b"a" * 5000)

    def test_transport_backpressure(self):
        """While the transport has paused the connection nothing is sent and the loop does not spin."""
        h = _Harness()
        (s1,), (r1,) = h.open_streams(1)
        h.server.pauseProducing()
        r1.write(b"a" * 1000)
        r1.write(b"b" * 1000)
        for _ in range(5):
            self.assertEqual(h.turn(), [])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.server.resumeProducing()
        h.drain()
        h.to_client()
        self.assertEqual(h.data[s1], b"a" * 1000 + b"b" * 1000)


class _Chunked(resource.Resource):
    """GET /<n> answers with a body made of numbered lines, written in many chunks."""

    isLeaf = True

    def render_GET(self, request):
        n = int(request.postpath[0])
        for chunk in _body_chunks(n):
            request.write(chunk)
        request.finish()
        return NOT_DONE_YET


def _body_chunks(n):
    return [b"".join(b"%03d:%06d\n" % (n, j) for j in range(k * 500, (k + 1) * 500)) for k in range(40)]


class EndToEndTests(unittest.TestCase):
    def test_many_large_streams_intact(self):
        """Many concurrent streams with large bodies arrive through Noise intact and in order per stream."""
        clock = Clock()
        root = resource.Resource()
        root.putChild(b"b", _Chunked())
        site = Site(root, reactor=clock)
        key = MachinePrivate.generate()
        root.putChild(b"ts2021", Ts2021Resource(key, site, clock))
        client = NoiseClient(key.public())
        _, _, pump = connectedServerAndClient(
            lambda: site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 41641)), lambda: client, clock=clock
        )
        pump.flush()
        self.successResultOf(client.ready)
        ds = {n: client.request(b"GET", b"/b/%d" % n) for n in range(30)}
        pump.flush()
        for n, d in ds.items():
            response = self.successResultOf(d)
            self.assertEqual(response.status, 200)
            self.assertEqual(response.body, b"".join(_body_chunks(n)))
