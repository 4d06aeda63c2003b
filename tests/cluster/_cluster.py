"""Two (or more) control planes on one PostgreSQL database, joined by real change feeds."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from headscale_tw.control.cluster import ClusterSync
from headscale_tw.storage.changefeed import ChangeFeed, PublishingDatabase, postgres_listener
from headscale_tw.testing.db import open_test_database
from tests.control._harness import Harness

TIMEOUT = 15.0


def wait_until(sync: ClusterSync, predicate, timeout: float = TIMEOUT) -> Deferred:
    """Fire once ``predicate()`` holds, checked now and after every change ``sync`` applies."""
    d: Deferred = Deferred()

    def check(_change=None):
        if not d.called and predicate():
            d.callback(None)

    sync.observers.append(check)
    check()
    d.addTimeout(timeout, reactor)
    d.addBoth(lambda result: (sync.observers.remove(check), result)[1])
    return d


class Member:
    """One instance: a Harness whose writes publish, a feed and its ClusterSync."""

    def __init__(self, testcase, db_config, **harness_kw):
        raw = open_test_database(testcase, db_config)
        self.feed = ChangeFeed(postgres_listener(db_config.postgres, reactor), raw.pool, reactor,
                               initial_backoff=0.1, max_backoff=0.5)
        testcase.addCleanup(self.feed.stop)
        self.h = Harness(testcase, db=PublishingDatabase(raw, self.feed.publish), **harness_kw)
        testcase.addCleanup(self.h.notifier.stop)
        testcase.addCleanup(self.h.registrar.stop)
        self.sync = ClusterSync(self.h.state, self.h.notifier, self.h.policy, self.feed.publish,
                                auth_requests=self.h.registrar.auth_requests)
        self.feed.subscribe(self.sync.changed, self.sync.resync)
        self.resyncs = 0
        self.sync.observers.append(self._count)

    def _count(self, change):
        if change is None:
            self.resyncs += 1

    def start(self) -> Deferred:
        """Start the feed; fires after the first LISTEN and its resync."""
        self.feed.start()
        return wait_until(self.sync, lambda: self.resyncs >= 1)
