# -*- test-case-name: tests.test_service -*-
"""
The service tree: ``build_service(config, reactor)`` is the one builder used by
``twistd headscale`` (tap.py) and ``etc/headscale.tac``.
"""

from __future__ import annotations

from twisted.application import service, strports
from twisted.web import resource, server

from headscale_tw.config.model import Config

__all__ = ["build_service", "listen_endpoint"]


def listen_endpoint(hostport: str) -> str:
    """Turn Headscale's ``host:port`` (IPv6 in brackets) into a Twisted endpoint string."""
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or host in ("0.0.0.0",):
        return f"tcp:{port}"
    return "tcp:{}:interface={}".format(port, host.replace(":", "\\:"))


class _Health(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"pass"}'


def build_service(config: Config, reactor) -> service.MultiService:
    """Build the whole server as one ``MultiService``."""
    top = service.MultiService()
    root = resource.Resource()
    root.putChild(b"health", _Health())
    site = server.Site(root)
    strports.service(listen_endpoint(config.listen_addr), site, reactor=reactor).setServiceParent(top)
    return top
