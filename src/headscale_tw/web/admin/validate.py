# -*- test-case-name: tests.web.test_admin_hostile,tests.web.test_admin_api -*-
"""
Parsing and validation of admin API input, with the documented limits.

Every value a caller sends (path segment, query parameter or JSON field) goes
through one of these functions before a service sees it. A refusal is an
:class:`~.errors.ApiError` whose message names the field and, for a limit,
the limit; a caller's value is repeated in a message only cut short. The
limits are listed in ``docs/security.md`` ("Admin API limits").
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from twisted.web.iweb import IRequest

from headscale_tw.clock import utc_from_seconds
from headscale_tw.control import limits
from headscale_tw.control.nodes import MAX_TAG, validate_tag
from headscale_tw.control.users import quoted
from headscale_tw.errors import InvalidInput
from headscale_tw.timestamps import parse_timestamp
from headscale_tw.web.admin.errors import INVALID_ARGUMENT, ApiError

__all__ = [
    "MAX_BODY_BYTES", "MAX_JSON_DEPTH", "MAX_ID", "MAX_USER_NAME", "MAX_DISPLAY_NAME", "MAX_EMAIL", "MAX_TAG",
    "MAX_TAGS", "MAX_ROUTE", "MAX_ROUTES", "MAX_NODE_NAME", "MAX_AUTH_ID", "MAX_KEY_TEXT",
    "field", "query", "json_body", "parse_id", "required_id", "flag", "text", "timestamp", "user_name", "tag", "tags",
    "routes", "user_ident",
]

#: Request bodies: the size the server reads at most (checked from ``Content-Length``
#: before reading, and while reading a chunked body).
MAX_BODY_BYTES = 1 << 20
#: JSON nesting: no request body of the API nests deeper than 3.
MAX_JSON_DEPTH = 16
#: Ids are protobuf ``uint64``: ASCII digits up to 2**64 - 1.
MAX_ID = 2**64 - 1
#: User names: one DNS label (Headscale's ``LabelHostnameLength``, RFC 1123).
MAX_USER_NAME = 63
#: Display names: no limit in Headscale; ours.
MAX_DISPLAY_NAME = 255
#: E-mail addresses: RFC 5321's 254 characters.
MAX_EMAIL = 254
#: Tags in one request (node tags, a pre-auth key's ACL tags).
MAX_TAGS = limits.REQUEST_TAGS_MAX
#: A route: the longest IPv6 prefix text, ``ffff:...:ffff/128``.
MAX_ROUTE = limits.PREFIX_MAX_LENGTH
#: Routes in one approval.
MAX_ROUTES = limits.ROUTES_MAX
#: A node's given (MagicDNS) name: one DNS label.
MAX_NODE_NAME = 63
#: An auth id, or the whole ``.../register/<id>`` URL the client printed.
MAX_AUTH_ID = 2048
#: An API key, or its prefix, as given to expire or delete it.
MAX_KEY_TEXT = 128

_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)


def _limit(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise ApiError(INVALID_ARGUMENT, f"{name}: at most {limit} characters are allowed, got {len(value)}")
    return value


def _clean(name: str, value: str, printable: bool) -> str:
    """Refuse text a database cannot store as sent (NUL, lone surrogates) and, if asked, control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(INVALID_ARGUMENT, f"{name}: not valid Unicode text") from None
    if "\x00" in value or (printable and not value.isprintable()):
        raise ApiError(INVALID_ARGUMENT, f"{name}: control characters are not allowed")
    return value


def field(body: dict, name: str) -> Any:
    """A request field by proto name (``display_name``) or its camelCase JSON name (``displayName``)."""
    head, *rest = name.split("_")
    camel = head + "".join(p.capitalize() for p in rest)
    return body.get(camel, body.get(name))


def query(request: IRequest, name: str, limit: int) -> str | None:
    """A query parameter (proto or camelCase name) as text of at most ``limit`` characters, or ``None``."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        head, *rest = name.split("_")
        values = request.args.get((head + "".join(p.capitalize() for p in rest)).encode("ascii"))
    if not values:
        return None
    try:
        value = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(INVALID_ARGUMENT, f"{name}: not valid UTF-8") from None
    return _clean(name, _limit(name, value, limit), printable=True)


def _depth_within(data: Any, limit: int) -> bool:
    """Whether ``data`` nests at most ``limit`` containers deep (walks each container once)."""
    level = [data]
    for _ in range(limit):
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                deeper.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                deeper.extend(v for v in item if isinstance(v, (dict, list)))
        if not deeper:
            return True
        level = deeper
    return False


def json_body(request: IRequest) -> dict:
    """The request body as a JSON object: at most :data:`MAX_BODY_BYTES`, nested at most :data:`MAX_JSON_DEPTH`."""
    raw = request.content.read(MAX_BODY_BYTES + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(INVALID_ARGUMENT, f"request body: at most {MAX_BODY_BYTES} bytes are allowed", status=413)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(INVALID_ARGUMENT, f"request body: JSON nested more than {MAX_JSON_DEPTH} deep") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(INVALID_ARGUMENT, f"request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(INVALID_ARGUMENT, "request body must be a JSON object")
    if not _depth_within(data, MAX_JSON_DEPTH):
        raise ApiError(INVALID_ARGUMENT, f"request body: JSON nested more than {MAX_JSON_DEPTH} deep")
    return data


def _absent(value: Any) -> bool:
    return not isinstance(value, bool) and value in (None, "", 0, "0")


def _id(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected an id, got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    else:
        number = -1
    if not 0 < number <= MAX_ID:
        raise ApiError(INVALID_ARGUMENT, f"{name}: {quoted(value)} is not a valid id (ASCII digits, 1 to {MAX_ID})")
    return number


def parse_id(value: Any, name: str) -> int | None:
    """An id (``uint64``: a JSON number or ASCII digits, 1 to :data:`MAX_ID`); ``None`` for absent or 0."""
    return None if _absent(value) else _id(value, name)


def required_id(value: Any, name: str) -> int:
    """:func:`parse_id` of an id that must be given."""
    if _absent(value):
        raise ApiError(INVALID_ARGUMENT, f"{name}: a positive id is required")
    return _id(value, name)


def flag(value: Any, name: str) -> bool:
    """A JSON boolean (absent is ``False``)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected true or false")
    return value


def text(value: Any, name: str, limit: int, printable: bool = True) -> str:
    """A string of at most ``limit`` characters (absent is ``""``)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected a string")
    return _clean(name, _limit(name, value, limit), printable)


def timestamp(value: Any, name: str) -> datetime | None:
    """An RFC 3339 time or ``{"seconds", "nanos"}``; ``None`` for absent or Go's zero time."""
    if value in (None, ""):
        return None
    if isinstance(value, dict):  # {"seconds": N, "nanos": N}, as Go clients sometimes send
        seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
        if not all(isinstance(v, (int, str)) and not isinstance(v, bool) and len(str(v)) <= 20
                   for v in (seconds, nanos)):
            raise ApiError(INVALID_ARGUMENT, f"{name}: not a valid timestamp")
        try:
            return utc_from_seconds(int(seconds) + int(nanos) / 1e9)
        except (TypeError, ValueError, OverflowError, OSError):
            raise ApiError(INVALID_ARGUMENT, f"{name}: not a valid timestamp") from None
    try:
        dt, _ = parse_timestamp(value)
    except ValueError as e:
        raise ApiError(INVALID_ARGUMENT, f"{name}: {e}") from None
    if dt.year <= 1:
        return None  # Go's zero time: "no expiration"
    return dt


def user_name(name: Any, field_name: str = "name") -> str:
    """Headscale's user name rules: 2 to 63 characters, a letter first, then letters, digits, ``-._`` and one ``@``."""
    if not isinstance(name, str) or not name:
        raise ApiError(INVALID_ARGUMENT, f"{field_name}: a user name is required")
    _limit(field_name, name, MAX_USER_NAME)
    if len(name) < 2:
        raise ApiError(INVALID_ARGUMENT, f"invalid user name {quoted(name)}: must be at least 2 characters")
    if not name[0].isalpha():
        raise ApiError(INVALID_ARGUMENT, f"invalid user name {quoted(name)}: must start with a letter")
    for ch in name:
        if not (ch.isalnum() or ch in "-._@"):
            raise ApiError(INVALID_ARGUMENT, f"invalid user name {quoted(name)}: character {quoted(ch)} is not allowed")
    if name.count("@") > 1:
        raise ApiError(INVALID_ARGUMENT, f"invalid user name {quoted(name)}: more than one '@'")
    return name


def user_ident(value: Any, name: str) -> str:
    """A user named by id or by name (as ``nodes list --user`` and ``auth register`` accept)."""
    if isinstance(value, bool) or value in (None, ""):
        raise ApiError(INVALID_ARGUMENT, f"{name}: a user name or id is required")
    if isinstance(value, int):
        return str(required_id(value, name))
    return text(value, name, MAX_USER_NAME)


def tag(value: Any, name: str = "tags") -> str:
    """A tag by :func:`~headscale_tw.control.nodes.validate_tag` (the one set of tag rules)."""
    try:
        return validate_tag(value, name)
    except InvalidInput as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None


def _strings(value: Any, name: str, count: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected a list of strings")
    if len(value) > count:
        raise ApiError(INVALID_ARGUMENT, f"{name}: at most {count} entries are allowed, got {len(value)}")
    return value


def tags(value: Any, name: str) -> list[str]:
    """A list of at most :data:`MAX_TAGS` tags, each checked by :func:`tag`."""
    return [tag(t, name) for t in _strings(value, name, MAX_TAGS)]


def routes(value: Any, name: str) -> list[str]:
    """A list of at most :data:`MAX_ROUTES` prefixes of at most :data:`MAX_ROUTE` characters (blank ones dropped)."""
    out = []
    for route in _strings(value, name, MAX_ROUTES):
        route = route.strip()
        if route:
            out.append(_clean(name, _limit(name, route, MAX_ROUTE), printable=True))
    return out
