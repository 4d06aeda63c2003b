# -*- test-case-name: tests.control.test_limits -*-
"""
Limits on what a node can send the control server, in one place.

The edge (``web/control_api.py`` for request bodies; the request parsers in
``control/_wire.py``, ``control/poll.py`` and ``control/registration.py`` for
fields) enforces them and answers 4xx naming the field and the limit;
``docs/security.md`` ("Node input limits") lists them with where each number
comes from.

Where Tailscale or Headscale have a limit of their own it is used:

* host names follow Tailscale's ``util/dnsname`` (a DNS name is at most 253
  bytes, a label at most 63); the node's DNS label (given name) is cut to 63
  bytes like Headscale's ``util.LabelHostnameLength``.
* Neither sets a limit on the number of routes, endpoints, tags or on the
  size of Hostinfo; the numbers below are ours, chosen to be far above what
  ``tailscaled`` sends (a real Hostinfo is about 1 KiB, see
  ``tests/control/data``) while keeping the work and memory of one request
  small: parsing :data:`ROUTES_MAX` prefixes costs a few milliseconds. The
  admin API (``web/admin/validate.py``) uses the same route and tag limits.

Everything here is a plain constant or a pure check: no I/O.
"""

from __future__ import annotations

import json

from headscale_tw.errors import InvalidInput

__all__ = [
    "NOISE_BODY_MAX_BYTES",
    "HOSTINFO_MAX_BYTES",
    "HOSTNAME_MAX_LENGTH",
    "HOSTINFO_STRING_MAX_LENGTH",
    "ROUTES_MAX",
    "PREFIX_MAX_LENGTH",
    "REQUEST_TAGS_MAX",
    "TAG_MAX_LENGTH",
    "ENDPOINTS_MAX",
    "ENDPOINT_MAX_LENGTH",
    "SERVICES_MAX",
    "KEY_MAX_LENGTH",
    "AUTH_KEY_MAX_LENGTH",
    "FOLLOWUP_MAX_LENGTH",
    "check_length",
    "check_count",
    "json_size",
]

#: Body of any request inside the Noise channel (``/machine/register``,
#: ``/machine/map``, ``/machine/set-dns`` and the rest): 256 KiB. Checked from
#: the declared length and while the body arrives; larger bodies are not kept.
NOISE_BODY_MAX_BYTES = 256 * 1024

#: ``Hostinfo`` in a register or map request, measured as compact JSON.
HOSTINFO_MAX_BYTES = 64 * 1024

#: ``Hostinfo.Hostname``: a DNS name (Tailscale ``dnsname.maxNameLength``).
#: The node's DNS label derived from it is cut to 63 bytes.
HOSTNAME_MAX_LENGTH = 253

#: The other Hostinfo strings the server reads (``OS``, ``OSVersion``, ``IPNVersion``).
HOSTINFO_STRING_MAX_LENGTH = 256

#: Prefixes in ``Hostinfo.RoutableIPs``, and routes in one approval (node or admin).
ROUTES_MAX = 1024

#: One prefix as text: the longest IPv6 prefix, ``ffff:...:ffff/128``, is 43 characters
#: (Go's ``netip.Prefix.String`` is canonical, so a client never sends more).
PREFIX_MAX_LENGTH = 43

#: Entries in ``Hostinfo.RequestTags`` (as many as an admin may set at once).
REQUEST_TAGS_MAX = 64

#: One tag: ``tag:`` and a name of at most one DNS label (63), Tailscale's
#: ``tailcfg.CheckTag`` with Headscale's label length.
TAG_MAX_LENGTH = len("tag:") + 63

#: Entries in ``MapRequest.Endpoints``.
ENDPOINTS_MAX = 256

#: One endpoint (``[v6%zone]:port`` fits comfortably).
ENDPOINT_MAX_LENGTH = 128

#: Entries in ``Hostinfo.Services``.
SERVICES_MAX = 1024

#: A key in its text form (``nodekey:`` and 64 hex digits is 72).
KEY_MAX_LENGTH = 80

#: ``RegisterRequest.Auth.AuthKey`` (``hskey-auth-…`` is 88 characters).
AUTH_KEY_MAX_LENGTH = 256

#: ``RegisterRequest.Followup`` (a URL).
FOLLOWUP_MAX_LENGTH = 2048


def check_length(value: str, limit: int, field: str) -> str:
    """``value`` if it has at most ``limit`` characters, else ``InvalidInput`` naming ``field``."""
    if len(value) > limit:
        raise InvalidInput(f"{field} is {len(value)} characters long; the limit is {limit}")
    return value


def check_count(values, limit: int, field: str):
    """``values`` if it has at most ``limit`` entries, else ``InvalidInput`` naming ``field``."""
    if len(values) > limit:
        raise InvalidInput(f"{field} has {len(values)} entries; the limit is {limit}")
    return values


def json_size(value: object) -> int:
    """Bytes of ``value`` as compact JSON (how Hostinfo is measured and stored)."""
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8"))
