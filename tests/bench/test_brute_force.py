# -*- test-case-name: tests.bench.test_brute_force -*-
"""
Brute force against the in-process server: wrong pre-auth keys and broken Noise
handshakes from one address are throttled, while a legitimate node registering
from another address at the same time is served.
"""

from __future__ import annotations

__all__ = ["BruteForceTests"]

import base64
import json
import math

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from headscale_tw import secrets as keysecrets
from headscale_tw.bench import wire
from headscale_tw.bench.simnode import KeyFetch, RegistrationFailed, SimNode
from headscale_tw.metrics import make_registry
from headscale_tw.throttle import NOISE_HANDSHAKES, PREAUTH_KEYS
from tests.bench._server import InProcessServer

ATTACKER = "198.51.100.66"
HONEST = "203.0.113.7"


class _From:
    """A SimNode connector that dials the in-process server from one address."""

    def __init__(self, server: InProcessServer, host: str) -> None:
        self.server = server
        self.host = host

    def connect(self, protocol):
        return self.server.connect(protocol, self.host)


def _wrong_keys(server: InProcessServer, n: int) -> list[str]:
    """Well-formed keys that do not match: unknown prefixes, and the real key's prefix with a wrong secret."""
    _, real_prefix, _ = keysecrets.parse_key(server.auth_key)
    keys = []
    for i in range(n):
        text, prefix, secret = keysecrets.generate_key("auth")
        keys.append(text.replace(prefix, real_prefix) if i % 2 else text)
    return keys


class BruteForceTests(unittest.TestCase):
    """Throttling engages for the attacker's address only; the honest client registers meanwhile."""

    def setUp(self):
        self.server = InProcessServer(self)
        self.throttles = self.server.plane.throttles
        self.start = self.server.clock.seconds()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def _allowed(self, settings) -> int:
        """Failures a source may have had by now: the burst plus what the elapsed time refilled."""
        elapsed = self.server.clock.seconds() - self.start
        return settings.burst + math.ceil(elapsed * settings.per_second)

    async def _attack_register(self, n: int, wave: int = 100) -> list[str]:
        """n wrong pre-auth keys on one Noise connection, ``wave`` in flight at once; the Error texts."""
        attacker = SimNode(0, _From(self.server, ATTACKER), b"127.0.0.1:8080", "")
        await attacker.fetch_key()
        await attacker.dial()
        errors = []
        keys = _wrong_keys(self.server, n)
        for start in range(0, n, wave):
            pending = []
            for wrong in keys[start:start + wave]:
                body = wire.register_body(wire.random_key("nodekey"), wrong, attacker._hostinfo(), attacker.nl_key)
                pending.append(attacker.client.request(
                    b"POST", b"/machine/register", json.dumps(body).encode(),
                    wire.request_headers(attacker.node_key)))
            for d in pending:
                response = await d
                self.assertEqual(response.status, 200)
                errors.append(json.loads(response.body).get("Error", ""))
        return errors

    async def _honest_up(self) -> SimNode:
        node = SimNode(1, _From(self.server, HONEST), b"127.0.0.1:8080", self.server.auth_key)
        await node.up()
        return node

    def test_wrong_preauth_keys_throttled_honest_client_registers(self):
        """500 wrong keys from one address: at most the burst (plus refill) are checked, the rest refused,
        while a node with the valid reusable key registers from another address at the same time."""
        from twisted.internet.defer import Deferred, gatherResults

        attack = Deferred.fromCoroutine(self._attack_register(500))
        honest = Deferred.fromCoroutine(self._honest_up())

        async def both():
            return await gatherResults([attack, honest])

        errors, node = self.server.run(both(), rounds=400)
        invalid = errors.count("invalid auth key")
        refused = [e for e in errors if e.startswith(f"too many failed pre-auth keys from {ATTACKER}; try again in ")]
        self.assertEqual(invalid + len(refused), 500)
        self.assertGreaterEqual(invalid, PREAUTH_KEYS.burst)
        self.assertLessEqual(invalid, self._allowed(PREAUTH_KEYS))
        preauth = self.throttles.preauth_key
        # Work is bounded: only the admitted keys were looked up and verified.
        self.assertEqual((preauth.failures, preauth.refused), (invalid, len(refused)))
        self.assertIsNotNone(self.server.plane.state.by_machine_key(node.machine_key.public().text))
        self.assertEqual(node.errors, [])

        # From the attacker's address even the right key waits for the bucket to refill ...
        same_source = SimNode(2, _From(self.server, ATTACKER), b"127.0.0.1:8080", self.server.auth_key)
        failure = self._run_failing(same_source.up())
        self.assertIn(b"too many failed pre-auth keys", str(failure.value).encode())
        # ... which one token's worth of time does.
        self.server.clock.advance(1 / PREAUTH_KEYS.per_second)
        self.server.run(SimNode(3, _From(self.server, ATTACKER), b"127.0.0.1:8080", self.server.auth_key).up())

        # Visible: one summary line for the attacker, and the counters.
        lines = self._summary_lines("preauth_key")
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], rf"^{invalid} failed pre-auth keys from {ATTACKER} in the last 60 s;"
                                   rf" throttled \({len(refused) + 1} refused\)$")
        text = self._scrape()
        self.assertIn(f'headscale_auth_failures_total{{kind="preauth_key"}} {float(invalid)}', text)
        self.assertIn(f'headscale_auth_throttled_total{{kind="preauth_key"}} {float(len(refused) + 1)}', text)

    def test_broken_handshakes_throttled_honest_client_connects(self):
        """Garbage /ts2021 handshakes from one address end in 429 after the burst; another address connects."""
        garbage = base64.b64encode(bytes(101))  # right size, wrong message type: the codec refuses it
        request = (b"POST /ts2021 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: tailscale-control-protocol\r\n"
                   b"Connection: upgrade\r\nX-Tailscale-Handshake: " + garbage + b"\r\nContent-Length: 0\r\n\r\n")

        async def attack():
            statuses = []
            for _ in range(60):
                fetch = KeyFetch(request)
                await self.server.connect(fetch, ATTACKER)
                status, body = await fetch.result
                statuses.append(status)
                if status == 429:
                    self.assertIn(b"too many failed Noise handshakes from " + ATTACKER.encode(), body)
            return statuses

        statuses = self.server.run(attack(), rounds=2000)
        self.assertEqual(statuses.count(101), NOISE_HANDSHAKES.burst)  # 101 + error frame, then closed
        self.assertEqual(statuses.count(429), 60 - NOISE_HANDSHAKES.burst)
        node = self.server.run(self._honest_up())
        self.assertIsNotNone(self.server.plane.state.by_machine_key(node.machine_key.public().text))
        lines = self._summary_lines("noise_handshake")
        self.assertEqual(lines, [f"20 failed Noise handshakes from {ATTACKER} in the last 60 s; throttled (40 refused)"])
        self.assertIn('headscale_auth_throttled_total{kind="noise_handshake"} 40.0', self._scrape())

    def _run_failing(self, coroutine):
        try:
            self.server.run(coroutine)
        except RegistrationFailed as e:
            from twisted.python.failure import Failure

            return Failure(e)
        self.fail("registration was not refused")

    def _summary_lines(self, kind: str) -> list[str]:
        """Summarize once an interval has passed (the plane's timer job); the lines logged for ``kind``."""
        del self.events[:]
        self.server.clock.advance(self.throttles.interval)
        self.throttles.summarize()
        return [formatEvent(e) for e in self.events if e.get("kind") == kind]

    def _scrape(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(make_registry(self.server.plane, process=False)).decode()
