# -*- test-case-name: tests.control.test_backfill -*-
"""``NodeAdmin.backfill_ips`` and ``NodeAdmin.debug_create`` over a real store and notifier."""

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from headscale_tw.config.model import Config, DNSConfig, PrefixesConfig
from headscale_tw.control.ipalloc import AddressesExhausted
from headscale_tw.errors import AlreadyExists, InvalidInput, NotFound
from tests.control._harness import Harness

__all__ = ["BackfillTests", "DebugCreateTests"]


def _config(v4="100.64.0.0/10", v6="fd7a:115c:a1e0::/48"):
    return Config(server_url="https://hs.example.com", dns=DNSConfig(base_domain="tail.example"),
                  prefixes=PrefixesConfig(v4=v4, v6=v6))


class BackfillTests(unittest.TestCase):
    """Nodes get an address of each configured family they lack; peers are told."""

    def test_assigns_missing_family(self):
        """Nodes registered under an IPv4-only config get an IPv6 address once IPv6 is configured."""
        before = Harness(self, config=_config(v6=None))
        a, _ = before.register("a")
        before.register("b")
        self.assertIsNone(a.ipv6)
        h = Harness(self, config=_config(), db=before.db)
        b = h.state.get(2)
        sb = h.stream(b)
        changes = h.run(h.admin.backfill_ips())
        a, b = h.state.get(1), h.state.get(2)
        self.assertEqual(changes, [f'assigned IPv6 "{a.ipv6}" to Node(1) "a"',
                                   f'assigned IPv6 "{b.ipv6}" to Node(2) "b"'])
        self.assertEqual({a.ipv6, b.ipv6}, {"fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"})
        self.assertEqual(a.ipv4, "100.64.0.1")
        stored = h.run(h.db.nodes.get(1))
        self.assertEqual((stored.ipv4, stored.ipv6), (a.ipv4, a.ipv6))
        self.assertIn(a.ipv6 + "/128", sb.applier.peers[1]["Addresses"])
        self.assertIn(b.ipv6 + "/128", sb.applier.node["Addresses"])

    def test_idempotent(self):
        """A second run changes nothing and says so with an empty list."""
        before = Harness(self, config=_config(v4=None))
        before.register("a")
        h = Harness(self, config=_config(), db=before.db)
        self.assertEqual(len(h.run(h.admin.backfill_ips())), 1)
        generation = h.state.generation(1)
        self.assertEqual(h.run(h.admin.backfill_ips()), [])
        self.assertEqual(h.state.generation(1), generation)

    def test_removes_unconfigured_family(self):
        """As Headscale: with the IPv6 prefix removed from the config, IPv6 addresses are dropped."""
        before = Harness(self)
        a, _ = before.register("a")
        h = Harness(self, config=_config(v6=None), db=before.db)
        changes = h.run(h.admin.backfill_ips())
        self.assertEqual(changes, [f'removing IPv6 "{a.ipv6}" from Node(1) "a"'])
        self.assertIsNone(h.run(h.db.nodes.get(1)).ipv6)
        self.assertEqual(h.state.get(1).ipv4, a.ipv4)

    def test_does_not_reuse_taken_addresses(self):
        """A backfilled address is one no other node holds, and a later registration skips it."""
        before = Harness(self, config=_config(v6=None))
        before.register("a")
        h = Harness(self, config=_config(), db=before.db)
        h.register("b")  # takes fd7a:115c:a1e0::1
        h.run(h.admin.backfill_ips())
        self.assertEqual(h.state.get(1).ipv6, "fd7a:115c:a1e0::2")
        c, _ = h.register("c")
        self.assertEqual(c.ipv6, "fd7a:115c:a1e0::3")

    def test_exhausted(self):
        """A full prefix is an error naming it; the node keeps its addresses."""
        before = Harness(self, config=_config(v6=None))
        before.register("a")
        h = Harness(self, config=_config(v6="fd7a:115c:a1e0::/127"), db=before.db)
        failure = self.failureResultOf(_deferred(h.admin.backfill_ips()), AddressesExhausted)
        self.assertIn("fd7a:115c:a1e0::/127", str(failure.value))
        self.assertIsNone(h.state.get(1).ipv6)


class DebugCreateTests(unittest.TestCase):
    """``debug create-node`` opens a pending registration that ``auth register`` finishes."""

    AUTH_ID = "A" * 12 + "b" * 12

    def test_pending_then_registered(self):
        """The pending registration becomes a node with the given name and announced routes."""
        h = Harness(self)
        details = h.run(h.admin.debug_create("made-up", "alice", self.AUTH_ID, ["10.1.0.0/16"]))
        self.assertEqual((details.node.id, details.node.hostname, details.user.name), (0, "made-up", "alice"))
        self.assertTrue(details.node.machine_key.startswith("mkey:"))
        self.assertEqual(details.node.hostinfo["RoutableIPs"], ["10.1.0.0/16"])
        self.assertIsNotNone(h.run(h.registrar.get_pending(self.AUTH_ID)))
        node = h.run(h.admin.register(self.AUTH_ID, "alice"))
        self.assertEqual((node.hostname, node.given_name, node.machine_key), ("made-up", "made-up",
                                                                             details.node.machine_key))
        self.assertEqual(node.hostinfo.get("RoutableIPs"), ["10.1.0.0/16"])
        self.assertEqual(node.ipv4, "100.64.0.1")

    def test_headscale_auth_id(self):
        """Headscale's auth id form (hskey-authreq- and 24 URL-safe characters) is accepted."""
        h = Harness(self)
        auth_id = "hskey-authreq-" + "x_-" * 8
        h.run(h.admin.debug_create("n", "alice", auth_id, []))
        self.assertEqual(h.run(h.admin.register(auth_id, "alice")).hostname, "n")

    def test_invalid_input(self):
        """A bad auth id, empty name or bad route is refused naming the field; nothing is opened."""
        h = Harness(self)
        for args, word in ((("n", "alice", "short", []), "key:"),
                           (("", "alice", self.AUTH_ID, []), "name:"),
                           (("n", "alice", self.AUTH_ID, ["10.0.0.0/33"]), "routes"),
                           (("n", "alice", self.AUTH_ID, "10.0.0.0/8"), "routes")):
            failure = self.failureResultOf(_deferred(h.admin.debug_create(*args)), InvalidInput)
            self.assertIn(word, str(failure.value))
        self.assertIsNone(h.run(h.registrar.get_pending(self.AUTH_ID)))

    def test_unknown_user(self):
        """An unknown user is NotFound and opens nothing."""
        h = Harness(self)
        self.failureResultOf(_deferred(h.admin.debug_create("n", "nobody", self.AUTH_ID, [])), NotFound)
        self.assertIsNone(h.run(h.registrar.get_pending(self.AUTH_ID)))

    def test_auth_id_taken(self):
        """Reusing an auth id is AlreadyExists."""
        h = Harness(self)
        h.run(h.admin.debug_create("n", "alice", self.AUTH_ID, []))
        self.failureResultOf(_deferred(h.admin.debug_create("m", "alice", self.AUTH_ID, [])), AlreadyExists)


def _deferred(coroutine):
    """The coroutine as a Deferred, for ``failureResultOf``."""
    return Deferred.fromCoroutine(coroutine)
