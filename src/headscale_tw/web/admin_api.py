# -*- test-case-name: tests.web.test_admin_api -*-
"""
The admin REST API, ``/api/v1``, with Headscale's paths and JSON shapes.

Headscale serves this API through grpc-gateway, so its JSON is protobuf's:
camelCase field names (snake_case accepted in requests), 64-bit ids as
strings (numbers accepted in requests), RFC 3339 timestamps, every field
present. Errors are ``{"code": <gRPC code>, "message": "...", "details": []}``
with the HTTP status grpc-gateway would use::

    GET    /api/v1/user[?id=|name=|email=]         -> {"users": [User]}
    POST   /api/v1/user  {name, displayName, email} -> {"user": User}
    POST   /api/v1/user/{old_id}/rename/{new_name}  -> {"user": User}
    DELETE /api/v1/user/{id}                        -> {}
    GET    /api/v1/preauthkey[?user=]               -> {"preAuthKeys": [PreAuthKey]}
    POST   /api/v1/preauthkey {user, reusable, ephemeral, expiration, aclTags}
                                                    -> {"preAuthKey": PreAuthKey}  (full key, once)
    POST   /api/v1/preauthkey/expire {id}           -> {}
    DELETE /api/v1/preauthkey?id=                   -> {}
    GET    /api/v1/apikey                           -> {"apiKeys": [ApiKey]}
    POST   /api/v1/apikey {expiration}              -> {"apiKey": "hskey-api-..."}  (once)
    POST   /api/v1/apikey/expire {prefix | id}      -> {}
    DELETE /api/v1/apikey/{prefix}  or  ?id=        -> {}
    GET    /api/v1/health                           -> {"databaseConnectivity": true}

Authentication: ``Authorization: Bearer <API key>``, checked against the API
key store (prefix lookup, keyed hash, expiry). An instance built with
``trust_all=True`` skips the check: it is the one mounted on the local unix
socket, whose file permissions are the access control.

Mount :meth:`AdminAPI.resource` as the child ``api`` of the site's root
(:func:`mount`); routes below are relative to that child.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from headscale_tw import secrets
from headscale_tw.cli._messages import format_timestamp, parse_timestamp
from headscale_tw.errors import AlreadyExists, Expired, HeadscaleError, InvalidInput, NotFound, UserHasNodes
from headscale_tw.storage.models import ApiKey, PreAuthKey, User

__all__ = ["AdminAPI", "ApiError", "mount", "validate_user_name", "validate_tag"]

# gRPC status codes used by grpc-gateway, and the HTTP status it maps each to.
OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION = 0, 3, 5, 6, 9
INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 13, 14, 16
_HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, FAILED_PRECONDITION: 400,
                INTERNAL: 500, UNAVAILABLE: 503, UNAUTHENTICATED: 401}
_DOMAIN_CODES = ((NotFound, NOT_FOUND), (AlreadyExists, ALREADY_EXISTS), (UserHasNodes, FAILED_PRECONDITION),
                 (InvalidInput, INVALID_ARGUMENT), (Expired, FAILED_PRECONDITION))
_MAX_BODY = 1 << 20


class ApiError(Exception):
    """A request failure with its gRPC code; ``str()`` is the message shown to the caller."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _q(value: object) -> str:
    return json.dumps(str(value))


def validate_user_name(name: Any) -> str:
    """Headscale's user name rules: 2+ characters, a letter first, then letters, digits, ``-._`` and one ``@``."""
    if not isinstance(name, str) or not name:
        raise ApiError(INVALID_ARGUMENT, "name: a user name is required")
    if len(name) < 2:
        raise ApiError(INVALID_ARGUMENT, f"invalid user name {_q(name)}: must be at least 2 characters")
    if not name[0].isalpha():
        raise ApiError(INVALID_ARGUMENT, f"invalid user name {_q(name)}: must start with a letter")
    for ch in name:
        if not (ch.isalnum() or ch in "-._@"):
            raise ApiError(INVALID_ARGUMENT, f"invalid user name {_q(name)}: character {_q(ch)} is not allowed")
    if name.count("@") > 1:
        raise ApiError(INVALID_ARGUMENT, f"invalid user name {_q(name)}: more than one '@'")
    return name


def validate_tag(tag: Any) -> str:
    """Headscale's tag rules: ``tag:`` prefix, lower case, no spaces."""
    if not isinstance(tag, str) or not tag.startswith("tag:") or len(tag) == 4:
        raise ApiError(INVALID_ARGUMENT, f"invalid tag {_q(tag)}: tags must start with 'tag:' and have a name")
    if tag.lower() != tag:
        raise ApiError(INVALID_ARGUMENT, f"invalid tag {_q(tag)}: tags must be lowercase")
    if any(c.isspace() for c in tag):
        raise ApiError(INVALID_ARGUMENT, f"invalid tag {_q(tag)}: tags must not contain spaces")
    return tag


# ---------------------------------------------------------------- request parsing


def _field(body: dict, name: str) -> Any:
    """A request field by proto name or its camelCase JSON name."""
    head, *rest = name.split("_")
    camel = head + "".join(p.capitalize() for p in rest)
    return body.get(camel, body.get(name))


def _uint(value: Any, name: str, required: bool = False) -> int | None:
    if value in (None, "", 0, "0"):
        if required:
            raise ApiError(INVALID_ARGUMENT, f"{name}: a positive id is required")
        return None
    if isinstance(value, bool):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected an id, got a boolean")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ApiError(INVALID_ARGUMENT, f"{name}: {_q(value)} is not a valid id")


def _bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected true or false")
    return value


def _str(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected a string")
    return value


def _time(value: Any, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dict):  # {"seconds": N, "nanos": N}, as Go clients sometimes send
        try:
            return datetime.fromtimestamp(int(value.get("seconds", 0)) + int(value.get("nanos", 0)) / 1e9,
                                          timezone.utc)
        except (TypeError, ValueError, OverflowError):
            raise ApiError(INVALID_ARGUMENT, f"{name}: not a valid timestamp") from None
    try:
        dt, _ = parse_timestamp(value)
    except ValueError as e:
        raise ApiError(INVALID_ARGUMENT, f"{name}: {e}") from None
    if dt.year <= 1:
        return None  # Go's zero time: "no expiration"
    return dt


def _query(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        head, *rest = name.split("_")
        values = request.args.get((head + "".join(p.capitalize() for p in rest)).encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(INVALID_ARGUMENT, f"{name}: not valid UTF-8") from None


def _body(request: IRequest) -> dict:
    raw = request.content.read(_MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > _MAX_BODY:
        raise ApiError(INVALID_ARGUMENT, "request body is too large")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(INVALID_ARGUMENT, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(INVALID_ARGUMENT, "request body must be a JSON object")
    return data


def _strip_api_prefix(prefix: str) -> str:
    """Accept a bare prefix, the listed ``hskey-api-<prefix>-***`` form, or a whole key."""
    m = re.fullmatch(r"hskey-api-([A-Za-z0-9]+)(?:-.*)?", prefix)
    return m.group(1) if m else prefix


# ---------------------------------------------------------------- JSON rendering


def _ts(dt: datetime | None) -> str | None:
    return format_timestamp(dt) if dt is not None else None


def user_json(user: User) -> dict:
    """A ``User`` as ``headscale.v1.User`` JSON."""
    return {
        "id": str(user.id),
        "name": user.name,
        "createdAt": _ts(user.created_at),
        "displayName": user.display_name,
        "email": user.email,
        "providerId": user.provider_identifier,
        "provider": user.provider,
        "profilePicUrl": user.profile_pic_url,
    }


def preauthkey_json(key: PreAuthKey, user: User | None, full_key: str | None = None) -> dict:
    """A ``PreAuthKey`` as ``headscale.v1.PreAuthKey`` JSON; the secret only when just created."""
    return {
        "user": user_json(user) if user is not None else None,
        "id": str(key.id),
        "key": full_key or f"hskey-auth-{key.prefix}-***",
        "reusable": key.reusable,
        "ephemeral": key.ephemeral,
        "used": key.used,
        "expiration": _ts(key.expiration),
        "createdAt": _ts(key.created_at),
        "aclTags": list(key.tags),
    }


def apikey_json(key: ApiKey) -> dict:
    """An ``ApiKey`` as ``headscale.v1.ApiKey`` JSON (prefix masked, as Headscale lists it)."""
    return {
        "id": str(key.id),
        "prefix": f"hskey-api-{key.prefix}-***",
        "expiration": _ts(key.expiration),
        "createdAt": _ts(key.created_at),
        "lastSeen": _ts(key.last_seen),
    }


Handler = Callable[..., Awaitable[dict]]


def _endpoint(fn: Handler) -> Callable[..., Awaitable[bytes]]:
    """Authenticate, run the handler, encode the result or the error as JSON."""

    @functools.wraps(fn)
    async def wrapper(self: AdminAPI, request: IRequest, **kw: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        try:
            await self.authenticate(request)
            result = await fn(self, request, **kw)
        except ApiError as e:
            return self._error(request, e.code, str(e))
        except HeadscaleError as e:
            for cls, code in _DOMAIN_CODES:
                if isinstance(e, cls):
                    return self._error(request, code, str(e))
            return self._error(request, FAILED_PRECONDITION, str(e))
        except Exception:
            self.log.failure("admin API {method} {path} failed", method=request.method.decode("ascii", "replace"),
                             path=request.path.decode("ascii", "replace"))
            return self._error(request, INTERNAL, "internal error (see the server log)")
        return json.dumps(result, separators=(",", ":")).encode("utf-8")

    return wrapper


class AdminAPI:
    """The ``/api/v1`` Klein application over an ``IDatabase``.

    :param db: an open ``IDatabase``.
    :param clock: the reactor's clock (``now`` for expirations).
    :param trust_all: skip API-key checks (only for the local unix socket).
    :param notifier: an ``INodeNotifier`` told when a user change affects the policy (optional).
    """

    app = Klein()
    log = Logger()

    def __init__(self, db: Any, clock: IReactorTime, *, trust_all: bool = False, notifier: Any = None):
        self.db = db
        self.clock = clock
        self.trust_all = trust_all
        self.notifier = notifier
        self._pepper: bytes | None = None

    def resource(self) -> IResource:
        """The Klein resource; mount it as the ``api`` child of the root (see :func:`mount`)."""
        return self.app.resource()

    # -- helpers

    def now(self) -> datetime:
        """The clock's time as an aware UTC ``datetime``."""
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    async def pepper(self) -> bytes:
        """The server's key-hashing pepper (created on first use, then cached)."""
        if self._pepper is None:
            self._pepper = await secrets.get_pepper(self.db.server_state)
        return self._pepper

    def _error(self, request: IRequest, code: int, message: str) -> bytes:
        request.setResponseCode(_HTTP_STATUS.get(code, 500))
        if code == UNAUTHENTICATED:
            request.setHeader(b"www-authenticate", b'Bearer realm="headscale"')
        return json.dumps({"code": code, "message": message, "details": []}).encode("utf-8")

    async def authenticate(self, request: IRequest) -> None:
        """Accept the request or raise ``ApiError(UNAUTHENTICATED)``; never logs the key."""
        if self.trust_all:
            return
        header = request.getHeader(b"authorization")
        if not header:
            raise ApiError(UNAUTHENTICATED, "missing \"Authorization: Bearer <API key>\" header")
        scheme, _, token = header.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(UNAUTHENTICATED, "the Authorization header must be \"Bearer <API key>\"")
        try:
            kind, prefix, secret = secrets.parse_key(token.strip())
        except InvalidInput:
            raise ApiError(UNAUTHENTICATED, "invalid API key") from None
        if kind != "api":
            raise ApiError(UNAUTHENTICATED, "invalid API key (this is not an API key)")
        row = await self.db.apikeys.get_by_prefix(prefix)
        try:
            valid = row is not None and secrets.verify_secret(secret, row.key_hash, await self.pepper())
        except secrets.BcryptUnavailable as e:
            raise ApiError(UNAUTHENTICATED, str(e)) from None
        if not valid:
            raise ApiError(UNAUTHENTICATED, "invalid API key")
        now = self.now()
        if row.expiration is not None and row.expiration <= now:
            raise ApiError(UNAUTHENTICATED, "API key expired")
        await self.db.apikeys.touch(row.id, now)

    # -- users

    @app.route("/v1/user", methods=["GET"])
    @_endpoint
    async def list_users(self, request: IRequest) -> dict:
        user_id = _uint(_query(request, "id"), "id")
        name = _query(request, "name")
        email = _query(request, "email")
        if name:
            try:
                users = [await self.db.users.get_by_name(name)]
            except NotFound:
                users = []
        elif email:
            users = [u for u in await self.db.users.list() if u.email == email]
        elif user_id:
            try:
                users = [await self.db.users.get(user_id)]
            except NotFound:
                users = []
        else:
            users = await self.db.users.list()
        return {"users": [user_json(u) for u in sorted(users, key=lambda u: u.id)]}

    @app.route("/v1/user", methods=["POST"])
    @_endpoint
    async def create_user(self, request: IRequest) -> dict:
        body = _body(request)
        name = validate_user_name(_field(body, "name"))
        user = await self.db.users.create(
            name,
            display_name=_str(_field(body, "display_name"), "displayName"),
            email=_str(_field(body, "email"), "email"),
            now=self.now(),
        )
        self.log.info("created user {name} ({id})", name=user.name, id=user.id)
        return {"user": user_json(user)}

    @app.route("/v1/user/<old_id>/rename/<new_name>", methods=["POST"])
    @_endpoint
    async def rename_user(self, request: IRequest, old_id: str, new_name: str) -> dict:
        user_id = _uint(old_id, "old_id", required=True)
        validate_user_name(new_name)
        user = await self.db.users.rename(user_id, new_name, now=self.now())
        self._policy_changed()
        return {"user": user_json(user)}

    @app.route("/v1/user/<user_id>", methods=["DELETE"])
    @_endpoint
    async def delete_user(self, request: IRequest, user_id: str) -> dict:
        uid = _uint(user_id, "id", required=True)
        user = await self.db.users.get(uid)
        try:
            await self.db.users.delete(uid)
        except UserHasNodes:
            raise ApiError(FAILED_PRECONDITION,
                           f"user {_q(user.name)} still owns nodes; delete or move them first") from None
        self.log.info("deleted user {name} ({id})", name=user.name, id=uid)
        self._policy_changed()
        return {}

    def _policy_changed(self) -> None:
        if self.notifier is not None:
            self.notifier.policy_changed()

    # -- pre-auth keys

    async def _users_by_id(self) -> dict[int, User]:
        return {u.id: u for u in await self.db.users.list()}

    @app.route("/v1/preauthkey", methods=["GET"])
    @_endpoint
    async def list_preauthkeys(self, request: IRequest) -> dict:
        user_id = _uint(_query(request, "user"), "user")
        keys = await self.db.preauthkeys.list(user_id) if user_id else await self.db.preauthkeys.list()
        users = await self._users_by_id()
        return {"preAuthKeys": [preauthkey_json(k, users.get(k.user_id)) for k in sorted(keys, key=lambda k: k.id)]}

    @app.route("/v1/preauthkey", methods=["POST"])
    @_endpoint
    async def create_preauthkey(self, request: IRequest) -> dict:
        body = _body(request)
        user_id = _uint(_field(body, "user"), "user")
        reusable = _bool(_field(body, "reusable"), "reusable")
        ephemeral = _bool(_field(body, "ephemeral"), "ephemeral")
        expiration = _time(_field(body, "expiration"), "expiration")
        raw_tags = _field(body, "acl_tags") or []
        if not isinstance(raw_tags, list):
            raise ApiError(INVALID_ARGUMENT, "aclTags: expected a list of tags")
        tags = tuple(dict.fromkeys(validate_tag(t) for t in raw_tags))
        now = self.now()
        if expiration is not None and expiration <= now:
            raise ApiError(INVALID_ARGUMENT, f"expiration {format_timestamp(expiration)} is in the past")
        if user_id is None and not tags:
            raise ApiError(INVALID_ARGUMENT, "a pre-auth key needs a user or at least one tag")
        user = await self.db.users.get(user_id) if user_id is not None else None
        full, prefix, secret = secrets.generate_key("auth")
        key_hash = secrets.hash_secret(secret, await self.pepper())
        row = await self.db.preauthkeys.create(user_id, prefix, key_hash, reusable, ephemeral, tags, expiration,
                                               now=now)
        self.log.info("created pre-auth key {id} (prefix {prefix}) for {owner}", id=row.id, prefix=prefix,
                      owner=user.name if user else ",".join(tags))
        return {"preAuthKey": preauthkey_json(row, user, full_key=full)}

    @app.route("/v1/preauthkey/expire", methods=["POST"])
    @_endpoint
    async def expire_preauthkey(self, request: IRequest) -> dict:
        key_id = _uint(_field(_body(request), "id"), "id", required=True)
        key = await self.db.preauthkeys.get(key_id)
        now = self.now()
        if key.expiration is not None and key.expiration <= now:
            raise ApiError(FAILED_PRECONDITION, f"pre-auth key {key_id} is already expired")
        await self.db.preauthkeys.expire(key_id, now)
        return {}

    @app.route("/v1/preauthkey", methods=["DELETE"])
    @_endpoint
    async def delete_preauthkey(self, request: IRequest) -> dict:
        key_id = _uint(_query(request, "id"), "id", required=True)
        await self.db.preauthkeys.delete(key_id)
        return {}

    # -- API keys

    @app.route("/v1/apikey", methods=["GET"])
    @_endpoint
    async def list_apikeys(self, request: IRequest) -> dict:
        keys = await self.db.apikeys.list()
        return {"apiKeys": [apikey_json(k) for k in sorted(keys, key=lambda k: k.id)]}

    @app.route("/v1/apikey", methods=["POST"])
    @_endpoint
    async def create_apikey(self, request: IRequest) -> dict:
        expiration = _time(_field(_body(request), "expiration"), "expiration")
        now = self.now()
        if expiration is not None and expiration <= now:
            raise ApiError(INVALID_ARGUMENT, f"expiration {format_timestamp(expiration)} is in the past")
        full, prefix, secret = secrets.generate_key("api")
        key_hash = secrets.hash_secret(secret, await self.pepper())
        row = await self.db.apikeys.create(prefix, key_hash, expiration, now=now)
        self.log.info("created API key {id} (prefix {prefix})", id=row.id, prefix=prefix)
        return {"apiKey": full}

    async def _find_apikey(self, key_id: int | None, prefix: str | None) -> ApiKey:
        if bool(key_id) == bool(prefix):
            raise ApiError(INVALID_ARGUMENT, "give exactly one of id and prefix")
        if prefix:
            row = await self.db.apikeys.get_by_prefix(_strip_api_prefix(prefix))
            if row is None:
                raise ApiError(NOT_FOUND, f"API key with prefix {_q(prefix)} not found")
            return row
        for row in await self.db.apikeys.list():
            if row.id == key_id:
                return row
        raise ApiError(NOT_FOUND, f"API key {key_id} not found")

    @app.route("/v1/apikey/expire", methods=["POST"])
    @_endpoint
    async def expire_apikey(self, request: IRequest) -> dict:
        body = _body(request)
        row = await self._find_apikey(_uint(_field(body, "id"), "id"), _str(_field(body, "prefix"), "prefix"))
        now = self.now()
        if row.expiration is not None and row.expiration <= now:
            raise ApiError(FAILED_PRECONDITION, f"API key {row.id} is already expired")
        await self.db.apikeys.expire(row.id, now)
        return {}

    @app.route("/v1/apikey/<prefix>", methods=["DELETE"])
    @_endpoint
    async def delete_apikey(self, request: IRequest, prefix: str) -> dict:
        row = await self._find_apikey(_uint(_query(request, "id"), "id"), prefix)
        await self.db.apikeys.delete(row.id)
        return {}

    @app.route("/v1/apikey", methods=["DELETE"])
    @_endpoint
    async def delete_apikey_by_id(self, request: IRequest) -> dict:
        row = await self._find_apikey(_uint(_query(request, "id"), "id", required=True), None)
        await self.db.apikeys.delete(row.id)
        return {}

    # -- health

    @app.route("/v1/health", methods=["GET"])
    @_endpoint
    async def health(self, request: IRequest) -> dict:
        try:
            await self.db.server_state.get("health")
        except Exception as e:
            self.log.failure("health check: database unreachable")
            raise ApiError(UNAVAILABLE, f"pinging database: {e}") from None
        return {"databaseConnectivity": True}

    @app.route("/", branch=True)
    @_endpoint
    async def not_found(self, request: IRequest) -> dict:
        method = request.method.decode("ascii", "replace")
        raise ApiError(NOT_FOUND, f"no such endpoint: {method} {request.uri.decode('utf-8', 'replace').split('?')[0]}")


def mount(root: Resource, api: AdminAPI) -> None:
    """Serve ``api`` under ``/api`` of ``root`` (its routes start at ``/v1``)."""
    root.putChild(b"api", api.resource())
