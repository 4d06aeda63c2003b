# -*- test-case-name: tests.web.test_admin_api,tests.nodesapi.test_api -*-
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

Nodes, routes, policy and interactive registration need the control plane
(``plane=``); without it they answer 501. Node changes go through
``plane.nodes`` (:class:`~headscale_tw.control.nodes.NodeAdmin`) so that peers
are told::

    GET    /api/v1/node[?user=NAME]                 -> {"nodes": [Node]}
    GET    /api/v1/node/{id}                        -> {"node": Node}
    DELETE /api/v1/node/{id}                        -> {}
    POST   /api/v1/node/{id}/expire[?expiry=|disableExpiry=true]  -> {"node": Node}
    POST   /api/v1/node/{id}/rename/{new_name}      -> {"node": Node}
    POST   /api/v1/node/{id}/tags {tags}            -> {"node": Node}
    POST   /api/v1/node/{id}/approve_routes {routes} -> {"node": Node}
    POST   /api/v1/node/{id}/user {user}            -> {"node": Node}   (pre-0.23 MoveNode)
    POST   /api/v1/node/register?user=&key=         -> {"node": Node}   (deprecated form)
    POST   /api/v1/auth/register {user, authId}     -> {"node": Node}
    POST   /api/v1/auth/approve {authId}            -> {}  (SSH check requests; 400 for a registration)
    POST   /api/v1/auth/reject {authId}             -> {}  (the waiting client is told)
    POST   /api/v1/node/backfillips?confirmed=true  -> {"changes": [...]}
    GET    /api/v1/policy                           -> {"policy": text, "updatedAt": ts|null}
    PUT    /api/v1/policy {policy}                  -> {"policy": text, "updatedAt": ts}
    POST   /api/v1/policy/check {policy}            -> {}

Routes are part of ``Node``: ``availableRoutes`` (announced),
``approvedRoutes`` and ``subnetRoutes`` (served now: HA primary subnets plus
approved exit routes).

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
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from headscale_tw import secrets
from headscale_tw.cli._messages import format_timestamp, parse_timestamp
from headscale_tw.clock import utc_now
from headscale_tw.control.routes import announced_routes, served_routes
from headscale_tw.control.state import TAGGED_DEVICES_USER_ID
from headscale_tw.errors import (
    AlreadyExists,
    Conflict,
    Expired,
    HeadscaleError,
    InvalidInput,
    LimitReached,
    NotFound,
    UserHasNodes,
)
from headscale_tw.storage.models import ApiKey, Node, PreAuthKey, User

__all__ = ["AdminAPI", "ApiError", "mount", "validate_user_name", "validate_tag", "node_json", "user_json",
           "preauthkey_json", "apikey_json"]

# gRPC status codes used by grpc-gateway, and the HTTP status it maps each to.
OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION = 0, 3, 5, 6, 9
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16
_HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, FAILED_PRECONDITION: 400,
                UNIMPLEMENTED: 501, INTERNAL: 500, UNAVAILABLE: 503, UNAUTHENTICATED: 401}
_DOMAIN_CODES = ((NotFound, NOT_FOUND), (AlreadyExists, ALREADY_EXISTS), (UserHasNodes, FAILED_PRECONDITION),
                 (InvalidInput, INVALID_ARGUMENT), (Expired, FAILED_PRECONDITION),
                 (Conflict, FAILED_PRECONDITION), (LimitReached, FAILED_PRECONDITION))
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


def _auth_id(text: str, name: str = "authId") -> str:
    """The auth id of an interactive login; the whole ``.../register/<id>`` URL is accepted too."""
    text = text.strip().rstrip("/").rpartition("/")[2]
    if not text:
        raise ApiError(INVALID_ARGUMENT, f"{name}: the auth id from the client's login URL is required")
    if len(text) > 128:
        raise ApiError(INVALID_ARGUMENT, f"{name}: an auth id has at most 128 characters")
    return text


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


_REGISTER_METHODS = {"authkey": "REGISTER_METHOD_AUTH_KEY", "cli": "REGISTER_METHOD_CLI",
                     "oidc": "REGISTER_METHOD_OIDC"}
#: The pseudo-user Headscale shows as the owner of tagged nodes.
TAGGED_DEVICES = User(id=TAGGED_DEVICES_USER_ID, name="tagged-devices", display_name="Tagged Devices")


def node_json(node: Node, user: User | None, key: PreAuthKey | None = None, key_user: User | None = None, *,
              online: bool = False, subnet_routes: Sequence[str] = ()) -> dict:
    """A ``Node`` as ``headscale.v1.Node`` JSON (Headscale 0.29: one ``tags`` list).

    A tagged node is shown as owned by ``tagged-devices``, as Headscale does;
    ``name`` is the client's hostname and ``givenName`` the MagicDNS name.
    """
    return {
        "id": str(node.id),
        "machineKey": node.machine_key,
        "nodeKey": node.node_key,
        "discoKey": node.disco_key,
        "ipAddresses": [a for a in (node.ipv4, node.ipv6) if a],
        "name": node.hostname,
        "user": user_json(TAGGED_DEVICES if node.tags or user is None else user),
        "lastSeen": _ts(node.last_seen),
        "expiry": _ts(node.expiry),
        "preAuthKey": preauthkey_json(key, key_user) if key is not None else None,
        "createdAt": _ts(node.created_at),
        "registerMethod": _REGISTER_METHODS.get(node.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        "givenName": node.given_name,
        "online": online,
        "approvedRoutes": list(node.approved_routes),
        "availableRoutes": [str(r) for r in announced_routes(node)],
        "subnetRoutes": list(subnet_routes),
        "tags": list(node.tags),
    }


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(INVALID_ARGUMENT, f"{name}: expected a list of strings")
    return value


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
    :param plane: the :class:`~headscale_tw.control.plane.ControlPlane`; the node,
        policy and auth endpoints need it (501 without). Its notifier is used
        when ``notifier`` is not given.
    """

    app = Klein()
    log = Logger()

    def __init__(self, db: Any, clock: IReactorTime, *, trust_all: bool = False, notifier: Any = None,
                 plane: Any = None):
        self.db = db
        self.clock = clock
        self.trust_all = trust_all
        self.plane = plane
        self.notifier = notifier if notifier is not None or plane is None else plane.notifier
        self._pepper: bytes | None = None

    def resource(self) -> IResource:
        """The Klein resource; mount it as the ``api`` child of the root (see :func:`mount`)."""
        return self.app.resource()

    # -- helpers

    def now(self) -> datetime:
        """The clock's time as an aware UTC ``datetime``."""
        return utc_now(self.clock)

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
        if self.plane is not None and user_id in self.plane.state.users:
            # Peers see the new login name; the policy may name the user.
            await self.plane.state.refresh_user(user_id)
            self.plane.notifier.user_changed(user_id)
        else:
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

    # -- nodes

    def _control(self) -> Any:
        if self.plane is None:
            raise ApiError(UNIMPLEMENTED, "this API instance has no control plane: node, policy and auth "
                                          "endpoints are unavailable")
        return self.plane

    async def _render_nodes(self, nodes: Sequence[Node]) -> list[dict]:
        plane = self._control()
        users = {u.id: u for u in await self.db.users.list()}
        keys = {k.id: k for k in await self.db.preauthkeys.list()} if any(n.auth_key_id for n in nodes) else {}
        out = []
        for node in nodes:
            key = keys.get(node.auth_key_id) if node.auth_key_id is not None else None
            exits = [str(r) for r in served_routes(node) if r.prefixlen == 0]
            out.append(node_json(
                node,
                users.get(node.user_id) if node.user_id is not None else None,
                key,
                users.get(key.user_id) if key is not None and key.user_id is not None else None,
                online=plane.nodes.is_online(node.id),
                subnet_routes=list(plane.policy.primary_routes(node.id)) + exits,
            ))
        return out

    async def _node_reply(self, node: Node) -> dict:
        return {"node": (await self._render_nodes([node]))[0]}

    async def _find_user(self, ident: Any, name: str) -> User:
        """A user by id (digits) or name; ``NOT_FOUND`` naming it."""
        if isinstance(ident, bool) or ident in (None, ""):
            raise ApiError(INVALID_ARGUMENT, f"{name}: a user name or id is required")
        text = str(ident)
        try:
            if text.isdigit():
                return await self.db.users.get(int(text))
            return await self.db.users.get_by_name(text)
        except NotFound:
            raise ApiError(NOT_FOUND, f"user {_q(text)} not found") from None

    @app.route("/v1/node", methods=["GET"])
    @_endpoint
    async def list_nodes(self, request: IRequest) -> dict:
        plane = self._control()
        user = _query(request, "user")
        user_id = (await self._find_user(user, "user")).id if user else None
        return {"nodes": await self._render_nodes(plane.nodes.list(user_id))}

    @app.route("/v1/node/register", methods=["POST"])
    @_endpoint
    async def register_node(self, request: IRequest) -> dict:
        body = _body(request)
        user = _query(request, "user") or _str(_field(body, "user"), "user")
        key = _query(request, "key") or _str(_field(body, "key"), "key")
        return await self._register(key, user, "key")

    @app.route("/v1/auth/register", methods=["POST"])
    @_endpoint
    async def auth_register(self, request: IRequest) -> dict:
        body = _body(request)
        user = _str(_field(body, "user"), "user") or (_query(request, "user") or "")
        auth_id = _str(_field(body, "auth_id"), "authId") or (_query(request, "auth_id") or "")
        return await self._register(auth_id, user, "authId")

    async def _register(self, auth_id: str, user: str, id_name: str) -> dict:
        plane = self._control()
        auth_id = _auth_id(auth_id, id_name)
        if not user:
            raise ApiError(INVALID_ARGUMENT, "user: a user name is required")
        if await plane.registrar.get_pending(auth_id) is None:
            raise ApiError(NOT_FOUND, f"no pending registration with auth id {_q(auth_id)} "
                                      "(it may have expired; run tailscale up again)")
        found = await self._find_user(user, "user")
        node = await plane.nodes.register(auth_id, found.name)
        self.log.info("registered node {id} ({name}) to user {user}", id=node.id, name=node.given_name,
                      user=found.name)
        return await self._node_reply(node)

    @app.route("/v1/auth/approve", methods=["POST"])
    @_endpoint
    async def auth_approve(self, request: IRequest) -> dict:
        plane = self._control()
        auth_id = _auth_id(_str(_field(_body(request), "auth_id"), "authId") or (_query(request, "auth_id") or ""))
        await plane.registrar.approve(auth_id)
        self.log.info("approved auth request {auth_id}", auth_id=auth_id)
        return {}

    @app.route("/v1/auth/reject", methods=["POST"])
    @_endpoint
    async def auth_reject(self, request: IRequest) -> dict:
        plane = self._control()
        auth_id = _auth_id(_str(_field(_body(request), "auth_id"), "authId") or (_query(request, "auth_id") or ""))
        await plane.registrar.reject(auth_id)
        self.log.info("rejected auth request {auth_id}", auth_id=auth_id)
        return {}

    @app.route("/v1/node/backfillips", methods=["POST"])
    @_endpoint
    async def backfill_ips(self, request: IRequest) -> dict:
        self._control()
        raise ApiError(UNIMPLEMENTED, "backfillips is not supported by headscale-tw: addresses are assigned from "
                                      "the configured prefixes at registration")

    @app.route("/v1/node/<node_id>", methods=["GET"])
    @_endpoint
    async def get_node(self, request: IRequest, node_id: str) -> dict:
        plane = self._control()
        return await self._node_reply(plane.nodes.get(_uint(node_id, "node_id", required=True)))

    @app.route("/v1/node/<node_id>", methods=["DELETE"])
    @_endpoint
    async def delete_node(self, request: IRequest, node_id: str) -> dict:
        plane = self._control()
        node = await plane.nodes.delete(_uint(node_id, "node_id", required=True))
        self.log.info("deleted node {id} ({name})", id=node.id, name=node.given_name)
        return {}

    @app.route("/v1/node/<node_id>/expire", methods=["POST"])
    @_endpoint
    async def expire_node(self, request: IRequest, node_id: str) -> dict:
        plane = self._control()
        nid = _uint(node_id, "node_id", required=True)
        body = _body(request)
        expiry = _time(_query(request, "expiry") or _field(body, "expiry"), "expiry")
        disable = _query(request, "disable_expiry")
        if disable is not None:
            if disable.lower() not in ("true", "false", "1", "0"):
                raise ApiError(INVALID_ARGUMENT, "disableExpiry: expected true or false")
            disable_expiry = disable.lower() in ("true", "1")
        else:
            disable_expiry = _bool(_field(body, "disable_expiry"), "disableExpiry")
        if disable_expiry and expiry is not None:
            raise ApiError(INVALID_ARGUMENT, "cannot set both disableExpiry and expiry")
        if disable_expiry:
            node = await plane.nodes.disable_expiry(nid)
        else:
            node = await plane.nodes.expire(nid, expiry)
        return await self._node_reply(node)

    @app.route("/v1/node/<node_id>/rename/<new_name>", methods=["POST"])
    @_endpoint
    async def rename_node(self, request: IRequest, node_id: str, new_name: str) -> dict:
        plane = self._control()
        node = await plane.nodes.rename(_uint(node_id, "node_id", required=True), new_name)
        return await self._node_reply(node)

    @app.route("/v1/node/<node_id>/tags", methods=["POST"])
    @_endpoint
    async def set_node_tags(self, request: IRequest, node_id: str) -> dict:
        plane = self._control()
        nid = _uint(node_id, "node_id", required=True)
        tags = [validate_tag(t) for t in _strings(_field(_body(request), "tags"), "tags")]
        return await self._node_reply(await plane.nodes.set_tags(nid, tags))

    @app.route("/v1/node/<node_id>/approve_routes", methods=["POST"])
    @_endpoint
    async def approve_node_routes(self, request: IRequest, node_id: str) -> dict:
        plane = self._control()
        nid = _uint(node_id, "node_id", required=True)
        routes = [r.strip() for r in _strings(_field(_body(request), "routes"), "routes") if r.strip()]
        return await self._node_reply(await plane.nodes.approve_routes(nid, routes))

    @app.route("/v1/node/<node_id>/user", methods=["POST"])
    @_endpoint
    async def move_node(self, request: IRequest, node_id: str) -> dict:
        plane = self._control()
        nid = _uint(node_id, "node_id", required=True)
        body = _body(request)
        ident = _field(body, "user")
        if ident is None:
            ident = _query(request, "user")
        plane.nodes.get(nid)
        user = await self._find_user(ident, "user")
        return await self._node_reply(await plane.nodes.move(nid, user.id))

    # -- policy

    async def _policy_reply(self) -> dict:
        plane = self._control()
        text = plane.policy.get_policy()
        updated = None
        if plane.policy.mode == "database":
            record = await self.db.policies.get_latest()
            if record is not None:
                updated = record.updated_at or record.created_at
        return {"policy": text, "updatedAt": _ts(updated)}

    @app.route("/v1/policy", methods=["GET"])
    @_endpoint
    async def get_policy(self, request: IRequest) -> dict:
        plane = self._control()
        if not plane.policy.get_policy():
            if plane.policy.mode == "database":
                where = "no policy is stored in the database"
            elif plane.policy.path:
                where = f"the policy file {plane.policy.path} is empty"
            else:
                where = "policy.path is not set"
            raise ApiError(NOT_FOUND, f"no policy in force ({where}): all traffic is allowed")
        return await self._policy_reply()

    def _policy_text(self, request: IRequest) -> str:
        text = _field(_body(request), "policy")
        if not isinstance(text, str):
            raise ApiError(INVALID_ARGUMENT, "policy: the policy text (HuJSON) is required as a string")
        return text

    @app.route("/v1/policy", methods=["PUT"])
    @_endpoint
    async def set_policy(self, request: IRequest) -> dict:
        plane = self._control()
        text = self._policy_text(request)
        await plane.policy.set_policy(text)
        self.log.info("policy updated through the API")
        return await self._policy_reply()

    @app.route("/v1/policy/check", methods=["POST"])
    @_endpoint
    async def check_policy(self, request: IRequest) -> dict:
        plane = self._control()
        plane.policy.check_policy(self._policy_text(request))
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
