# -*- test-case-name: tests.control.test_registration -*-
"""
``/machine/register``: pre-auth keys, interactive login, logout, key rotation.

Order of checks (the flows the client's ``doLogin`` in Tailscale's
control/controlclient/direct.go can take): machine-key binding, logout
(``Expiry`` in the past, even when ``Auth`` is present), ``Followup`` long-poll, known node
key (restart), auth key, ``OldNodeKey`` rotation, else a new interactive
registration answered with ``AuthURL = <server_url>/register/<auth_id>``.

Hard failures are answered 200 with ``{"Error": "..."}`` so the CLI prints
them and stops; only protocol-level problems (malformed body, node key of
another machine) are raised for the web layer to turn into 4xx.

Wrong pre-auth keys are counted per source address (``source``, given by the
web layer) in a :class:`~headscale_tw.throttle.FailureThrottle`; a throttled
source gets ``{"Error": "too many failed pre-auth keys from ...; try again in
N s"}`` without its key being looked up. The official client shows that text
(``backend error: ...``) and retries with its exponential back-off (up to
30 s), which the throttle's refill outpaces.

An interactive registration is an auth request of kind ``register`` stored in
the database (:mod:`headscale_tw.control.authrequests`), capped per client
address and in total and expiring after 15 minutes, until ``headscale auth
register --auth-id <id> --user <name>`` calls :meth:`Registrar.complete` (on
this instance or any other on the same database), which releases any held
``Followup`` request; ``headscale auth reject`` refuses it and the client is
told. Only what finishing needs is stored (:func:`registration_details`), never
the client's whole Hostinfo. Held requests time out (the client then simply
asks again).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from headscale_tw.control import limits
from headscale_tw.control._wire import (
    check_hostinfo,
    format_time,
    is_zero_key,
    parse_key,
    parse_request_head,
    parse_time,
    random_key,
)
from headscale_tw.control.audit import NO_AUDIT, Actor, AuditLog, Target
from headscale_tw.control.authrequests import AuthRequests, new_auth_id
from headscale_tw.control.mapper import Mapper
from headscale_tw.control.state import ControlState
from headscale_tw.errors import InvalidInput, LimitReached, NotFound
from headscale_tw.interfaces import INodeNotifier, ITailnetPolicy
from headscale_tw.storage.models import AuditEvent, AuthRequest, Node
from headscale_tw.throttle import PREAUTH_KEYS, FailureThrottle, Throttled

__all__ = [
    "RegisterRequest",
    "parse_register_request",
    "registration_details",
    "stored_register_request",
    "Registrar",
    "MachineKeyMismatch",
    "TagsRefused",
    "default_preauth_lookup",
    "new_auth_id",
    "KEPT_HOSTINFO",
    "MAX_KEPT_FIELD",
    "MAX_KEPT_TAGS",
    "MAX_DETAILS_BYTES",
]

KEPT_HOSTINFO = ("Hostname", "OS", "OSVersion", "IPNVersion", "GoArch", "DeviceModel")
"""The Hostinfo strings a pending registration keeps (besides ``RequestTags``); the rest
arrives again with the node's first map request."""

MAX_KEPT_FIELD = 255
"""Characters each kept Hostinfo string (and each requested tag) may have."""

MAX_KEPT_TAGS = 32
"""Tags a pending registration may request (``Hostinfo.RequestTags``)."""

MAX_DETAILS_BYTES = 8192
"""Bytes the stored details of one pending registration take at most (JSON)."""

class MachineKeyMismatch(Exception):
    """The node key in the request is registered to a different machine key."""


class TagsRefused(InvalidInput):
    """``Hostinfo.RequestTags`` names tags the registering user does not own."""


@attrs.frozen
class RegisterRequest:
    """The parts of ``tailcfg.RegisterRequest`` the server uses."""

    version: int
    node_key: str
    old_node_key: str = ""
    auth_key: str = ""
    expiry: datetime | None = None
    followup: str = ""
    hostinfo: dict = attrs.field(factory=dict, hash=False)
    ephemeral: bool = False


def parse_register_request(body: object) -> RegisterRequest:
    """Validate a decoded JSON RegisterRequest; ``InvalidInput`` names the bad field."""
    version, node_key = parse_request_head(body, "register request")
    assert isinstance(body, dict)  # parse_request_head refuses anything else
    old = body.get("OldNodeKey") or ""
    if old:
        old = parse_key(old, "nodekey", "register request: OldNodeKey")
    auth = body.get("Auth") or {}
    if not isinstance(auth, dict):
        raise InvalidInput("register request: Auth must be an object")
    auth_key = auth.get("AuthKey") or ""
    if not isinstance(auth_key, str):
        raise InvalidInput("register request: Auth.AuthKey must be a string")
    limits.check_length(auth_key, limits.AUTH_KEY_MAX_LENGTH, "register request: Auth.AuthKey")
    followup = body.get("Followup") or ""
    if not isinstance(followup, str):
        raise InvalidInput("register request: Followup must be a string")
    limits.check_length(followup, limits.FOLLOWUP_MAX_LENGTH, "register request: Followup")
    hostinfo = check_hostinfo(body.get("Hostinfo") or {}, "register request")
    return RegisterRequest(
        version=version,
        node_key=node_key,
        old_node_key="" if is_zero_key(old) else old,
        auth_key=auth_key.strip(),
        expiry=parse_time(body.get("Expiry"), "register request: Expiry"),
        followup=followup,
        hostinfo=hostinfo,
        ephemeral=bool(body.get("Ephemeral")),
    )


def registration_details(request: RegisterRequest) -> dict:
    """What an interactive registration keeps until it is finished (the ``details`` column).

    The capability version, the requested expiry, the ephemeral flag, the Hostinfo
    strings in :data:`KEPT_HOSTINFO` and ``RequestTags``: at most
    :data:`MAX_DETAILS_BYTES` whatever the client sent.

    :raises InvalidInput: a kept field is longer than its limit (named in the message).
    """
    kept: dict = {}
    for name in KEPT_HOSTINFO:
        value = request.hostinfo.get(name)
        if not isinstance(value, str) or not value:
            continue
        if len(value) > MAX_KEPT_FIELD:
            raise InvalidInput(f"register request: Hostinfo.{name} is longer than {MAX_KEPT_FIELD} characters")
        kept[name] = value
    tags = request.hostinfo.get("RequestTags") or []
    if not isinstance(tags, list):
        raise InvalidInput("register request: Hostinfo.RequestTags must be a list")
    tags = sorted({t for t in tags if isinstance(t, str)})
    if len(tags) > MAX_KEPT_TAGS:
        raise InvalidInput(f"register request: Hostinfo.RequestTags has more than {MAX_KEPT_TAGS} tags")
    for tag in tags:
        if len(tag) > MAX_KEPT_FIELD:
            raise InvalidInput(f"register request: a tag in Hostinfo.RequestTags is longer than "
                               f"{MAX_KEPT_FIELD} characters")
    if tags:
        kept["RequestTags"] = tags
    details = {
        "Version": request.version,
        "Ephemeral": request.ephemeral,
        "Expiry": format_time(request.expiry) if request.expiry is not None else "",
        "Hostinfo": kept,
    }
    size = len(json.dumps(details, separators=(",", ":")).encode("utf-8"))
    if size > MAX_DETAILS_BYTES:  # unreachable with the limits above; kept as the stated bound
        raise InvalidInput(f"register request: the registration details exceed {MAX_DETAILS_BYTES} bytes")
    return details


def stored_register_request(row: AuthRequest) -> RegisterRequest:
    """The :class:`RegisterRequest` a stored registration stands for (its kept fields only)."""
    details = row.details
    expiry = details.get("Expiry") or None
    return RegisterRequest(
        version=int(details.get("Version") or 0),
        node_key=row.node_key,
        expiry=parse_time(expiry, "stored registration: Expiry") if expiry else None,
        hostinfo=dict(details.get("Hostinfo") or {}),
        ephemeral=bool(details.get("Ephemeral")),
    )


def default_preauth_lookup(db) -> Callable[[str], Awaitable]:
    """Find a ``PreAuthKey`` row by its full text (``hskey-auth-...``), checking its secret.

    The row is read on every call (a revoked, expired or used key is seen at
    once); only the server's pepper is kept after the first read, since it never
    changes once stored.
    """
    peppers: list[bytes] = []

    async def lookup(text: str):
        from headscale_tw import secrets as keysecrets

        try:
            kind, prefix, secret = keysecrets.parse_key(text)
        except InvalidInput:
            return None
        if kind != "auth":
            return None
        row = await db.preauthkeys.get_by_prefix(prefix)
        if row is None:
            return None
        if not peppers:
            peppers.append(await keysecrets.get_pepper(db.server_state))
        try:
            matches = keysecrets.verify_secret(secret, row.key_hash, peppers[0])
        except keysecrets.BcryptUnavailable:
            return None
        return row if matches else None

    return lookup


class Registrar:
    """Registration domain logic.

    ``preauth_lookup(text)`` is a coroutine returning the matching
    ``PreAuthKey`` or ``None`` (default: :func:`default_preauth_lookup`).
    ``preauth_throttle`` counts wrong pre-auth keys per source (default: one
    with the documented settings on ``clock``).
    ``auth_requests`` keeps interactive registrations (default: an
    :class:`~headscale_tw.control.authrequests.AuthRequests` over
    ``state.db.auth_requests`` living ``pending_ttl`` seconds).
    ``audit`` records every registration (``node.register``: with a pre-auth
    key the key's prefix is the actor, interactively the person or admin who
    finished it) and every logout (``node.logout``, by the node).
    """

    log = Logger()

    def __init__(
        self,
        state: ControlState,
        notifier: INodeNotifier,
        mapper: Mapper,
        config,
        clock,
        preauth_lookup: Callable[[str], Awaitable] | None = None,
        followup_timeout: float = 60.0,
        pending_ttl: float = 15 * 60.0,
        preauth_throttle: FailureThrottle | None = None,
        auth_requests: AuthRequests | None = None,
        audit: AuditLog = NO_AUDIT,
        *,
        policy: ITailnetPolicy,
    ) -> None:
        self.state = state
        self.notifier = notifier
        self.mapper = mapper
        self.config = config
        self.clock = clock
        self.preauth_lookup = preauth_lookup or default_preauth_lookup(state.db)
        self.followup_timeout = followup_timeout
        self.preauth_throttle = preauth_throttle or FailureThrottle(PREAUTH_KEYS, clock)
        if auth_requests is None:
            auth_requests = AuthRequests(state.db.auth_requests, clock, state.now, lifetime=pending_ttl)
        self.auth_requests = auth_requests
        self.audit = audit
        self.policy = policy

    # -- helpers -----------------------------------------------------------

    def auth_url(self, auth_id: str) -> str:
        return f"{self.config.server_url.rstrip('/')}/register/{auth_id}"

    def _expiry_for(self, request: RegisterRequest, tagged: bool, now: datetime,
                    granted_until: datetime | None = None) -> datetime | None:
        """When the node expires: ``node.expiry`` from now, or ``granted_until`` instead when given
        (``oidc.use_expiry_from_token``); never for tagged nodes; a sooner expiry the client asked for wins."""
        expiry = None
        if tagged:
            pass
        elif granted_until is not None:
            expiry = granted_until
        elif self.config.node.expiry > 0:
            expiry = now + timedelta(seconds=self.config.node.expiry)
        if request.expiry is not None and request.expiry > now:
            expiry = request.expiry if expiry is None else min(expiry, request.expiry)
        return expiry

    def _requested_tags(self, request: RegisterRequest, user_id: int | None) -> tuple[str, ...]:
        """``Hostinfo.RequestTags`` (``--advertise-tags``) checked against ``tagOwners``.

        :raises TagsRefused: naming the tags ``user_id`` may not own.
        """
        requested = request.hostinfo.get("RequestTags") or []
        if not isinstance(requested, list):
            raise TagsRefused("register request: Hostinfo.RequestTags must be a list")
        tags = tuple(sorted({t for t in requested if isinstance(t, str)}))
        if not tags:
            return ()
        refused = self.policy.may_own_tags(tags, user_id)
        if refused:
            raise TagsRefused(f"requested tags [{' '.join(refused)}] are invalid or not permitted")
        return tags

    @staticmethod
    def _expired(node, now: datetime) -> bool:
        return node.expiry is not None and node.expiry <= now

    async def _success(self, node) -> dict:
        profile = self.mapper.user_profile(node)
        user = {"ID": profile["ID"], "DisplayName": profile["DisplayName"]}
        if node.user_id is not None and not node.tags:
            owner = await self.state.user(node.user_id)
            if owner.created_at is not None:
                from headscale_tw.control._wire import format_time

                user["Created"] = format_time(owner.created_at)
        login = {
            "ID": profile["ID"],
            "Provider": "",
            "LoginName": profile["LoginName"],
            "DisplayName": profile["DisplayName"],
        }
        return {"User": user, "Login": login, "MachineAuthorized": True}

    # -- entry point -------------------------------------------------------

    async def register(self, machine_key: str, body: object, source: str = "") -> dict:
        """Handle one RegisterRequest from the Noise peer ``machine_key``; return the response dict.

        ``source`` is the client's address (the web layer's ``client_address``;
        empty when unknown): wrong pre-auth keys are throttled per source, and an
        interactive registration counts against its per-source cap.
        """
        request = parse_register_request(body)
        now = self.state.now()
        node = self.state.by_node_key(request.node_key)
        if node is not None and node.machine_key != machine_key:
            raise MachineKeyMismatch("node key is registered to a different machine")

        if request.expiry is not None and request.expiry <= now:
            return await self._logout(node, now, source)
        if request.followup:
            return await self._followup(machine_key, request, source)
        if node is not None and not self._expired(node, now):
            return await self._success(node)
        if request.auth_key:
            return await self._with_auth_key(machine_key, request, now, source)
        if request.old_node_key:
            old = self.state.by_node_key(request.old_node_key)
            if old is not None and old.machine_key == machine_key and not self._expired(old, now):
                return await self._rotate(old, request)
        return await self._start_interactive(machine_key, request, source)

    # -- flows -------------------------------------------------------------

    async def _logout(self, node, now: datetime, source: str = "") -> dict:
        if node is not None and (node.ephemeral or not self._expired(node, now)):
            if node.ephemeral:
                await self.state.delete_node(node.id)
                self.notifier.node_removed(node.id)
            else:
                await self.state.update_node(node.id, expiry=now)
                self.notifier.node_changed(node.id)
            await self.audit.record("node.logout", Target("node", str(node.id), node.given_name),
                                    actor=Actor("node", node.given_name, source),
                                    detail={"ephemeral": node.ephemeral})
        return {"NodeKeyExpired": True, "MachineAuthorized": False}

    async def _rotate(self, node, request: RegisterRequest) -> dict:
        fields: dict[str, Any] = {"node_key": request.node_key}
        if request.hostinfo:
            fields["hostinfo"] = request.hostinfo
        node = await self.state.update_node(node.id, **fields)
        self.state.runtime.set_cap(node.id, request.version)
        self.notifier.node_changed(node.id)
        return await self._success(node)

    async def _with_auth_key(self, machine_key: str, request: RegisterRequest, now: datetime, source: str) -> dict:
        try:
            with self.preauth_throttle.attempt(source) as attempt:
                key = await self.preauth_lookup(request.auth_key)
                if key is None:
                    attempt.failed()
        except Throttled as e:
            return {"Error": str(e)}
        if key is None:
            return {"Error": "invalid auth key"}
        if key.expiration is not None and key.expiration <= now:
            return {"Error": "authkey expired"}
        existing = self.state.by_machine_key(machine_key)
        if key.used and not key.reusable:
            if existing is None or existing.auth_key_id != key.id:
                return {"Error": "authkey already used"}
        tags = tuple(key.tags)
        if not tags:
            if key.user_id is not None:
                await self.state.user(key.user_id)  # a user created after start: the policy must know it
            try:
                tags = self._requested_tags(request, key.user_id)
            except TagsRefused as e:
                return {"Error": str(e)}
        audit_event = self.audit.node_event(
            "node.register", Actor("preauth_key", f"hskey-auth-{key.prefix}", source),
            lambda node: {"method": "authkey", "preauth_key_id": key.id, "user_id": node.user_id,
                          "tags": list(node.tags), "ephemeral": node.ephemeral, "machine_key": machine_key})
        # A new node's audit row goes in with the node (one interaction); an update records it after.
        node = await self._upsert(
            machine_key,
            request,
            now,
            audit_event=audit_event,
            user_id=None if key.tags else key.user_id,
            tags=tags,
            auth_key_id=key.id,
            ephemeral=key.ephemeral or request.ephemeral,
            register_method="authkey",
        )
        if not key.reusable and not key.used:
            await self.state.db.preauthkeys.mark_used(key.id)
        return await self._success(node)

    async def _upsert(self, machine_key: str, request: RegisterRequest, now: datetime,
                      granted_until: datetime | None = None,
                      audit_event: Callable[[Node], AuditEvent | None] | None = None, **fields):
        """Register ``machine_key``: update its existing node in place, or create one.

        ``audit_event`` (from :meth:`AuditLog.node_event`) is written with a new node in its
        own transaction, or after an update.
        """
        hostname = request.hostinfo.get("Hostname") or ""
        fields["expiry"] = self._expiry_for(request, bool(fields.get("tags")), now, granted_until)
        fields["node_key"] = request.node_key
        if request.hostinfo:
            fields["hostinfo"] = request.hostinfo
        existing = self.state.by_machine_key(machine_key)
        if existing is not None:
            if hostname and hostname != existing.hostname:
                fields["hostname"] = hostname
                if existing.given_name_auto:
                    fields["given_name"] = self.state.free_name(hostname, exclude=existing.id)
            node = await self.state.update_node(existing.id, **fields)
            if audit_event is not None:
                await self.audit.add(audit_event(node))
            self.state.runtime.set_cap(node.id, request.version)
            if await self.policy.auto_approve(node.id):
                node = self.state.get(node.id)
            self.log.info("re-registered node {name} (id {id}) by {method}", name=node.given_name, id=node.id,
                          method=fields.get("register_method", "?"))
            self.notifier.node_changed(node.id)
            return node
        node = await self.state.create_node(machine_key=machine_key, hostname=hostname, audit_event=audit_event,
                                           **fields)
        self.state.runtime.set_cap(node.id, request.version)
        self.log.info("registered node {name} (id {id}, {ips}) by {method}", name=node.given_name, id=node.id,
                      ips=" ".join(ip for ip in (node.ipv4, node.ipv6) if ip), method=fields.get("register_method", "?"))
        if await self.policy.auto_approve(node.id):
            node = self.state.get(node.id)
        self.notifier.node_added(node.id)
        return node

    async def _start_interactive(self, machine_key: str, request: RegisterRequest, source: str) -> dict:
        details = registration_details(request)
        try:
            row = await self.auth_requests.open(
                "register", source, machine_key=machine_key, node_key=request.node_key,
                hostname=details["Hostinfo"].get("Hostname", ""), details=details,
            )
        except LimitReached as e:
            self.log.debug("interactive registration from {source} refused: {reason}", source=source, reason=str(e))
            return {"Error": str(e)}
        return {"AuthURL": self.auth_url(row.auth_id)}

    async def _followup(self, machine_key: str, request: RegisterRequest, source: str) -> dict:
        auth_id = request.followup.rstrip("/").rpartition("/")[2]
        row = await self.auth_requests.get(auth_id)
        if (
            row is None
            or row.kind != "register"
            or row.machine_key != machine_key
            or row.state_at(self.state.now()) == "expired"
        ):
            return await self._start_interactive(machine_key, request, source)
        try:
            row = await self.auth_requests.wait(row, self.followup_timeout)
        except CancelledError:
            # The client went away: nobody reads this answer.
            return {"AuthURL": self.auth_url(auth_id)}
        return await self._answer(row, machine_key, request, source)

    async def _answer(self, row: AuthRequest, machine_key: str, request: RegisterRequest, source: str) -> dict:
        """The response for a Followup on ``row`` as it stands now."""
        state = row.state_at(self.state.now())
        if state == "rejected":
            return {"Error": row.reason or "auth request rejected"}
        if state == "expired":
            return await self._start_interactive(machine_key, request, source)
        if state == "approved" and row.node_id is not None:
            node = self.state.nodes.get(row.node_id)
            if node is None:
                # Registered by another instance whose change has not arrived here yet.
                try:
                    node = await self.state.db.nodes.get(row.node_id)
                except NotFound:
                    return await self._start_interactive(machine_key, request, source)
            if node.user_id is not None:
                await self.state.user(node.user_id)
            return await self._success(node)
        return {"AuthURL": self.auth_url(row.auth_id)}  # still pending: the client asks again

    # -- admin side --------------------------------------------------------

    async def get_pending(self, auth_id: str) -> AuthRequest | None:
        """The open interactive registration with this auth id, or ``None``."""
        row = await self.auth_requests.get(auth_id)
        if row is None or row.kind != "register" or row.state_at(self.state.now()) != "pending":
            return None
        return row

    async def complete(self, auth_id: str, user_name: str, granted_until: datetime | None = None,
                       register_method: str = "cli"):
        """``headscale auth register``: register the pending machine to ``user_name``; return the ``Node``.

        Works for a registration opened on any instance sharing the database.
        ``granted_until`` (an OIDC sign-in with ``oidc.use_expiry_from_token``:
        the ID token's ``exp``) replaces ``node.expiry`` as the node's expiry.
        ``register_method`` is stored on the node (``cli``, or ``oidc`` when a
        sign-in finished it), as Headscale's ``registerMethod`` shows it.

        :raises NotFound: no open registration with this id, or no such user.
        :raises Conflict: it was already finished.
        :raises TagsRefused: the user may not own the requested tags (the
            registration is rejected and its client told why).
        """
        row = await self.auth_requests.pending(auth_id, kind="register")
        user = await self.state.db.users.get_by_name(user_name)
        self.state.users[user.id] = user
        request = stored_register_request(row)
        try:
            tags = self._requested_tags(request, user.id)
        except TagsRefused as e:
            await self.auth_requests.reject(auth_id, reason=str(e))
            raise
        await self.auth_requests.claim(auth_id, user.id)
        try:
            node = await self._upsert(
                row.machine_key,
                request,
                self.state.now(),
                user_id=user.id,
                tags=tags,
                auth_key_id=None,
                ephemeral=request.ephemeral,
                register_method=register_method,
                granted_until=granted_until,
            )
        except BaseException:
            # E.g. no free address: the login stays open for another attempt.
            await self.auth_requests.unclaim(auth_id)
            raise
        await self.auth_requests.attach_node(auth_id, node.id)
        await self.audit.record("node.register", Target("node", str(node.id), node.given_name),
                                detail={"method": "interactive", "auth_id": auth_id, "user": user.name,
                                        "tags": list(node.tags), "machine_key": row.machine_key})
        return node

    async def open_debug(self, auth_id: str, hostname: str, routes: tuple[str, ...], source: str) -> AuthRequest:
        """``headscale debug create-node``: a pending registration under ``auth_id`` for a made-up
        machine (fresh random machine and node keys) called ``hostname``, which ``headscale auth
        register --auth-id`` then finishes, as Headscale's ``DebugCreateNode`` does. The node
        announces ``routes`` (already validated prefixes) once registered.

        :raises AlreadyExists: ``auth_id`` is in use.
        :raises LimitReached: too many pending registrations.
        """
        request = RegisterRequest(version=0, node_key=random_key("nodekey"), hostinfo={"Hostname": hostname})
        details = registration_details(request)
        if routes:
            details["Hostinfo"]["RoutableIPs"] = list(routes)
        return await self.auth_requests.open(
            "register", source, machine_key=random_key("mkey"), node_key=request.node_key, hostname=hostname,
            details=details, auth_id=auth_id,
        )

    async def reject(self, auth_id: str) -> AuthRequest:
        """``headscale auth reject``: refuse an open request; its waiting client is told."""
        return await self.auth_requests.reject(auth_id)

    async def approve(self, auth_id: str) -> AuthRequest:
        """``headscale auth approve``: approve an open SSH check (``Conflict`` for a registration)."""
        return await self.auth_requests.approve(auth_id)

    async def expire_pending(self) -> int:
        """Delete auth requests past their lifetime; return how many."""
        return await self.auth_requests.expire()

    def stop(self) -> None:
        """Cancel every held Followup request (service shutdown)."""
        self.auth_requests.stop()
