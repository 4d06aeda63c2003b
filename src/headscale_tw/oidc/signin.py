# -*- test-case-name: tests.oidc.test_signin -*-
"""
Registering a machine to the person who signs in: the three steps behind the web pages.

1. :meth:`SignIn.begin` (``GET /register/<auth_id>``): the registration must be
   pending; a :class:`~headscale_tw.oidc.login.LoginRecord` is kept and the
   provider's URL returned.
2. :meth:`SignIn.callback` (``GET /oidc/callback``): the record is taken by
   ``state`` (so a callback works once), the login finished and checked
   (:meth:`~headscale_tw.oidc.client.RelyingParty.finish_login`), and a
   :class:`Confirmation` kept under a fresh random token: nothing is registered
   yet, the person is asked first (as Headscale 0.29 does), so a link to somebody
   else's registration cannot silently add a machine to their account.
3. :meth:`SignIn.confirm` (``POST /register/confirm/<auth_id>``): the token is
   taken (once), the user found by ``(issuer, subject)`` or created
   (:meth:`IUserStore.sign_in`, which also replaces the user's IdP groups with
   this login's), then the registration finished for that user through the
   ``finish_registration`` callable the builder passes in (with the ID token's
   expiry when ``oidc.use_expiry_from_token`` is set).

Records and confirmations are kept by :class:`PendingLogins` in the database
(the ``oidc_logins`` table, through the store passed in), bounded and taken at
most once: the callback and the confirmation may reach any instance on the same
database, and a replayed callback fails on every instance.
"""

from __future__ import annotations

import dataclasses
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from headscale_tw.clock import utc_now
from headscale_tw.control.audit import NO_AUDIT, Actor, AuditLog, Target, acting_as
from headscale_tw.interfaces import IOIDCLoginStore, IUserStore
from headscale_tw.oidc.claims import Identity, user_name_for
from headscale_tw.oidc.client import RelyingParty
from headscale_tw.oidc.login import LOGIN_LIFETIME, LoginRecord
from headscale_tw.oidc.refusals import LoginRefused, Reason

__all__ = ["MAX_PENDING", "Confirmation", "PendingLogins", "SignIn"]

MAX_PENDING = 10_000
"""At most this many started logins (and, separately, confirmations) are kept; the oldest go first."""


@dataclass(frozen=True)
class Confirmation:
    """A person who signed in, waiting to confirm that ``auth_id``'s machine becomes theirs."""

    auth_id: str
    token: str
    identity: Identity
    expires_at: datetime


def _identity_to_json(identity: Identity) -> dict[str, Any]:
    """An :class:`Identity` as JSON-able values: tuples as lists, datetimes as ISO 8601 text."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Identity):
        value = getattr(identity, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[f.name] = value
    return out


def _identity_from_json(data: Mapping[str, Any]) -> Identity:
    """The :class:`Identity` :func:`_identity_to_json` wrote (fields it does not know are ignored)."""
    known = {}
    for f in dataclasses.fields(Identity):
        if f.name in data:
            value = data[f.name]
            if isinstance(value, list):
                value = tuple(value)
            elif f.name == "token_expires_at" and isinstance(value, str):
                value = datetime.fromisoformat(value)
            known[f.name] = value
    return Identity(**known)


class PendingLogins:
    """Started logins by ``state`` and confirmations by token, in the database; each taken at most once.

    :param store: an :class:`~headscale_tw.interfaces.IOIDCLoginStore` (``db.oidc_logins``).
    :param limit: at most this many of each kind are kept; the oldest go first.
    :param login_kind: the table's kind for started logins: ``"login"`` for
        registrations, ``"ssh_check"`` for SSH check sign-ins (kept apart, so one
        never takes the other's callback).
    """

    def __init__(self, store: IOIDCLoginStore, limit: int = MAX_PENDING, login_kind: str = "login") -> None:
        self._store = store
        self._limit = limit
        self._login_kind = login_kind

    async def count(self) -> int:
        """How many started logins and confirmations are kept."""
        return int(await self._store.count())

    async def add_login(self, record: LoginRecord) -> None:
        """Keep ``record`` until its callback (or until it is the oldest of too many)."""
        await self._store.add(self._login_kind, record.state, record.auth_id, nonce=record.nonce,
                              code_verifier=record.code_verifier, pkce_method=record.pkce_method,
                              created_at=record.created_at, expires_at=record.expires_at, limit=self._limit)

    async def take_login(self, state: str) -> LoginRecord | None:
        """The login started with ``state``, removed; ``None`` when unknown or already taken."""
        row = await self._store.take(self._login_kind, state)
        if row is None:
            return None
        return LoginRecord(auth_id=row.auth_id, state=state, nonce=row.nonce, code_verifier=row.code_verifier,
                           pkce_method=row.pkce_method, created_at=row.created_at, expires_at=row.expires_at)

    async def add_confirmation(self, confirmation: Confirmation, now: datetime) -> None:
        """Keep ``confirmation`` until it is confirmed."""
        await self._store.add("confirmation", confirmation.token, confirmation.auth_id,
                              identity=_identity_to_json(confirmation.identity), created_at=now,
                              expires_at=confirmation.expires_at, limit=self._limit)

    async def take_confirmation(self, token: str) -> Confirmation | None:
        """The confirmation with ``token``, removed; ``None`` when unknown or already taken."""
        row = await self._store.take("confirmation", token)
        if row is None:
            return None
        return Confirmation(row.auth_id, token, _identity_from_json(row.identity), row.expires_at)

    async def forget_expired(self, now: datetime) -> int:
        """Drop every login and confirmation past its expiry; return how many went."""
        return int(await self._store.delete_expired(now))


class SignIn:
    """Interactive registration through the OpenID provider.

    :param relying_party: talks to the provider.
    :param users: the user store (``sign_in`` finds or creates the person's user).
    :param is_pending: whether ``auth_id`` names a registration waiting for a user (a bool, or an
        awaitable one).
    :param finish_registration: registers ``auth_id``'s machine to the given ``User``, expiring at the
        given time (``None``: ``node.expiry``).
    :param clock: the reactor's clock.
    :param pending: where started logins and confirmations are kept (:class:`PendingLogins`).
    :param use_expiry_from_token: the node expires with the ID token (``oidc.use_expiry_from_token``).
    :param audit: records each finished sign-in (``user.login``); the registration it finishes is
        recorded with the signed-in user as its actor.
    """

    log = Logger()

    def __init__(self, relying_party: RelyingParty, users: IUserStore, is_pending: Callable[[str], bool | Awaitable[bool]],
                 finish_registration: Callable[[str, Any, datetime | None], Awaitable[Any]], clock: IReactorTime,
                 pending: PendingLogins, use_expiry_from_token: bool = False, audit: AuditLog = NO_AUDIT) -> None:
        self.relying_party = relying_party
        self._users = users
        self._is_pending = is_pending
        self._finish_registration = finish_registration
        self._clock = clock
        self.pending = pending
        self._use_expiry_from_token = use_expiry_from_token
        self.audit = audit

    async def _require_pending(self, auth_id: str) -> None:
        pending = self._is_pending(auth_id)
        if inspect.isawaitable(pending):  # a registrar that keeps pending registrations in the database
            pending = await pending
        if not pending:
            raise LoginRefused(Reason.REGISTRATION_UNKNOWN, f"no pending registration {auth_id!r}")

    async def begin(self, auth_id: str) -> str:
        """Start a login for the pending registration ``auth_id``; the provider URL to redirect to."""
        await self._require_pending(auth_id)
        record, url = await self.relying_party.start_login(auth_id)
        await self.pending.add_login(record)
        return url

    async def callback(self, params: Mapping[str, str]) -> Confirmation:
        """Finish the login named by the callback's ``state``; the confirmation to show the person."""
        state = params.get("state")
        if not state:
            raise LoginRefused(Reason.MISSING_PARAMETER, "the callback has no 'state'")
        record = await self.pending.take_login(state)
        if record is None:
            raise LoginRefused(Reason.UNKNOWN_STATE, "no started login has this state (unknown, used or expired)")
        identity = await self.relying_party.finish_login(record, params)
        await self._require_pending(record.auth_id)
        now = utc_now(self._clock)
        confirmation = Confirmation(record.auth_id, secrets.token_urlsafe(32), identity, now + LOGIN_LIFETIME)
        await self.pending.add_confirmation(confirmation, now)
        self.log.info("OIDC login of {identifier} for registration {auth_id} awaits confirmation",
                      identifier=identity.provider_identifier, auth_id=record.auth_id)
        if identity.groups_dropped:
            self.log.warn("OIDC login of {identifier}: kept {kept} groups of the token, dropped {dropped}",
                          identifier=identity.provider_identifier, kept=len(identity.groups),
                          dropped=identity.groups_dropped)
        return confirmation

    async def confirm(self, auth_id: str, token: str, source: str = "") -> tuple[Any, Any]:
        """Register ``auth_id``'s machine to the person of confirmation ``token``; ``(user, node)``.

        ``source`` is the person's client address, for the audit log.
        """
        confirmation = await self.pending.take_confirmation(token)
        if confirmation is None or not hmac.compare_digest(confirmation.auth_id.encode(), auth_id.encode()):
            raise LoginRefused(Reason.UNKNOWN_STATE, "no confirmation with this token for this registration")
        now = utc_now(self._clock)
        if now >= confirmation.expires_at:
            raise LoginRefused(Reason.LOGIN_EXPIRED, "the confirmation expired")
        await self._require_pending(auth_id)
        identity = confirmation.identity
        expires_at = identity.token_expires_at if self._use_expiry_from_token else None
        if self._use_expiry_from_token and (expires_at is None or expires_at <= now):
            raise LoginRefused(Reason.LOGIN_EXPIRED, "the ID token expired before the confirmation")
        user = await self._users.sign_in(identity.provider_identifier, user_name_for(identity),
                                         email=identity.trusted_email, display_name=identity.name,
                                         profile_pic_url=identity.picture, idp_groups=identity.groups, now=now)
        actor = Actor("oidc", f"{user.name} ({identity.provider_identifier})", source)
        await self.audit.record("user.login", Target("user", str(user.id), user.name), actor=actor,
                                detail={"auth_id": auth_id})
        with acting_as(actor):
            node = await self._finish_registration(auth_id, user, expires_at)
        self.log.info("registration {auth_id} finished for user {user} ({identifier})",
                      auth_id=auth_id, user=user.name, identifier=identity.provider_identifier)
        return user, node

    async def forget_expired(self) -> int:
        """Drop expired logins and confirmations (a periodic job); how many went."""
        return await self.pending.forget_expired(utc_now(self._clock))
