"""
SSH check mode across two instances on one PostgreSQL database.

The destination node's follow-up fetch is held on instance A while the admin
runs ``headscale auth approve`` (or ``reject``) against instance B: the change
feed wakes A. Notifications use the real reactor; every wait has a timeout.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from headscale_tw.control.ssh_check import SSHChecks
from headscale_tw.testing.db import create_postgres_database
from tests.cluster._cluster import Member, wait_until

POLICY = """{
  "tagOwners": {"tag:server": ["alice@"]},
  "ssh": [{"action": "check", "src": ["alice@"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "1h"}],
}"""


class CrossInstanceSSHCheckTests(TestCase):
    """A check held on one instance is answered through another."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.db_config = create_postgres_database(self)
        self.a = Member(self, self.db_config, policy=POLICY)
        self.b = Member(self, self.db_config)
        yield DeferredList([self.a.start(), self.b.start()], fireOnOneErrback=True, consumeErrors=True)
        h = self.a.h
        self.laptop, _ = h.register("laptop")
        h.make_key("tagged", reusable=True, tags=("tag:server",))
        self.server, _ = h.register("server", auth="tagged")
        self.checks = SSHChecks(h.state, h.policy, h.notifier, h.registrar.auth_requests, h.config.server_url)

    def hold_on_a(self) -> tuple[str, Deferred]:
        """Open a check on A and hold its follow-up there; ``(auth_id, held answer)``."""
        ids = (str(self.laptop.id), str(self.server.id))
        first = self.a.h.run(self.checks.action(self.server.machine_key, *ids, {}))
        auth_id = parse_qs(urlsplit(first["holdAndDelegate"]).query)["auth_id"][0]
        held = Deferred.fromCoroutine(self.checks.action(self.server.machine_key, *ids, {"auth_id": auth_id}))
        self.assertNoResult(held)
        return auth_id, held

    @inlineCallbacks
    def test_approve_on_b_accepts_on_a(self):
        """auth approve on B answers the fetch held on A with accept, through the change feed."""
        auth_id, held = self.hold_on_a()
        self.b.h.run(self.b.h.registrar.approve(auth_id))
        yield wait_until(self.a.sync, lambda: held.called)
        self.assertTrue(self.successResultOf(held)["accept"])
        self.assertEqual(self.a.h.registrar.auth_requests.waiting, 0)

    @inlineCallbacks
    def test_reject_on_b_rejects_on_a(self):
        """auth reject on B answers the fetch held on A with reject."""
        auth_id, held = self.hold_on_a()
        self.b.h.run(self.b.h.registrar.reject(auth_id))
        yield wait_until(self.a.sync, lambda: held.called)
        self.assertTrue(self.successResultOf(held)["reject"])
