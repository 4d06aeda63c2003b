# -*- test-case-name: tests.test_workers -*-
"""
``workers: N``: what one worker of a multi-process server is, given the shared configuration.

A worker is an ordinary server instance (PostgreSQL, change feed, presence,
leases: docs/high-availability.md) that happens to share its host, its public
listeners and its public DERP URL with the other workers. This module holds
the parts that make that sharing work, free of process management
(:mod:`headscale_tw.supervisor` starts and watches the workers):

- :func:`worker_config`: the configuration of worker ``index``: worker 0 keeps
  ``unix_socket`` (the CLI works unchanged), worker N gets ``unix_socket.N``
  and the metrics port + N; all share ``listen_addr`` and STUN.
- :func:`reuseport_socket` and :class:`SharedStreamPort` / :class:`SharedDatagramPort`:
  listeners bound with ``SO_REUSEPORT`` (Linux) and handed to Twisted through
  the public ``adoptStreamPort`` / ``adoptDatagramPort``; the kernel spreads
  new connections and datagrams over the workers.
- :func:`local_mesh_services`: the private DERP mesh between the workers of a
  host, over unix sockets next to the DERP key (file mode 0600, so only this
  user reaches them), authenticated with the mesh key.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import replace
from typing import Any

from twisted.application import service
from twisted.internet import defer

from headscale_tw.config.model import Config
from headscale_tw.hostport import parse_hostport, port_number

__all__ = [
    "MESH_KEY_NAME",
    "SharedDatagramPort",
    "SharedStreamPort",
    "WorkersUnsupported",
    "local_mesh_services",
    "mesh_key_path",
    "mesh_socket_path",
    "reuseport_socket",
    "worker_config",
]

#: File name of the mesh key generated next to the DERP key when none is configured.
MESH_KEY_NAME = "derp_mesh.key"


class WorkersUnsupported(RuntimeError):
    """This platform cannot share a listening socket between processes (no ``SO_REUSEPORT``)."""


def _state_dir(config: Config) -> str:  # the same for every worker: the worker-0 DERP key's folder
    return os.path.dirname(os.path.abspath(config.derp.server.private_key_path))


def mesh_key_path(config: Config) -> str:
    """The mesh key the workers share: the configured one, else ``derp_mesh.key`` next to the DERP key."""
    return config.derp.server.mesh_key_path or os.path.join(_state_dir(config), MESH_KEY_NAME)


def mesh_socket_path(config: Config, index: int) -> str:
    """Where worker ``index`` accepts the other workers' DERP mesh links (a unix socket next to the DERP key)."""
    return os.path.join(_state_dir(config), f"derp-mesh-{index}.sock")


def _port(hostport: str) -> tuple[str, int]:
    host, port = parse_hostport(hostport, named_port=True)
    return host, port_number(port)


def _shifted(hostport: str, by: int) -> str:
    host, port = _port(hostport)
    if not 0 < port + by <= 65535:
        raise ValueError(f"metrics_listen_addr {hostport}: port {port} + worker {by} is not a port number")
    return f"[{host}]:{port + by}" if ":" in host else f"{host}:{port + by}"


def worker_config(config: Config, index: int) -> Config:
    """The configuration worker ``index`` (0-based) runs with.

    Worker 0 keeps ``unix_socket``, ``metrics_listen_addr`` and
    ``derp.server.private_key_path``; worker N gets ``<unix_socket>.N``, the
    metrics port + N (port 0 stays 0) and ``<DERP key>.N`` (a DERP server does
    not mesh with its own key). Every worker gets the shared mesh key
    (:func:`mesh_key_path`).
    """
    if not 0 <= index < config.workers:
        raise ValueError(f"worker index {index} is not between 0 and workers - 1 ({config.workers - 1})")
    unix_socket = config.unix_socket
    metrics = config.metrics_listen_addr
    if index:
        unix_socket = f"{unix_socket}.{index}" if unix_socket else ""
        if metrics and _port(metrics)[1]:
            metrics = _shifted(metrics, index)
    derp = config.derp
    if derp.server.enabled:
        # A DERP server refuses a mesh peer with its own key ("mesh peer is ourselves"): each worker has its own.
        key_path = derp.server.private_key_path if not index else f"{derp.server.private_key_path}.{index}"
        derp = replace(derp, server=replace(derp.server, mesh_key_path=mesh_key_path(config),
                                            private_key_path=key_path))
    return replace(config, unix_socket=unix_socket, metrics_listen_addr=metrics, derp=derp, worker_index=index)


def reuseport_socket(hostport: str, udp: bool = False, backlog: int = 128) -> socket.socket:
    """A non-blocking socket bound to ``hostport`` with ``SO_REUSEPORT`` (listening, for TCP).

    :raises WorkersUnsupported: the platform has no ``SO_REUSEPORT``.
    :raises OSError: the address cannot be bound.
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersUnsupported(f"workers > 1 needs SO_REUSEPORT load balancing (Linux); this is {sys.platform}")
    host, port = _port(hostport)
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)[0]
    s = socket.socket(family, kind)
    try:
        if not udp:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(address)
        if not udp:
            s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class _SharedPort(service.Service):
    """A port shared with the other workers: bound with ``SO_REUSEPORT`` at start, adopted by the reactor,
    closed at stop (connections already made stay)."""

    def __init__(self, reactor: Any, hostport: str) -> None:
        self.reactor = reactor
        self.hostport = hostport
        self.port: Any = None

    def _adopt(self) -> Any:
        raise NotImplementedError

    def startService(self) -> None:
        """Bind and hand the socket to the reactor (the reactor keeps its own duplicate)."""
        super().startService()
        self.port = self._adopt()

    def stopService(self) -> defer.Deferred | None:
        """Stop listening."""
        super().stopService()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else None


class SharedStreamPort(_SharedPort):
    """A TCP listener shared with the other workers.

    :param factory: the server factory (wrap it for TLS before passing it).
    """

    def __init__(self, reactor: Any, hostport: str, factory: Any, backlog: int) -> None:
        super().__init__(reactor, hostport)
        self.factory = factory
        self.backlog = backlog

    def _adopt(self) -> Any:
        s = reuseport_socket(self.hostport, backlog=self.backlog)
        try:
            return self.reactor.adoptStreamPort(s.fileno(), s.family, self.factory)
        finally:
            s.close()


class SharedDatagramPort(_SharedPort):
    """A UDP port (STUN) shared with the other workers."""

    def __init__(self, reactor: Any, hostport: str, protocol: Any) -> None:
        super().__init__(reactor, hostport)
        self.protocol = protocol

    def _adopt(self) -> Any:
        s = reuseport_socket(self.hostport, udp=True)
        try:
            return self.reactor.adoptDatagramPort(s.fileno(), s.family, self.protocol)
        finally:
            s.close()


def local_mesh_services(config: Config, server: Any, reactor: Any) -> list:
    """The private DERP mesh of worker ``config.worker_index``: its unix listener and a link to every other worker.

    Each worker serves ``/derp`` on :func:`mesh_socket_path` (mode 0600) and
    keeps a mesh link (retried every 5 s) to each other worker's socket; the
    DERP server only accepts mesh peers that present the mesh key.
    """
    from twisted.application import strports
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.web import resource
    from twisted.web.server import Site

    from headscale_tw.derp.mesh import mesh_peer_service
    from headscale_tw.derp.resource import mount_derp_resources

    index = config.worker_index
    assert index is not None, "local_mesh_services is for a worker's configuration"
    root = resource.Resource()
    mount_derp_resources(root, server)
    path = mesh_socket_path(config, index)
    if os.path.lexists(path):  # left by this worker's previous run: only worker ``index`` uses this path
        os.unlink(path)
    endpoint = "unix:{}:mode=600:lockfile=0".format(path.replace(":", "\\:"))
    services: list[service.Service] = [strports.service(endpoint, Site(root), reactor=reactor)]
    for other in range(config.workers):
        if other != index:
            peer = UNIXClientEndpoint(reactor, mesh_socket_path(config, other))
            services.append(mesh_peer_service(server, peer, "localhost", reactor, retry_delay=1.0))
    return services


def control_listener(config: Config, site: Any, reactor: Any, backlog: int) -> service.Service:
    """Worker ``config.worker_index``'s share of ``listen_addr`` (TLS when ``tls_cert_path`` is set)."""
    factory = site
    if config.tls.enabled:
        from twisted.internet import ssl
        from twisted.protocols.tls import TLSMemoryBIOFactory

        with open(config.tls.cert_path) as cert, open(config.tls.key_path) as key:
            certificate = ssl.PrivateCertificate.loadPEM(cert.read() + key.read())
        factory = TLSMemoryBIOFactory(certificate.options(), False, site)
    return SharedStreamPort(reactor, config.listen_addr, factory, backlog)
