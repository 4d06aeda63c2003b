# -*- test-case-name: tests.realclient.test_server -*-
"""
``RealClientTestCase``: a trial base class giving each test a fresh private namespace.

Each test gets ``self.namespace`` (loopback-only, stopped with everything in it
on cleanup) and helpers to start the server under test and official clients::

    class RegisterTests(RealClientTestCase):
        def test_up(self):
            server = self.start_server()
            key = server.cli("preauthkeys", "create", ...).stdout.strip()
            node = self.start_node("n1")
            node.up(server.url, authkey=key)

When the harness cannot run (not root, tools missing, download failure) the
test FAILS with the reason; it never skips.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from headscale_tw.testing.realclient._process import HarnessError
from headscale_tw.testing.realclient.component import Component
from headscale_tw.testing.realclient.fetch import LATEST, ClientBinaries, FetchError, ensure_client
from headscale_tw.testing.realclient.namespace import Namespace, require_tools
from headscale_tw.testing.realclient.node import TailscaleNode
from headscale_tw.testing.realclient.server import HeadscaleServer
from headscale_tw.testing.realclient.tlsca import TestCA, make_test_ca

__all__ = ["DEFAULT_CONFIG_YAML", "RealClientTestCase"]

DEFAULT_CONFIG_YAML = """\
server_url: http://127.0.0.1:8080
listen_addr: 127.0.0.1:8080
metrics_listen_addr: 127.0.0.1:9090
unix_socket: ./var/headscale.sock
noise:
  private_key_path: ./var/noise_private.key
database:
  type: sqlite
  sqlite:
    path: ./var/db.sqlite
"""
"""A config for the server under test: everything relative to its own folder, loopback only."""


class RealClientTestCase(unittest.TestCase):
    """Base class for tests against real processes in a private network namespace."""

    client_version: str = LATEST

    def setUp(self) -> None:
        super().setUp()
        require_tools()
        self.log_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.log_dir)
        self.namespace = Namespace(log_dir=self.log_dir)
        self.namespace.start()
        self.addCleanup(self.namespace.close)

    def binaries(self, version: str | None = None) -> ClientBinaries:
        """Verified binaries for ``version`` (default ``client_version``); a fetch failure fails the test."""
        try:
            return ensure_client(version or self.client_version)
        except FetchError as e:
            raise HarnessError(f"cannot get the Tailscale client: {e}")

    def make_node(self, name: str, version: str | None = None, **kwargs: Any) -> TailscaleNode:
        """A :class:`TailscaleNode` in this test's namespace, not yet started."""
        return TailscaleNode(self.namespace, self.binaries(version), name, **kwargs)

    def start_node(self, name: str, version: str | None = None, timeout: float = 15.0,
                   **kwargs: Any) -> TailscaleNode:
        """Start ``tailscaled`` for ``name`` and wait until it answers on its socket."""
        return self.make_node(name, version, **kwargs).start(timeout)

    def make_ca(self) -> TestCA:
        """A throwaway CA and server certificate (127.0.0.1, 192.0.2.1, localhost) for this test."""
        return make_test_ca(os.path.join(self.log_dir, "tls"))

    def start_server(self, config_yaml: str | None = None, timeout: float = 30.0,
                     **kwargs: Any) -> HeadscaleServer:
        """Launch ``twistd -n headscale -c CONFIG`` in the namespace and wait for ``/health``.

        ``config_yaml`` defaults to :data:`DEFAULT_CONFIG_YAML`. The returned object
        has ``url``, ``unix_socket``, ``cli(*args)`` and ``http_get(path)``.
        """
        server = HeadscaleServer(self.namespace, DEFAULT_CONFIG_YAML if config_yaml is None else config_yaml,
                                 **kwargs)
        return server.start(timeout)

    def start_component(self, name: str, argv: list[str], timeout: float = 30.0, **kwargs: Any) -> Component:
        """Start another program in this test's namespace (see :class:`Component`) and wait until ready.

        It is stopped by PID when the namespace closes, or earlier with ``stop()``.
        """
        return Component(self.namespace, name, argv, **kwargs).start(timeout)
