# -*- test-case-name: tests.control.test_registration -*-
"""
Small helpers for the JSON wire forms used by the control protocol.

Keys travel as ``<kind>:<64 hex>``; times as RFC 3339 in UTC with the Go zero
time ``0001-01-01T00:00:00Z`` meaning "unset". Parsing is tolerant of what Go
emits (fractional seconds, ``Z`` or numeric offsets, ``null``) and raises
:class:`headscale_tw.errors.InvalidInput` naming the field on anything else.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from headscale_tw.clock import as_utc
from headscale_tw.control import limits
from headscale_tw.errors import InvalidInput

__all__ = [
    "random_key",
    "ZERO_TIME",
    "parse_key",
    "is_zero_key",
    "parse_time",
    "format_time",
    "check_hostinfo",
    "parse_request_head",
]

ZERO_TIME = "0001-01-01T00:00:00Z"

_KEY = re.compile(r"^(nodekey|mkey|discokey|nlpub):([0-9a-f]{64})$")
_FRACTION = re.compile(r"\.(\d+)")


def parse_key(value: object, kind: str, field: str) -> str:
    """Return ``value`` if it is a ``kind:<64 lower-case hex>`` key, else raise ``InvalidInput``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected a {kind}: key string")
    limits.check_length(value, limits.KEY_MAX_LENGTH, field)
    match = _KEY.match(value.strip().lower())
    if match is None or match.group(1) != kind:
        raise InvalidInput(f"{field}: not a valid {kind}: key")
    return match.group(0)


def random_key(kind: str) -> str:
    """A fresh random key in Tailscale's text form (``nodekey:<64 hex>``), for made-up machines."""
    return f"{kind}:{secrets.token_hex(32)}"


def is_zero_key(key: str | None) -> bool:
    """True for a missing key or one whose hex part is all zeros."""
    if not key:
        return True
    return set(key.partition(":")[2]) <= {"0"}


def parse_time(value: object, field: str) -> datetime | None:
    """Parse a Go ``time.Time`` JSON value; ``None`` for null or the zero time."""
    if value is None or value == "" or value == ZERO_TIME:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected an RFC 3339 time string")
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    # Python accepts at most 6 fractional digits; Go sends up to 9.
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{field}: not an RFC 3339 time: {value!r}") from None
    parsed = as_utc(parsed)
    if parsed.year <= 1:
        return None
    return parsed


def format_time(value: datetime | None) -> str:
    """Format a UTC time the way Go does (``Z`` suffix); ``None`` gives the zero time."""
    if value is None:
        return ZERO_TIME
    value = as_utc(value)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


#: Hostinfo fields the server reads, with the JSON type each must have when present.
#: Everything else is stored and echoed to peers as the client sent it.
_HOSTINFO_TYPES: dict[str, tuple[type, ...]] = {
    "Hostname": (str,),
    "OS": (str,),
    "OSVersion": (str,),
    "IPNVersion": (str,),
    "RoutableIPs": (list,),
    "RequestTags": (list,),
    "Services": (list,),
    "NetInfo": (dict,),
    "ShieldsUp": (bool,),
}
_NETINFO_TYPES: dict[str, tuple[type, ...]] = {
    "PreferredDERP": (int,),
    "DERPLatency": (dict,),
}


def check_hostinfo(hostinfo: object, where: str) -> dict:
    """Check the Hostinfo fields the server relies on; return it, or raise ``InvalidInput``.

    ``null`` for any field is accepted (Go's decoder treats it as unset).
    """
    if not isinstance(hostinfo, dict):
        raise InvalidInput(f"{where}: Hostinfo must be an object")
    for name, types in _HOSTINFO_TYPES.items():
        value = hostinfo.get(name)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
            raise InvalidInput(f"{where}: Hostinfo.{name} must be a {_json_type(types)}")
    for name in ("RoutableIPs", "RequestTags"):
        value = hostinfo.get(name)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise InvalidInput(f"{where}: Hostinfo.{name} must be a list of strings")
    _check_hostinfo_limits(hostinfo, where)
    netinfo = hostinfo.get("NetInfo")
    if netinfo is not None:
        for name, types in _NETINFO_TYPES.items():
            value = netinfo.get(name)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise InvalidInput(f"{where}: Hostinfo.NetInfo.{name} must be a {_json_type(types)}")
    return hostinfo


#: Per-field limits of Hostinfo (see :mod:`headscale_tw.control.limits`).
_HOSTINFO_STRINGS: dict[str, int] = {
    "Hostname": limits.HOSTNAME_MAX_LENGTH,
    "OS": limits.HOSTINFO_STRING_MAX_LENGTH,
    "OSVersion": limits.HOSTINFO_STRING_MAX_LENGTH,
    "IPNVersion": limits.HOSTINFO_STRING_MAX_LENGTH,
}
_HOSTINFO_LISTS: dict[str, tuple[int, int | None]] = {
    "RoutableIPs": (limits.ROUTES_MAX, limits.PREFIX_MAX_LENGTH),
    "RequestTags": (limits.REQUEST_TAGS_MAX, limits.TAG_MAX_LENGTH),
    "Services": (limits.SERVICES_MAX, None),
}


def _check_hostinfo_limits(hostinfo: dict, where: str) -> None:
    """Counts and lengths first (cheap), then the size of the whole Hostinfo."""
    for name, limit in _HOSTINFO_STRINGS.items():
        value = hostinfo.get(name)
        if value is not None:
            limits.check_length(value, limit, f"{where}: Hostinfo.{name}")
    for name, (count, length) in _HOSTINFO_LISTS.items():
        value = hostinfo.get(name)
        if value is None:
            continue
        limits.check_count(value, count, f"{where}: Hostinfo.{name}")
        if length is not None:
            for item in value:
                limits.check_length(item, length, f"{where}: an entry of Hostinfo.{name}")
    size = limits.json_size(hostinfo)
    if size > limits.HOSTINFO_MAX_BYTES:
        raise InvalidInput(f"{where}: Hostinfo is {size} bytes as JSON; the limit is {limits.HOSTINFO_MAX_BYTES}")


def _json_type(types: tuple[type, ...]) -> str:
    return {str: "string", int: "number", list: "list", dict: "object", bool: "boolean"}[types[0]]


def parse_request_head(body: object, where: str) -> tuple[int, str]:
    """The fields every control request starts with: ``(Version, NodeKey)``.

    ``body`` must be a decoded JSON object; ``where`` names the request in errors
    (``"map request: Version must be an integer"``).
    """
    if not isinstance(body, dict):
        raise InvalidInput(f"{where}: body must be a JSON object")
    version = body.get("Version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidInput(f"{where}: Version must be an integer")
    return version, parse_key(body.get("NodeKey"), "nodekey", f"{where}: NodeKey")
