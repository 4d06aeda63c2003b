"""Quick end-to-end smoke test of the control harness."""

from twisted.trial import unittest

from tests.control._harness import Harness


class SmokeTests(unittest.TestCase):
    """The harness registers nodes and streams maps."""

    def test_two_nodes(self):
        """Two registered nodes see each other."""
        h = Harness(self)
        a, ra = h.register("a")
        b, rb = h.register("b")
        self.assertTrue(ra["MachineAuthorized"], ra)
        sa = h.stream(a)
        sb = h.stream(b)
        self.assertEqual(set(sa.applier.peers), {b.id})
        self.assertEqual(set(sb.applier.peers), {a.id})
