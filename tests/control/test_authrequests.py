"""Tests for headscale_tw.control.authrequests."""

from datetime import datetime, timezone

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.control.authrequests import DEFAULT_LIFETIME, DEFAULT_MAX_TOTAL, AuthRequests
from headscale_tw.testing.db import open_test_database, resolve
from tests.control._harness import key


class CountingStore:
    """Wraps an auth request store and counts the reads ``changed``/``recheck`` make."""

    def __init__(self, store):
        self._store = store
        self.reads = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def get_by_id(self, request_id):
        self.reads += 1
        return await self._store.get_by_id(request_id)

    async def get(self, auth_id):
        self.reads += 1
        return await self._store.get(auth_id)


class AuthRequestsTests(unittest.TestCase):
    """Opening, waiting on and finishing auth requests."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.db = open_test_database(self)
        self.store = CountingStore(self.db.auth_requests)
        self.requests = AuthRequests(self.store, self.clock, self.now)

    def now(self):
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    def open(self, source="192.0.2.1"):
        return resolve(self.requests.open("register", source, machine_key=key("mkey"), node_key=key("nodekey")))

    def test_defaults_follow_headscale(self):
        """The lifetime and total cap default to Headscale's register cache: 15 minutes, 1024 entries."""
        self.assertEqual((DEFAULT_LIFETIME, DEFAULT_MAX_TOTAL), (900.0, 1024))

    def test_reject_releases_waiters(self):
        """Every wait on a request ends with its rejected row, and nothing stays registered."""
        row = self.open()
        waits = [Deferred.fromCoroutine(self.requests.wait(row, 60)) for _ in range(2)]
        self.assertEqual(self.requests.waiting, 2)
        resolve(self.requests.reject(row.auth_id))
        self.assertEqual([self.successResultOf(d).state for d in waits], ["rejected", "rejected"])
        self.assertEqual((self.requests.waiting, self.clock.getDelayedCalls()), (0, []))

    def test_changed_reads_only_waited_rows(self):
        """A change notification costs a read only for a row a client waits on here."""
        waited, other = self.open(), self.open()
        wait = Deferred.fromCoroutine(self.requests.wait(waited, 60))
        resolve(self.requests.changed(other.id))
        resolve(self.requests.changed(12345))
        self.assertEqual(self.store.reads, 0)
        resolve(self.db.auth_requests.finish(waited.auth_id, "rejected", reason="elsewhere"))
        resolve(self.requests.changed(waited.id))
        self.assertEqual(self.store.reads, 1)
        self.assertEqual(self.successResultOf(wait).reason, "elsewhere")

    def test_recheck_after_reconnect(self):
        """After the change feed reconnects, each waited-on row is read once and settled ones released."""
        row = self.open()
        wait = Deferred.fromCoroutine(self.requests.wait(row, 60))
        resolve(self.db.auth_requests.finish(row.auth_id, "rejected"))
        resolve(self.requests.recheck())
        self.assertEqual(self.store.reads, 1)
        self.assertEqual(self.successResultOf(wait).state, "rejected")

    def test_approved_registration_waits_for_its_node(self):
        """An approved registration without its node does not yet release a waiting client."""
        user = resolve(self.db.users.create("alice"))
        row = self.open()
        wait = Deferred.fromCoroutine(self.requests.wait(row, 60))
        claimed = resolve(self.requests.claim(row.auth_id, user.id))
        self.requests.release(claimed)
        self.assertNoResult(wait)
        self.assertFalse(self.requests.settled(claimed))

    def test_stop_cancels_waits(self):
        """Stopping cancels every wait and leaves no timer."""
        wait = Deferred.fromCoroutine(self.requests.wait(self.open(), 60))
        self.requests.stop()
        self.failureResultOf(wait, CancelledError)
        self.assertEqual((self.requests.waiting, self.clock.getDelayedCalls()), (0, []))

    def test_expire_sweeps_rows(self):
        """The periodic sweep deletes requests once their lifetime has passed."""
        self.open()
        self.assertEqual(resolve(self.requests.expire()), 0)
        self.clock.advance(DEFAULT_LIFETIME)
        self.assertEqual(resolve(self.requests.expire()), 1)
        self.assertEqual(resolve(self.db.auth_requests.count_pending()), 0)
