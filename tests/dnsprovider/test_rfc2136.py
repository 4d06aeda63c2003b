"""Tests for headscale_tw.dnsprovider.rfc2136 against a real authoritative server (Knot DNS)."""

from __future__ import annotations

import base64
import os

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.dnsprovider.interface import DNSUpdateFailed, IDNSProvider
from headscale_tw.dnsprovider.rfc2136 import RFC2136Provider
from headscale_tw.testing.knot import KnotDNS

ZONE = "tail.example"


def inline(fn, *args):
    """Run the blocking call at once (the test has nothing else to do meanwhile)."""
    return maybeDeferred(fn, *args)


class RFC2136ProviderTests(unittest.TestCase):
    """TSIG-signed updates reach a real Knot server, which then serves (or no longer serves) the record."""

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.knot = KnotDNS(directory, ZONE).start()
        self.addCleanup(self.knot.stop)
        self.clock = Clock()

    def provider(self, secret=None, key_name=None, port=None, timeout=5.0, in_thread=inline):
        return RFC2136Provider("127.0.0.1", port or self.knot.port, ZONE, key_name or self.knot.tsig_key_name,
                               self.knot.tsig_algorithm, secret or self.knot.tsig_secret, timeout, 60,
                               in_thread, self.clock)

    def call(self, coroutine):
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def failure_of(self, coroutine) -> str:
        self.last_failure = self.failureResultOf(Deferred.fromCoroutine(coroutine), DNSUpdateFailed).value
        return str(self.last_failure)

    def test_provides_interface(self):
        """The provider provides IDNSProvider."""
        self.assertTrue(verifyObject(IDNSProvider, self.provider()))

    def test_set_replace_remove(self):
        """set_txt publishes one value, a second set replaces it, remove_txt removes it; Knot serves each state."""
        name = f"_acme-challenge.alpha.{ZONE}"
        provider = self.provider()
        self.call(provider.set_txt(name, "first-value"))
        self.assertEqual(self.knot.query(name, "TXT"), ['"first-value"'])
        self.call(provider.set_txt(name, "second-value"))
        self.assertEqual(self.knot.query(name, "TXT"), ['"second-value"'])
        self.call(provider.remove_txt(name))
        self.assertEqual(self.knot.query(name, "TXT"), [])
        self.call(provider.remove_txt(name))  # nothing there: still fine

    def test_wrong_secret_refused(self):
        """An update signed with another secret is refused by the server, and the failure says so."""
        wrong = base64.b64encode(os.urandom(32)).decode()
        reason = self.failure_of(self.provider(secret=wrong).set_txt(f"_acme-challenge.a.{ZONE}", "v"))
        self.assertIn("127.0.0.1", reason)
        self.assertIn("TSIG", reason.upper())
        self.assertEqual(self.knot.query(f"_acme-challenge.a.{ZONE}", "TXT"), [])
        self.assertFalse(self.last_failure.transient)  # a retry would be refused the same way

    def test_unknown_key_refused(self):
        """An update under a key name the server does not know changes nothing."""
        provider = self.provider(key_name="someone-else.")
        self.failure_of(provider.set_txt(f"_acme-challenge.a.{ZONE}", "v"))
        self.assertEqual(self.knot.query(f"_acme-challenge.a.{ZONE}", "TXT"), [])

    def test_outside_zone_refused(self):
        """A name outside the provider's zone is refused before anything is sent."""
        reason = self.failure_of(self.provider().set_txt("_acme-challenge.a.other.example", "v"))
        self.assertIn("outside the zone tail.example", reason)

    def test_server_down(self):
        """With nothing listening the call fails with the server's address in the reason."""
        self.knot.stop()
        reason = self.failure_of(self.provider().set_txt(f"_acme-challenge.a.{ZONE}", "v"))
        self.assertIn(f"127.0.0.1:{self.knot.port}", reason)
        self.assertTrue(self.last_failure.transient)  # the server may be back at the next try

    def test_reactor_side_timeout(self):
        """A call whose worker never returns fails after twice the timeout plus one second, on the clock."""
        pending: list[Deferred] = []

        def stuck(fn, *args):
            d: Deferred = Deferred()
            pending.append(d)
            return d

        d = Deferred.fromCoroutine(self.provider(timeout=3.0, in_thread=stuck).set_txt(f"_acme-challenge.a.{ZONE}", "v"))
        self.clock.advance(6.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertIn("did not answer within 3s", str(self.failureResultOf(d, DNSUpdateFailed).value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_secret_text(self):
        """A secret that is not base64 is refused when the provider is made."""
        with self.assertRaises(ValueError) as caught:
            self.provider(secret="not base64!")
        self.assertIn("base64", str(caught.exception))
