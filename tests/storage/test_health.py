"""Tests for headscale_tw.storage.health and the /health resource that uses it."""

from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from headscale_tw.service import HealthResource
from headscale_tw.storage.database import make_pool
from headscale_tw.storage.health import DatabaseHealth
from headscale_tw.testing.db import NonThreadPool, ThreadlessReactor, resolve, sqlite_config


class _StuckThreadPool(NonThreadPool):
    """Holds every interaction until the test releases it, like a database that stopped answering."""

    def __init__(self):
        self.queue = []
        self.stuck = False

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        if self.stuck:
            self.queue.append((onResult, func, args, kw))
        else:
            NonThreadPool.callInThreadWithCallback(self, onResult, func, *args, **kw)

    def release(self):
        self.stuck = False
        while self.queue:
            onResult, func, args, kw = self.queue.pop(0)
            NonThreadPool.callInThreadWithCallback(self, onResult, func, *args, **kw)


class DatabaseHealthTests(unittest.TestCase):
    """Liveness comes from the pool's last success; a probe runs only when the pool was idle."""

    def setUp(self):
        self.clock = ThreadlessReactor()
        self.clock.advance(1000)
        self.threads = _StuckThreadPool()
        self.pool = make_pool(sqlite_config(), self.clock, threadpool=self.threads)
        self.addCleanup(lambda: (self.threads.release(), resolve(self.pool.close())))
        self.health = DatabaseHealth(self.pool, self.clock, interval=10.0, timeout=5.0)

    def interact(self):
        return resolve(self.pool.run_interaction("t", lambda txn: txn.query_one("SELECT 1")))

    def test_unknown_before_any_success(self):
        """A pool that never answered is not healthy."""
        self.assertFalse(self.health.healthy())

    def test_success_makes_healthy(self):
        """Any interaction that returns records proof of life."""
        self.interact()
        self.assertEqual(self.pool.last_success, 1000)
        self.assertTrue(self.health.healthy())

    def test_no_probe_while_busy(self):
        """A tick within ``interval`` of the last success does not touch the database."""
        self.interact()
        self.clock.advance(9)
        self.assertIsNone(self.health.tick())
        self.assertEqual(self.health.probes, 0)

    def test_probe_when_idle(self):
        """After ``interval`` without success a tick probes, and its success keeps the status healthy."""
        self.interact()
        self.clock.advance(10)
        self.assertIsNotNone(self.health.tick())
        self.assertEqual(self.health.probes, 1)
        self.assertEqual(self.pool.last_success, 1010)
        self.clock.advance(20)
        self.assertTrue(self.health.healthy())

    def test_stuck_database_becomes_unhealthy(self):
        """A probe that does not answer within ``timeout`` marks the database unhealthy."""
        self.interact()
        self.threads.stuck = True
        self.clock.advance(10)
        self.health.tick()
        self.assertTrue(self.health.healthy())
        self.clock.advance(5)
        self.assertFalse(self.health.healthy())

    def test_one_probe_at_a_time(self):
        """While a probe is waiting, further ticks start none."""
        self.interact()
        self.threads.stuck = True
        self.clock.advance(10)
        self.health.tick()
        self.clock.advance(1)
        self.assertIsNone(self.health.tick())
        self.assertEqual((self.health.probes, len(self.threads.queue)), (1, 1))

    def test_recovers_after_success(self):
        """Once the database answers again the status is healthy again."""
        self.interact()
        self.threads.stuck = True
        self.clock.advance(10)
        self.health.tick()
        self.clock.advance(5)
        self.assertFalse(self.health.healthy())
        self.threads.release()
        self.clock.advance(1)
        self.interact()
        self.assertTrue(self.health.healthy())

    def test_stale_success_is_unhealthy(self):
        """With no probe run (timer stopped), a success older than 2*interval+timeout is not trusted."""
        self.interact()
        self.clock.advance(25)
        self.assertTrue(self.health.healthy())
        self.clock.advance(1)
        self.assertFalse(self.health.healthy())

    def test_failed_probe_is_unhealthy(self):
        """A probe that raises (the driver failed) marks the database unhealthy at once."""
        self.interact()
        self.clock.advance(10)

        async def broken(desc, fn, *args):
            raise OSError("connection refused")

        self.pool.run_interaction = broken
        self.health.tick()
        self.assertFalse(self.health.healthy())
        self.assertIsNone(self.health._probing)


class HealthResourceTests(unittest.TestCase):
    """``GET /health`` answers from the check it is given, synchronously."""

    def render(self, healthy):
        request = DummyRequest([b""])
        body = HealthResource(healthy).render_GET(request)
        return request.responseCode or 200, body, request.responseHeaders.getRawHeaders(b"content-type")

    def test_pass(self):
        """A healthy database gives 200 and Headscale's passing body."""
        self.assertEqual(self.render(lambda: True), (200, b'{"status":"pass"}', [b"application/json"]))

    def test_fail(self):
        """An unhealthy database gives 503 and a failing body."""
        self.assertEqual(self.render(lambda: False), (503, b'{"status":"fail"}', [b"application/json"]))

    def test_no_database_round_trip(self):
        """Rendering calls only the in-memory check: no interaction reaches the pool."""
        clock = ThreadlessReactor()
        threads = _StuckThreadPool()
        threads.stuck = True
        pool = make_pool(sqlite_config(), clock, threadpool=threads)
        self.addCleanup(lambda: (threads.release(), resolve(pool.close())))
        pool.last_success = clock.seconds()
        health = DatabaseHealth(pool, clock)
        self.assertEqual(self.render(health.healthy)[0], 200)
        self.assertEqual(threads.queue, [])
