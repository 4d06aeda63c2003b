"""
The map session's delta write path alone: one delta written to N started sessions.

Method: ``N`` :class:`~headscale_tw.control.sessions.MapSession` objects on a
``Clock`` with a list's ``append`` as their writer, each started with a full map;
then, ``--rounds`` times, one framed 70-byte delta is sent to all of them and the
loop is timed (``perf_counter``). Prints one JSON line: the fastest and the
median round in ms. No sockets, HTTP/2 or notifier: this is the per-write cost
of the session object (its state check, counters and keep-alive bookkeeping),
which a change reaching every stream pays once per stream::

    python bench/map_session_write.py --sessions 1000 --rounds 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from twisted.internet.task import Clock

from headscale_tw.control.framing import ZSTD, FramedMessage
from headscale_tw.control.sessions import MapSession

DELTA = b'{"PeersChangedPatch":[{"NodeID":1,"Endpoints":["192.0.2.1:41641"]}]}'


def measure(sessions: int, rounds: int) -> dict:
    """Fastest and median time (ms) to send one delta to ``sessions`` streaming sessions."""
    clock = Clock()
    sink: list[bytes] = []
    streams = [MapSession(i, sink.append, lambda: None, clock, interval=lambda: 50.0, unsent=lambda: 0,
                          encoding=ZSTD) for i in range(sessions)]
    for session in streams:
        session.start(FramedMessage(b'{"full":1}'))
    times = []
    for _ in range(rounds):
        message = FramedMessage(DELTA)
        message.framed(ZSTD)  # compressed once, outside the timed loop, as the notifier does
        sink.clear()
        start = time.perf_counter()
        for session in streams:
            session.send(message)
        times.append(time.perf_counter() - start)
        if len(sink) != sessions:
            raise SystemExit(f"{len(sink)} of {sessions} sessions were written to")
    return {"sessions": sessions, "rounds": rounds, "min_ms": round(min(times) * 1e3, 3),
            "median_ms": round(statistics.median(times) * 1e3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(measure(args.sessions, args.rounds)))


if __name__ == "__main__":
    main()
