# -*- test-case-name: tests.test_hostport -*-
"""
The one parser of Go's ``host:port`` text (``":8080"``, ``"0.0.0.0:443"``,
``"[::1]:8080"``), used by configuration checks, listeners, STUN, the test
harness and the load generator.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket

__all__ = ["parse_hostport", "port_number"]

_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]*")


def _q(value: str) -> str:
    return json.dumps(value)


def parse_hostport(value: str, *, named_port: bool = False) -> tuple[str, str]:
    """
    Split ``host:port`` into ``(host, port)``; brackets around an IPv6 host are removed.

    :param named_port: also accept a service name for the port (``":http"``).
    :raises ValueError: with a readable reason naming the text.
    """
    if ":" not in value:
        raise ValueError(f"{_q(value)} is not host:port (missing \":port\")")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            raise ValueError(f"{_q(value)} is not [ipv6]:port")
        host, port = value[1:end], value[end + 2:]
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise ValueError(f"{_q(value)}: {_q(host)} is not an IPv6 address") from None
    else:
        host, _, port = value.rpartition(":")
        if ":" in host:
            raise ValueError(f"{_q(value)}: an IPv6 host must be in brackets, as in \"[::]:8080\"")
        if host and not _HOST_NAME.fullmatch(host):
            raise ValueError(f"{_q(value)}: {_q(host)} is not a host name or address")
    if port.isascii() and port.isdigit():
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"{_q(value)}: port {port} is out of range 0-65535")
    elif not (named_port and _SERVICE_NAME.fullmatch(port)):
        raise ValueError(f"{_q(value)}: {_q(port)} is not a port number")
    return host, port


def port_number(port: str) -> int:
    """The number of a port from :func:`parse_hostport`: digits, or a TCP service name (``"http"`` is 80).

    :raises OSError: for a service name this system does not know.
    """
    return int(port) if port.isdigit() else socket.getservbyname(port, "tcp")
