"""Tests for :mod:`headscale_tw.derp.admission`: memory first, then a bounded database look-up."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.derp.admission import NodeKeyAdmission

KNOWN, ELSEWHERE, UNKNOWN = "nodekey:" + "aa" * 32, "nodekey:" + "bb" * 32, "nodekey:" + "cc" * 32


class NodeKeyAdmissionTests(unittest.TestCase):
    """Which node keys the DERP server admits, and how long it may ask the database."""

    def setUp(self):
        self.clock = Clock()
        self.asked = []
        self.pending = {}

    def lookup(self, node_key):
        """The database: ELSEWHERE is a row; a key in ``self.pending`` answers when the test fires it."""
        self.asked.append(node_key)
        if node_key in self.pending:
            return self.pending[node_key]
        return defer.succeed(object() if node_key == ELSEWHERE else None)

    def admission(self, **kw):
        return NodeKeyAdmission(lambda key: key == KNOWN, self.clock, **kw)

    def test_known_in_memory_admitted_without_asking(self):
        """A key in memory is admitted at once, without a look-up."""
        self.assertIs(self.admission(lookup=self.lookup)(KNOWN), True)
        self.assertEqual(self.asked, [])

    def test_single_instance_refuses_a_miss(self):
        """Without a database look-up (one instance) an unknown key is refused at once."""
        self.assertIs(self.admission()(ELSEWHERE), False)

    def test_registered_elsewhere_admitted(self):
        """A key memory does not hold yet but the database does is admitted and counted."""
        admission = self.admission(lookup=self.lookup)
        self.assertIs(self.successResultOf(admission(ELSEWHERE)), True)
        self.assertIs(self.successResultOf(admission(UNKNOWN)), False)
        self.assertEqual(self.asked, [ELSEWHERE, UNKNOWN])
        self.assertEqual((admission.found_in_database, admission.in_flight), (1, 0))

    def test_slow_database_refuses_after_timeout(self):
        """A look-up that takes longer than the timeout refuses the key, and leaves no timer."""
        self.pending[ELSEWHERE] = defer.Deferred()
        admission = self.admission(lookup=self.lookup, timeout=3.0)
        d = admission(ELSEWHERE)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual((admission.in_flight, self.clock.getDelayedCalls()), (0, []))

    def test_failing_database_refuses(self):
        """A look-up that fails refuses the key."""
        self.pending[ELSEWHERE] = defer.fail(ConnectionError("database gone"))
        self.assertIs(self.successResultOf(self.admission(lookup=self.lookup)(ELSEWHERE)), False)

    def test_lookups_bounded(self):
        """Beyond max_lookups at once, unknown keys are refused without asking."""
        self.pending[UNKNOWN] = defer.Deferred()
        admission = self.admission(lookup=self.lookup, max_lookups=2)
        first, second = admission(UNKNOWN), admission(UNKNOWN)
        self.assertIs(admission(ELSEWHERE), False)
        self.assertEqual(self.asked, [UNKNOWN, UNKNOWN])
        self.pending[UNKNOWN].callback(None)
        self.assertEqual([self.successResultOf(first), self.successResultOf(second)], [False, False])
        self.assertIs(self.successResultOf(admission(ELSEWHERE)), True)

    def test_cancelled_when_the_client_leaves(self):
        """Cancelling (the client disconnected) ends the look-up with CancelledError and frees its slot."""
        self.pending[ELSEWHERE] = defer.Deferred()
        admission = self.admission(lookup=self.lookup)
        d = admission(ELSEWHERE)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual((admission.in_flight, self.clock.getDelayedCalls()), (0, []))
