# -*- test-case-name: tests.derp.test_stun -*-
"""
Sans-IO STUN (RFC 5389) subset used by Tailscale's netcheck (no Twisted imports).

Request as the client sends it (40 bytes)::

    00 01 | 00 14 | 21 12 a4 42 | txid (12 B)
    80 22 00 08 "tailnode"                 SOFTWARE
    80 28 00 04 crc32(bytes 0..31) ^ 0x5354554e   FINGERPRINT

Response we send::

    01 01 | len | 21 12 a4 42 | txid
    00 20 | 8 or 20 | 00 | family (1 = IPv4, 2 = IPv6) | port ^ 0x2112 | addr ^ (cookie [|| txid])

A request is answered when it is a well-formed Binding Request: first two
bits zero, magic cookie present, declared length matching the datagram and a
multiple of 4, attributes well-formed, and, if a FINGERPRINT is present, it is
the last attribute and correct. ``strict=True`` also requires the SOFTWARE
attribute ``tailnode`` and a FINGERPRINT, like Tailscale's own servers.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

__all__ = [
    "MAGIC_COOKIE",
    "STUNError",
    "parse_binding_request",
    "build_binding_request",
    "build_binding_response",
    "parse_binding_response",
]

MAGIC_COOKIE = b"\x21\x12\xa4\x42"
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_ATTR_SOFTWARE = 0x8022
_ATTR_FINGERPRINT = 0x8028
_ATTR_XOR_MAPPED = 0x0020
_ATTR_XOR_MAPPED_ALT = 0x8020
_ATTR_MAPPED = 0x0001
_FINGERPRINT_XOR = 0x5354554E
_HEADER = struct.Struct(">HH4s12s")
_ATTR = struct.Struct(">HH")
_SOFTWARE = b"tailnode"


class STUNError(ValueError):
    """The datagram is not a STUN message we answer or understand."""


def _fingerprint(data: bytes) -> bytes:
    return struct.pack(">I", (zlib.crc32(data) & 0xFFFFFFFF) ^ _FINGERPRINT_XOR)


def _attributes(data: bytes, end: int):
    pos = 20
    while pos < end:
        if pos + 4 > end:
            raise STUNError("truncated attribute header")
        atype, alen = _ATTR.unpack_from(data, pos)
        vstart = pos + 4
        vend = vstart + alen
        if vend > end:
            raise STUNError(f"attribute 0x{atype:04x} runs past the message end")
        yield pos, atype, data[vstart:vend]
        pos = vstart + ((alen + 3) & ~3)


def parse_binding_request(data: bytes, strict: bool = False) -> bytes:
    """Return the 12-byte transaction ID of a Binding Request, or raise :class:`STUNError`."""
    if len(data) < 20:
        raise STUNError(f"datagram of {len(data)} bytes is shorter than a STUN header")
    if data[0] & 0xC0:
        raise STUNError("first two bits are not zero")
    mtype, length, cookie, txid = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE:
        raise STUNError("magic cookie missing")
    if mtype != _BINDING_REQUEST:
        raise STUNError(f"message type 0x{mtype:04x} is not a Binding Request")
    if length % 4 or 20 + length != len(data):
        raise STUNError(f"declared length {length} does not match the {len(data)}-byte datagram")
    software = None
    fingerprint_ok = False
    end = 20 + length
    for pos, atype, value in _attributes(data, end):
        if fingerprint_ok:
            raise STUNError("attribute after FINGERPRINT")
        if atype == _ATTR_SOFTWARE:
            software = value
        elif atype == _ATTR_FINGERPRINT:
            if len(value) != 4 or pos + 8 != end:
                raise STUNError("FINGERPRINT is not a 4-byte last attribute")
            if value != _fingerprint(data[:pos]):
                raise STUNError("FINGERPRINT does not match")
            fingerprint_ok = True
    if strict and (software != _SOFTWARE or not fingerprint_ok):
        raise STUNError("not a Tailscale netcheck request (SOFTWARE tailnode + FINGERPRINT)")
    return txid


def build_binding_request(txid: bytes) -> bytes:
    """Build the 40-byte request netcheck sends (for tests and probes)."""
    if len(txid) != 12:
        raise ValueError("transaction ID must be 12 bytes")
    head = _HEADER.pack(_BINDING_REQUEST, 20, MAGIC_COOKIE, txid)
    body = _ATTR.pack(_ATTR_SOFTWARE, len(_SOFTWARE)) + _SOFTWARE
    signed = head + body
    return signed + _ATTR.pack(_ATTR_FINGERPRINT, 4) + _fingerprint(signed)


def build_binding_response(txid: bytes, host: str, port: int) -> bytes:
    """Build a Binding Success Response carrying XOR-MAPPED-ADDRESS for ``host:port``.

    IPv4-mapped IPv6 addresses are answered as IPv4.
    """
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        family, mask = 1, MAGIC_COOKIE
    else:
        family, mask = 2, MAGIC_COOKIE + txid
    xaddr = bytes(a ^ b for a, b in zip(addr.packed, mask))
    value = struct.pack(">BBH", 0, family, port ^ 0x2112) + xaddr
    attr = _ATTR.pack(_ATTR_XOR_MAPPED, len(value)) + value
    return _HEADER.pack(_BINDING_SUCCESS, len(attr), MAGIC_COOKIE, txid) + attr


def parse_binding_response(data: bytes) -> tuple[bytes, str, int]:
    """Return ``(txid, host, port)`` from a Binding Success Response (as the client reads it)."""
    if len(data) < 20:
        raise STUNError("response shorter than a STUN header")
    mtype, length, cookie, txid = _HEADER.unpack_from(data)
    if mtype != _BINDING_SUCCESS or cookie != MAGIC_COOKIE:
        raise STUNError("not a Binding Success Response")
    end = min(len(data), 20 + length)
    fallback = None
    for _pos, atype, value in _attributes(data, end):
        if atype in (_ATTR_XOR_MAPPED, _ATTR_XOR_MAPPED_ALT, _ATTR_MAPPED):
            if len(value) < 4:
                raise STUNError("address attribute too short")
            family = value[1]
            (port,) = struct.unpack_from(">H", value, 2)
            raw = value[4:]
            if (family, len(raw)) not in ((1, 4), (2, 16)):
                raise STUNError("address attribute has a bad family or length")
            if atype == _ATTR_MAPPED:
                fallback = (txid, str(ipaddress.ip_address(raw)), port)
                continue
            mask = MAGIC_COOKIE if family == 1 else MAGIC_COOKIE + txid
            ip = ipaddress.ip_address(bytes(a ^ b for a, b in zip(raw, mask)))
            return txid, str(ip), port ^ 0x2112
    if fallback is None:
        raise STUNError("no mapped address in the response")
    return fallback
