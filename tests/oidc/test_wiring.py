# -*- test-case-name: tests.oidc.test_wiring -*-
"""How ``service.py`` mounts the sign-in pages when ``oidc.issuer`` is set."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.config.model import Config, OIDCConfig
from headscale_tw.control.audit import NO_AUDIT
from headscale_tw.preflight import StartupError
from headscale_tw.service import _mount_oidc
from headscale_tw.testing.db import open_test_database
from headscale_tw.web.oidc_pages import OIDCCallbackPage, OIDCCheckPage, OIDCRegisterPage

__all__ = ["MountOIDCTests"]


class _Plane:
    """Only what the wiring reads from the control plane."""

    registrar: Any = None
    ssh_checks: Any = None
    audit: Any = NO_AUDIT


class _Database:
    """Only what the wiring reads from the database."""

    users: Any = None


class MountOIDCTests(unittest.TestCase):
    """Start-up with a provider that does not answer."""

    def config(self, strict: bool) -> Config:
        """A config whose issuer never answers (the reactor is a memory one)."""
        return Config(server_url="https://hs.example.test", oidc=OIDCConfig(
            issuer="https://idp.example.test", client_id="c", client_secret="s",
            only_start_if_oidc_is_available=strict))

    def test_strict_start_fails_naming_the_issuer(self) -> None:
        """With only_start_if_oidc_is_available, start-up fails after the timeout, naming the issuer."""
        reactor = MemoryReactorClock()
        d = defer.ensureDeferred(_mount_oidc(self.config(True), reactor, Resource(), _Database(), _Plane()))
        self.assertNoResult(d)
        reactor.advance(10)
        error = self.failureResultOf(d, StartupError).value
        self.assertIn("https://idp.example.test is not available", str(error))
        self.assertIn("only_start_if_oidc_is_available", str(error))

    def test_lenient_start_mounts_the_pages(self) -> None:
        """Without it, start-up goes on and the sign-in pages replace the CLI-approval page."""
        reactor = MemoryReactorClock()
        root = Resource()
        db = open_test_database(self)
        d = defer.ensureDeferred(_mount_oidc(self.config(False), reactor, root, db, _Plane()))
        reactor.advance(10)
        jobs = self.successResultOf(d)
        self.assertEqual([interval for interval, _ in jobs], [60.0])
        self.assertIsInstance(root.children[b"register"], OIDCRegisterPage)
        self.assertIsInstance(root.children[b"auth"], OIDCCheckPage)
        self.assertIsInstance(root.children[b"oidc"].children[b"callback"], OIDCCallbackPage)
        self.assertEqual([self.successResultOf(job()) for _, job in jobs], [0],
                         "one job forgets the expired logins of both sign-ins in the database")
        self.assertEqual(reactor.getDelayedCalls(), [])
