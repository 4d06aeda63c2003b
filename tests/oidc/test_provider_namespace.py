# -*- test-case-name: tests.oidc.test_provider_namespace -*-
"""The test OpenID Provider inside a real-client test's private network namespace."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from headscale_tw.testing.oidc_provider import ClientRegistration, OIDCProvider
from headscale_tw.testing.realclient.namespace import Namespace, require_tools

__all__ = ["ProviderInNamespaceTests"]


class ProviderInNamespaceTests(unittest.TestCase):
    """Where the client and the server under test live, the provider can live too."""

    timeout = 60

    def test_discovery_inside_namespace(self) -> None:
        """Started in a namespace, the provider answers discovery there and is stopped with it."""
        require_tools()
        log_dir = os.path.abspath(self.mktemp())
        namespace = Namespace(log_dir=log_dir).start()
        self.addCleanup(namespace.close)
        provider = OIDCProvider(os.path.join(log_dir, "idp"),
                                [ClientRegistration("headscale", "secret", ("http://127.0.0.1:8080/oidc/callback",))],
                                namespace=namespace).start()
        self.assertIn(provider.process.pid, namespace.pids_inside())
        result = namespace.http_get(provider.issuer + "/.well-known/openid-configuration")
        self.assertEqual(result.status, 200, result.error)
        self.assertEqual(json.loads(result.body)["issuer"], provider.issuer)
        namespace.close()
        self.assertFalse(provider.process.running())
