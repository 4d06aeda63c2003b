"""The DATA-frame shortcut of the test client against the real server-side ``h2`` stack."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.trial import unittest

from headscale_tw.testing.h2_data import DataFrameSplitter, window_update

STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 1 << 30


class ShortcutClient:
    """A client ``h2`` connection whose plain DATA frames go through :class:`DataFrameSplitter`."""

    def __init__(self) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.splitter = DataFrameSplitter(STREAM_WINDOW, CONNECTION_WINDOW)
        self.open: set[int] = set()
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.h2_data_frames = 0
        self.shortcut_frames = 0

    def request(self) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(b":method", b"POST"), (b":scheme", b"https"),
                                         (b":authority", b"x"), (b":path", b"/machine/map")], end_stream=True)
        self.open.add(stream_id)
        self.bodies[stream_id] = b""
        return stream_id

    def receive(self, data: bytes) -> None:
        for stream_id, payload in self.splitter.feed(data, self.open.__contains__):
            if stream_id:
                self.shortcut_frames += 1
                self.bodies[stream_id] += payload
                continue
            for event in self.h2.receive_data(payload):
                if isinstance(event, h2.events.DataReceived):
                    self.h2_data_frames += 1
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    self.bodies[event.stream_id] += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    self.open.discard(event.stream_id)
                    self.splitter.forget(event.stream_id)
                    self.ended.add(event.stream_id)

    def outgoing(self) -> bytes:
        return self.h2.data_to_send() + self.splitter.take_window_updates()


class DataFrameSplitterTests(unittest.TestCase):
    """Frames from the real server-side ``h2`` arrive whole and in order; windows are refilled."""

    def setUp(self):
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.server.initiate_connection()
        self.client = ShortcutClient()
        self.exchange()

    def exchange(self, chunk: int = 0) -> None:
        """Move bytes both ways until quiet; server bytes reach the client in ``chunk``-sized pieces."""
        for _ in range(100):
            to_server = self.client.outgoing()
            if to_server:
                self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            step = chunk or len(to_client) or 1
            for at in range(0, len(to_client), step):
                self.client.receive(to_client[at:at + step])
        self.fail("the connection did not go quiet")

    def respond(self, stream_id: int, payloads: list[bytes], end: bool) -> None:
        self.server.send_headers(stream_id, [(":status", "200")])
        for payload in payloads:
            self.server.send_data(stream_id, payload)
        if end:
            self.server.end_stream(stream_id)

    def test_stream_bodies_arrive_whole_and_in_order(self):
        """Bytes split at every odd boundary still give each stream exactly what the server sent."""
        first, second = self.client.request(), self.client.request()
        self.exchange()
        self.respond(first, [b"a%d" % i * 50 for i in range(40)], end=False)
        self.respond(second, [b"lite"], end=True)
        self.exchange(chunk=7)
        self.assertEqual(self.client.bodies[first], b"".join(b"a%d" % i * 50 for i in range(40)))
        self.assertEqual(self.client.bodies[second], b"lite")
        self.assertEqual(self.client.ended, {second})
        self.assertEqual(self.client.shortcut_frames, 41)  # every DATA frame with a payload
        self.assertEqual(self.client.h2_data_frames, 1)  # the empty END_STREAM frame of ``second``

    def test_end_stream_goes_through_h2(self):
        """A DATA frame with END_STREAM is left to h2, which ends the stream."""
        stream_id = self.client.request()
        self.exchange()
        self.server.send_headers(stream_id, [(":status", "200")])
        self.server.send_data(stream_id, b"last", end_stream=True)
        self.exchange()
        self.assertEqual(self.client.ended, {stream_id})
        self.assertEqual(self.client.h2_data_frames, 1)
        self.assertEqual(self.client.bodies[stream_id], b"last")

    def test_windows_are_refilled(self):
        """After more than a whole stream window of data the server can still send: the splitter's
        WINDOW_UPDATEs reached the real server stack."""
        stream_id = self.client.request()
        self.exchange()
        self.server.send_headers(stream_id, [(":status", "200")])
        payload = b"x" * 16384
        sent = 0
        while sent < 3 * STREAM_WINDOW:
            self.assertGreaterEqual(self.server.local_flow_control_window(stream_id), len(payload))
            self.server.send_data(stream_id, payload)
            sent += len(payload)
            self.exchange()
        self.assertEqual(len(self.client.bodies[stream_id]), sent)
        self.assertGreater(self.server.local_flow_control_window(stream_id), STREAM_WINDOW // 2)

    def test_unknown_stream_is_left_to_h2(self):
        """DATA for a stream the caller did not name is passed on untouched."""
        splitter = DataFrameSplitter(STREAM_WINDOW, CONNECTION_WINDOW)
        frame = b"\x00\x00\x02\x00\x00\x00\x00\x00\x05hi"
        self.assertEqual(splitter.feed(frame, lambda stream_id: False), [(0, frame)])
        self.assertEqual(splitter.take_window_updates(), b"")

    def test_window_update_frame(self):
        """A WINDOW_UPDATE frame is 9 header bytes of type 8 plus the 31-bit increment."""
        self.assertEqual(window_update(3, 1 << 21), b"\x00\x00\x04\x08\x00\x00\x00\x00\x03\x00\x20\x00\x00")
