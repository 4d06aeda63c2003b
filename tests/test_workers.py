# -*- test-case-name: tests.test_workers -*-
"""Tests for :mod:`headscale_tw.workers`: per-worker paths and ports, shared listeners."""

from __future__ import annotations

import socket
from dataclasses import replace

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from headscale_tw.config.model import Config
from headscale_tw.workers import SharedStreamPort, mesh_socket_path, reuseport_socket, worker_config

__all__ = ["SharedListenerTests", "WorkerConfigTests"]


def _config(metrics_listen_addr: str = "127.0.0.1:9090") -> Config:
    config = Config(workers=3, unix_socket="/run/hs/headscale.sock", metrics_listen_addr=metrics_listen_addr)
    return replace(config, derp=replace(config.derp, server=replace(config.derp.server,
                                                                    private_key_path="/var/lib/hs/derp.key")))


class WorkerConfigTests(unittest.TestCase):
    """What each worker's configuration differs in."""

    def test_worker_zero_keeps_the_configured_paths(self) -> None:
        """Worker 0 keeps the unix socket, metrics address and DERP key, so the CLI works unchanged."""
        zero = worker_config(_config(), 0)
        self.assertEqual((zero.unix_socket, zero.metrics_listen_addr, zero.derp.server.private_key_path),
                         ("/run/hs/headscale.sock", "127.0.0.1:9090", "/var/lib/hs/derp.key"))
        self.assertEqual(zero.worker_index, 0)
        self.assertEqual(zero.derp.server.mesh_key_path, "/var/lib/hs/derp_mesh.key")

    def test_other_workers_derive(self) -> None:
        """Worker N: ``unix_socket.N``, metrics port + N, ``<DERP key>.N``; listen_addr and STUN shared."""
        config = _config()
        two = worker_config(config, 2)
        self.assertEqual((two.unix_socket, two.metrics_listen_addr, two.derp.server.private_key_path),
                         ("/run/hs/headscale.sock.2", "127.0.0.1:9092", "/var/lib/hs/derp.key.2"))
        self.assertEqual((two.listen_addr, two.derp.server.stun_listen_addr),
                         (config.listen_addr, config.derp.server.stun_listen_addr))
        self.assertEqual(mesh_socket_path(two, 1), "/var/lib/hs/derp-mesh-1.sock")

    def test_ipv6_and_port_zero(self) -> None:
        """An IPv6 metrics address keeps its brackets; port 0 (any) stays 0; no metrics stays none."""
        self.assertEqual(worker_config(_config(metrics_listen_addr="[::1]:9090"), 1).metrics_listen_addr, "[::1]:9091")
        self.assertEqual(worker_config(_config(metrics_listen_addr="127.0.0.1:0"), 1).metrics_listen_addr,
                         "127.0.0.1:0")
        self.assertEqual(worker_config(_config(metrics_listen_addr=""), 1).metrics_listen_addr, "")

    def test_configured_mesh_key_kept(self) -> None:
        """A configured ``derp.server.mesh_key_path`` is the one the workers share."""
        config = _config()
        config = replace(config, derp=replace(config.derp, server=replace(config.derp.server,
                                                                          mesh_key_path="/etc/hs/mesh.key")))
        self.assertEqual(worker_config(config, 1).derp.server.mesh_key_path, "/etc/hs/mesh.key")

    def test_bad_index_and_port(self) -> None:
        """An index outside 0..workers-1, or a metrics port pushed past 65535, is refused naming it."""
        with self.assertRaises(ValueError) as raised:
            worker_config(_config(), 3)
        self.assertIn("worker index 3", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            worker_config(_config(metrics_listen_addr="127.0.0.1:65535"), 2)
        self.assertIn("metrics_listen_addr", str(raised.exception))


class SharedListenerTests(unittest.TestCase):
    """Listeners bound with ``SO_REUSEPORT`` can be bound by several workers at once."""

    def test_two_sockets_share_a_port(self) -> None:
        """Two listening TCP sockets and two UDP sockets bind the same port; a plain bind then fails."""
        first = reuseport_socket("127.0.0.1:0")
        self.addCleanup(first.close)
        port = first.getsockname()[1]
        second = reuseport_socket(f"127.0.0.1:{port}")
        self.addCleanup(second.close)
        self.assertEqual(second.getsockname()[1], port)
        udp = [reuseport_socket("127.0.0.1:0", udp=True)]
        udp.append(reuseport_socket(f"127.0.0.1:{udp[0].getsockname()[1]}", udp=True))
        for s in udp:
            self.addCleanup(s.close)
        with socket.socket() as plain, self.assertRaises(OSError):
            plain.bind(("127.0.0.1", port))

    def test_adopted_port_accepts(self) -> None:
        """SharedStreamPort hands the socket to the reactor, which accepts on it; stopping closes it."""
        probe = reuseport_socket("127.0.0.1:0")
        port = probe.getsockname()[1]
        probe.close()
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        shared = SharedStreamPort(reactor, f"127.0.0.1:{port}", factory, backlog=16)
        shared.startService()
        self.assertEqual(shared.port.getHost().port, port)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        return shared.stopService()
