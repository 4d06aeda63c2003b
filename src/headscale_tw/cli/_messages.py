# -*- test-case-name: tests.cli.test_output,tests.nodesapi.test_cli -*-
"""
The ``/api/v1`` message shapes and their three renderings.

The REST API speaks grpc-gateway's JSON (what Headscale's ``/api/v1`` returns):
camelCase names, 64-bit ids as strings, RFC 3339 timestamps, every field
present. Headscale's CLI prints the Go protobuf structs instead, and scripts
depend on that shape, so ``-o json`` here reproduces it:

- ``json``/``json-line``: snake_case names, ids as numbers, timestamps as
  ``{"seconds": N, "nanos": N}``, zero values left out (Go's ``omitempty``);
- ``yaml``: field names lower-cased without underscores (``createdat``), every
  field present, timestamps as ``seconds``/``nanos`` (Go's ``yaml.v3`` on the
  same structs).

Each message is a tuple of ``(snake_name, kind)``; a kind is ``uint64``,
``string``, ``bool``, ``ts``, ``strings``, another message, or an enum (a
dict from the REST name, ``REGISTER_METHOD_CLI``, to Go's number, printed as
the number in both machine formats).
"""

from __future__ import annotations

import calendar
from typing import Any

from headscale_tw.timestamps import parse_timestamp

__all__ = [
    "USER",
    "PREAUTHKEY",
    "APIKEY",
    "HEALTH",
    "NODE",
    "REGISTER_METHOD",
    "camel",
    "to_go_json",
    "to_go_yaml",
]

USER = (
    ("id", "uint64"),
    ("name", "string"),
    ("created_at", "ts"),
    ("display_name", "string"),
    ("email", "string"),
    ("provider_id", "string"),
    ("provider", "string"),
    ("profile_pic_url", "string"),
    ("idp_groups", "extra strings"),  # not in Headscale: printed only when there are some
)
PREAUTHKEY = (
    ("user", USER),
    ("id", "uint64"),
    ("key", "string"),
    ("reusable", "bool"),
    ("ephemeral", "bool"),
    ("used", "bool"),
    ("expiration", "ts"),
    ("created_at", "ts"),
    ("acl_tags", "strings"),
)
APIKEY = (
    ("id", "uint64"),
    ("prefix", "string"),
    ("expiration", "ts"),
    ("created_at", "ts"),
    ("last_seen", "ts"),
)
HEALTH = (("database_connectivity", "bool"),)
REGISTER_METHOD = {
    "REGISTER_METHOD_UNSPECIFIED": 0,
    "REGISTER_METHOD_AUTH_KEY": 1,
    "REGISTER_METHOD_CLI": 2,
    "REGISTER_METHOD_OIDC": 3,
}
NODE = (
    ("id", "uint64"),
    ("machine_key", "string"),
    ("node_key", "string"),
    ("disco_key", "string"),
    ("ip_addresses", "strings"),
    ("name", "string"),
    ("user", USER),
    ("last_seen", "ts"),
    ("expiry", "ts"),
    ("pre_auth_key", PREAUTHKEY),
    ("created_at", "ts"),
    ("register_method", REGISTER_METHOD),
    ("given_name", "string"),
    ("online", "bool"),
    ("approved_routes", "strings"),
    ("available_routes", "strings"),
    ("subnet_routes", "strings"),
    ("tags", "strings"),
)

def camel(snake: str) -> str:
    """``created_at`` → ``createdAt`` (protobuf's JSON name)."""
    head, *rest = snake.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _ts_parts(value: Any) -> dict[str, int] | None:
    if value in (None, ""):
        return None
    dt, nanos = parse_timestamp(value)
    return {"seconds": calendar.timegm(dt.utctimetuple()), "nanos": nanos}


def _enum_number(kind: dict, value: Any) -> int:
    """An enum's REST name (or number) as Go's number; unknown names are 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return kind.get(value, 0)


def to_go_json(message: tuple, data: dict | None) -> dict | None:
    """REST JSON of ``message`` → the dict Headscale's ``-o json`` prints."""
    if data is None:
        return None
    out: dict[str, Any] = {}
    for name, kind in message:
        value = data.get(camel(name), data.get(name))
        if isinstance(kind, tuple):
            sub = to_go_json(kind, value) if value else None
            if sub is not None:
                out[name] = sub
        elif isinstance(kind, dict):
            number = _enum_number(kind, value)
            if number:
                out[name] = number
        elif kind == "uint64":
            if value not in (None, "", 0, "0"):
                out[name] = int(value)
        elif kind == "ts":
            parts = _ts_parts(value)
            if parts is not None:
                out[name] = {k: v for k, v in parts.items() if v}
        elif kind == "bool":
            if value:
                out[name] = True
        elif kind in ("strings", "extra strings"):
            if value:
                out[name] = list(value)
        elif value:
            out[name] = value
    return out


def to_go_yaml(message: tuple, data: dict | None) -> dict | None:
    """REST JSON of ``message`` → the mapping Headscale's ``-o yaml`` prints."""
    if data is None:
        return None
    out: dict[str, Any] = {}
    for name, kind in message:
        key = name.replace("_", "")
        value = data.get(camel(name), data.get(name))
        if isinstance(kind, tuple):
            out[key] = to_go_yaml(kind, value) if value else None
        elif isinstance(kind, dict):
            out[key] = _enum_number(kind, value)
        elif kind == "uint64":
            out[key] = int(value or 0)
        elif kind == "ts":
            out[key] = _ts_parts(value)
        elif kind == "bool":
            out[key] = bool(value)
        elif kind == "strings":
            out[key] = list(value or [])
        elif kind == "extra strings":  # our addition: absent when empty, so Headscale's output stays the same
            if value:
                out[key] = list(value)
        else:
            out[key] = value or ""
    return out
