"""Two (or more) control planes on one PostgreSQL database, joined by real change feeds."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock

from headscale_tw.control.cluster import ClusterLink, ClusterSync
from headscale_tw.control.instances import InstanceRegistry
from headscale_tw.control.lease import LeaseKeeper
from headscale_tw.control.lifecycle import LIFECYCLE_LEASES
from headscale_tw.storage.changefeed import ChangeFeed, PublishingDatabase, postgres_listener
from headscale_tw.testing.db import open_test_database
from tests.control._harness import Harness

TIMEOUT = 15.0


def wait_until(sync: ClusterSync, predicate, timeout: float = TIMEOUT) -> Deferred:
    """Fire once ``predicate()`` holds, checked now and after every change ``sync`` applies.

    It fires from the reactor, not from inside ``sync``'s queue: a test resumed there
    would run while that queue is busy, and work it queues would wait for the test.
    """
    d: Deferred = Deferred()
    held: list = []

    def check(_change=None):
        if not held and not d.called and predicate():
            held.append(reactor.callLater(0, lambda: d.called or d.callback(None)))

    sync.observers.append(check)
    check()
    d.addTimeout(timeout, reactor)
    d.addBoth(lambda result: (sync.observers.remove(check), result)[1])
    return d


class Member:
    """One instance, wired as ``service.py`` wires it: a Harness whose writes publish, a feed, its
    ClusterSync, the shared presence, an instance registry and (``leases=True``) the lifecycle jobs'
    lease keepers. The registry and keepers run on a Clock of their own, kept at the Harness's time
    by :meth:`advance` (the Harness's clock holds only the control plane's timers)."""

    def __init__(self, testcase, db_config, leases=False, **harness_kw):
        raw = self.raw = open_test_database(testcase, db_config)
        self.feed = ChangeFeed(postgres_listener(db_config.postgres, reactor), raw.pool, reactor,
                               initial_backoff=0.1, max_backoff=0.5)
        testcase.addCleanup(self.feed.stop)
        self.id = self.feed.instance_id
        self.keepers: dict = {}
        link = ClusterLink(self.id, self.feed.publish, raw.node_sessions,
                           lease_for=(lambda name: self.keepers[name].lease) if leases else None)
        self.h = Harness(testcase, db=PublishingDatabase(raw, self.feed.publish), cluster=link, **harness_kw)
        testcase.addCleanup(self.h.notifier.stop)
        testcase.addCleanup(self.h.registrar.stop)
        self.clock = Clock()
        self.clock.advance(self.h.clock.seconds())
        if leases:
            self.keepers = {name: LeaseKeeper(raw.leases, name, self.id, self.clock) for name in LIFECYCLE_LEASES}
        self.sync = ClusterSync(self.h.state, self.h.notifier, self.h.policy, self.feed.publish, self.h.presence,
                                auth_requests=self.h.registrar.auth_requests)
        self.registry = InstanceRegistry(raw.instances, self.id, self.clock,
                                         on_membership=self.sync.membership_changed)
        self.feed.subscribe(self.sync.changed, self.sync.resync)
        self.resyncs = 0
        self.sync.observers.append(self._count)
        self.running = False
        testcase.addCleanup(self._stop)

    def _count(self, change):
        if change is None:
            self.resyncs += 1

    def start(self) -> Deferred:
        """Start the registry (and keepers) and the feed; fires after the first LISTEN and its resync."""
        self.running = True
        self.registry.startService()
        for keeper in self.keepers.values():
            keeper.startService()
        self.feed.start()
        return wait_until(self.sync, lambda: self.resyncs >= 1)

    def advance(self, seconds: int) -> None:
        """Move this instance's clock on one second at a time (heartbeats, leases, offline grace)."""
        for _ in range(int(seconds)):
            self.h.clock.advance(1)
            self.clock.advance(1)

    def kill(self) -> None:
        """Die without a clean stop: no more notifications in or out, no more heartbeats or lease
        renewals (this instance's clock is never advanced again), rows left behind."""
        self.feed.stop()
        self.running = False

    def _stop(self):
        stops = [service.stopService() for service in (*self.keepers.values(), self.registry) if service.running]
        return DeferredList(stops) if stops else None
