# -*- test-case-name: tests.bench.test_wire -*-
"""
What a simulated node puts on the wire (sans-IO): request bodies and headers.

Everything here mirrors tailscaled 1.96.4 as captured (``register-request.json``,
``map-request-stream.json``, ``map-request-lite*.json``, ``request-sequence.json``):
the same JSON keys in the same order with the same types, the same request
headers (``Ts-Lb`` = the node key, ``Accept-Encoding: gzip``, Go's user agent,
no ``Content-Type``), and the same request order::

    GET /key?v=133                      plain HTTP/1.1, its own connection
    POST /ts2021                        upgrade, Noise IK, then HTTP/2 inside
    POST /machine/register              RegisterRequest with the pre-auth key
    POST /machine/map  (lite)           OmitPeers, no Stream: answered 200, empty
    POST /machine/map  (stream)         Stream, Compress zstd: full map, then deltas
    POST /machine/map  (lite)           Endpoints + NetInfo once netcheck has run

Only ``Hostinfo.RequestTags`` is added (in the position Go's struct gives it)
when a node asks for a tag, which the benchmark's group policy uses.
"""

from __future__ import annotations

import os

__all__ = [
    "CAPVER",
    "ZERO_NODE_KEY",
    "key_request",
    "request_headers",
    "hostinfo",
    "register_body",
    "map_body",
    "random_key",
]

CAPVER = 133
IPN_VERSION = "1.96.4-t8cf541dfd-g62bc84ce7"
ZERO_NODE_KEY = "nodekey:" + "0" * 64
ZERO_TIME = "0001-01-01T00:00:00Z"


def random_key(prefix: str) -> str:
    """A random public key in its text form (``nodekey:<64 hex>`` ...)."""
    return f"{prefix}:{os.urandom(32).hex()}"


def key_request(host: bytes, version: int = CAPVER) -> bytes:
    """The HTTP/1.1 ``GET /key`` exactly as Go's client sends it (Host, User-Agent only)."""
    return b"GET /key?v=%d HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\n\r\n" % (version, host)


def request_headers(node_key: str) -> list[tuple[bytes, bytes]]:
    """HTTP/2 headers of every ``/machine/*`` request besides pseudo-headers and content-length."""
    return [
        (b"ts-lb", node_key.encode()),
        (b"accept-encoding", b"gzip"),
        (b"user-agent", b"Go-http-client/2.0"),
    ]


def hostinfo(hostname: str, backend_log_id: str, request_tags: list[str] | None = None,
             netinfo: bool = False) -> dict:
    """Hostinfo as 1.96.4 on Linux (userspace networking) sends it."""
    info: dict = {
        "IPNVersion": IPN_VERSION,
        "BackendLogID": backend_log_id,
        "OS": "linux",
        "OSVersion": "6.18.44-fc-v669",
        "Container": True,
        "Distro": "debian",
        "DistroVersion": "12.11",
        "DistroCodeName": "bookworm",
        "Desktop": False,
        "Hostname": hostname,
        "NoLogsNoSupport": True,
        "Machine": "x86_64",
        "GoArch": "amd64",
        "GoArchVar": "v1",
        "GoVersion": "go1.26.1",
    }
    if request_tags:
        info["RequestTags"] = list(request_tags)
    if netinfo:
        info["Services"] = [
            {"Proto": "peerapi4", "Port": 58436},
            {"Proto": "peerapi6", "Port": 58436},
            {"Proto": "peerapi-dns-proxy", "Port": 1},
        ]
        info["NetInfo"] = {
            "WorkingIPv6": False,
            "OSHasIPv6": True,
            "WorkingUDP": False,
            "WorkingICMPv4": False,
            "UPnP": False,
            "PMP": False,
            "PCP": False,
        }
    else:
        info["Services"] = [{"Proto": "peerapi-dns-proxy", "Port": 1}]
    info.update({"Userspace": True, "UserspaceRouter": True, "AppConnector": False, "StateEncrypted": False})
    return info


def register_body(node_key: str, auth_key: str, info: dict, nl_key: str, version: int = CAPVER) -> dict:
    """The first ``RegisterRequest`` of ``tailscale up --authkey``."""
    return {
        "Version": version,
        "NodeKey": node_key,
        "OldNodeKey": ZERO_NODE_KEY,
        "NLKey": nl_key,
        "Auth": {"AuthKey": auth_key},
        "Expiry": ZERO_TIME,
        "Followup": "",
        "Hostinfo": info,
        "NodeKeySignature": None,
    }


def map_body(node_key: str, disco_key: str, info: dict, *, stream: bool,
             endpoints: list[str] | None = None, version: int = CAPVER) -> dict:
    """A ``MapRequest``: streaming (``stream=True``) or a lite update (``OmitPeers``)."""
    body: dict = {
        "Version": version,
        "Compress": "zstd",
        "KeepAlive": True,
        "NodeKey": node_key,
        "DiscoKey": disco_key,
    }
    if stream:
        body["Stream"] = True
    body["Hostinfo"] = info
    if endpoints is not None:
        body["Endpoints"] = list(endpoints)
        body["EndpointTypes"] = [1] * len(endpoints)
    if not stream:
        body["OmitPeers"] = True
    body["DebugFlags"] = ["netstack"]
    return body
