"""
Interactive registrations across two instances on one PostgreSQL database.

A client's ``Followup`` long-poll is held on instance A while the admin runs
``headscale auth register`` (or ``reject``) against instance B: the change feed
wakes A, or, when A missed the notification, A's own timeout re-reads the row.
The notifications use the real reactor; every wait is bounded by a timeout.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from headscale_tw.control.authrequests import REJECTED
from headscale_tw.testing.db import create_postgres_database
from tests.cluster._cluster import Member, wait_until
from tests.control._harness import key


def _body(node_key, **extra):
    body = {"Version": 133, "NodeKey": node_key, "OldNodeKey": "nodekey:" + "0" * 64,
            "Expiry": "0001-01-01T00:00:00Z", "Followup": "", "Hostinfo": {"Hostname": "laptop", "OS": "linux"}}
    body.update(extra)
    return body


class CrossInstanceRegistrationTests(TestCase):
    """A registration started on one instance is finished through another."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.db_config = create_postgres_database(self)
        self.a = Member(self, self.db_config)
        self.b = Member(self, self.db_config)
        yield DeferredList([self.a.start(), self.b.start()], fireOnOneErrback=True, consumeErrors=True)
        self.mkey, self.nkey = key("mkey"), key("nodekey")
        response = self.a.h.run(self.a.h.registrar.register(self.mkey, _body(self.nkey), source="192.0.2.5"))
        self.url = response["AuthURL"]
        self.auth_id = self.url.rpartition("/")[2]

    def hold_on_a(self) -> Deferred:
        held = Deferred.fromCoroutine(self.a.h.registrar.register(self.mkey, _body(self.nkey, Followup=self.url),
                                                                  source="192.0.2.5"))
        self.assertNoResult(held)
        return held

    @inlineCallbacks
    def test_register_on_b_answers_the_poll_on_a(self):
        """auth register on B completes the long-poll held on A, through the change feed."""
        held = self.hold_on_a()
        node = self.b.h.run(self.b.h.admin.register(self.auth_id, "alice"))
        yield wait_until(self.a.sync, lambda: held.called)
        response = self.successResultOf(held)
        self.assertTrue(response["MachineAuthorized"])
        self.assertEqual(response["Login"]["LoginName"], "alice@example.com")
        self.assertEqual((node.machine_key, node.register_method), (self.mkey, "cli"))
        self.assertEqual(self.a.h.registrar.auth_requests.waiting, 0)
        self.assertEqual(self.a.h.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_oidc_sign_in_finished_on_b_answers_the_poll_on_a(self):
        """The OIDC confirmation reaching B finishes the login held on A, as ``_mount_oidc`` finishes it.

        B sees the registration as pending (its sign-in page opens), and completes it
        the way the OIDC sign-in does; the poll held on A is answered through the feed.
        (The OIDC rows themselves are shared: tests/oidc/test_signin_e2e.py, *SharedLoginTests*.)
        """
        held = self.hold_on_a()
        self.assertIsNotNone(self.b.h.run(self.b.h.registrar.get_pending(self.auth_id)))
        node = self.b.h.run(self.b.h.registrar.complete(self.auth_id, "alice", register_method="oidc"))
        yield wait_until(self.a.sync, lambda: held.called)
        self.assertTrue(self.successResultOf(held)["MachineAuthorized"])
        self.assertEqual((node.machine_key, node.register_method), (self.mkey, "oidc"))
        self.assertIsNone(self.a.h.run(self.a.h.registrar.get_pending(self.auth_id)))

    @inlineCallbacks
    def test_reject_on_b_tells_the_client_on_a(self):
        """auth reject on B answers the long-poll held on A with the rejection."""
        held = self.hold_on_a()
        self.b.h.run(self.b.h.registrar.reject(self.auth_id))
        yield wait_until(self.a.sync, lambda: held.called)
        self.assertEqual(self.successResultOf(held), {"Error": REJECTED})
        self.assertIsNone(self.a.h.state.by_machine_key(self.mkey))

    def test_missed_notification_is_caught_by_the_timeout(self):
        """With A's change feed down, the held poll's timeout re-reads the row and answers success."""
        self.a.feed.stop()
        held = self.hold_on_a()
        node = self.b.h.run(self.b.h.admin.register(self.auth_id, "alice"))
        self.assertNoResult(held)
        self.a.h.clock.advance(self.a.h.registrar.followup_timeout)
        response = self.successResultOf(held)
        self.assertTrue(response["MachineAuthorized"])
        self.assertEqual(response["User"]["ID"], node.user_id)

    def test_cap_is_shared(self):
        """The per-source cap counts the requests of every instance on the database."""
        from headscale_tw.control.authrequests import AuthRequests
        from headscale_tw.control.registration import Registrar

        h = self.b.h
        capped = Registrar(h.state, h.notifier, h.mapper, h.config, h.clock, policy=h.policy,
                           auth_requests=AuthRequests(h.db.auth_requests, h.clock, h.state.now, max_per_source=2))
        self.assertIn("AuthURL", h.run(capped.register(key("mkey"), _body(key("nodekey")), source="192.0.2.5")))
        refused = h.run(capped.register(key("mkey"), _body(key("nodekey")), source="192.0.2.5"))
        self.assertIn("limit 2", refused["Error"])
