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
   (:meth:`IUserStore.sign_in`), then the registration finished for that user
   through the ``finish_registration`` callable the builder passes in.

Records and confirmations live in :class:`PendingLogins`, in memory and bounded:
a callback must reach the instance that started the login (the database-backed
version, for several instances, is a later step).
"""

from __future__ import annotations

import hmac
import inspect
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from headscale_tw.clock import utc_now
from headscale_tw.control.audit import NO_AUDIT, Actor, AuditLog, Target, acting_as
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


class PendingLogins:
    """Started logins by ``state`` and confirmations by token; each taken at most once."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self._limit = limit
        self._logins: OrderedDict[str, LoginRecord] = OrderedDict()
        self._confirmations: OrderedDict[str, Confirmation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._logins) + len(self._confirmations)

    def _bounded(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        while len(table) > self._limit:
            table.popitem(last=False)

    def add_login(self, record: LoginRecord) -> None:
        """Keep ``record`` until its callback (or until it is the oldest of too many)."""
        self._bounded(self._logins, record.state, record)

    def take_login(self, state: str) -> LoginRecord | None:
        """The login started with ``state``, removed; ``None`` when unknown or already taken."""
        return self._logins.pop(state, None)

    def add_confirmation(self, confirmation: Confirmation) -> None:
        """Keep ``confirmation`` until it is confirmed."""
        self._bounded(self._confirmations, confirmation.token, confirmation)

    def take_confirmation(self, token: str) -> Confirmation | None:
        """The confirmation with ``token``, removed; ``None`` when unknown or already taken."""
        return self._confirmations.pop(token, None)

    def forget_expired(self, now: datetime) -> int:
        """Drop every login and confirmation past its expiry; return how many went."""
        gone = [s for s, r in self._logins.items() if r.expires_at <= now]
        for state in gone:
            del self._logins[state]
        stale = [t for t, c in self._confirmations.items() if c.expires_at <= now]
        for token in stale:
            del self._confirmations[token]
        return len(gone) + len(stale)


class SignIn:
    """Interactive registration through the OpenID provider.

    :param relying_party: talks to the provider.
    :param users: the user store (``sign_in`` finds or creates the person's user).
    :param is_pending: whether ``auth_id`` names a registration waiting for a user (a bool, or an
        awaitable one).
    :param finish_registration: registers ``auth_id``'s machine to the given ``User``.
    :param clock: the reactor's clock.
    :param audit: records each finished sign-in (``user.login``); the registration it finishes is
        recorded with the signed-in user as its actor.
    """

    log = Logger()

    def __init__(self, relying_party: RelyingParty, users: Any, is_pending: Callable[[str], bool | Awaitable[bool]],
                 finish_registration: Callable[[str, Any], Awaitable[Any]], clock: IReactorTime,
                 pending: PendingLogins | None = None, audit: AuditLog = NO_AUDIT) -> None:
        self.relying_party = relying_party
        self._users = users
        self._is_pending = is_pending
        self._finish_registration = finish_registration
        self._clock = clock
        self.pending = pending if pending is not None else PendingLogins()
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
        self.pending.add_login(record)
        return url

    async def callback(self, params: Mapping[str, str]) -> Confirmation:
        """Finish the login named by the callback's ``state``; the confirmation to show the person."""
        state = params.get("state")
        if not state:
            raise LoginRefused(Reason.MISSING_PARAMETER, "the callback has no 'state'")
        record = self.pending.take_login(state)
        if record is None:
            raise LoginRefused(Reason.UNKNOWN_STATE, "no started login has this state (unknown, used or expired)")
        identity = await self.relying_party.finish_login(record, params)
        await self._require_pending(record.auth_id)
        confirmation = Confirmation(record.auth_id, secrets.token_urlsafe(32), identity,
                                    utc_now(self._clock) + LOGIN_LIFETIME)
        self.pending.add_confirmation(confirmation)
        self.log.info("OIDC login of {identifier} for registration {auth_id} awaits confirmation",
                      identifier=identity.provider_identifier, auth_id=record.auth_id)
        return confirmation

    async def confirm(self, auth_id: str, token: str, source: str = "") -> tuple[Any, Any]:
        """Register ``auth_id``'s machine to the person of confirmation ``token``; ``(user, node)``.

        ``source`` is the person's client address, for the audit log.
        """
        confirmation = self.pending.take_confirmation(token)
        if confirmation is None or not hmac.compare_digest(confirmation.auth_id.encode(), auth_id.encode()):
            raise LoginRefused(Reason.UNKNOWN_STATE, "no confirmation with this token for this registration")
        now = utc_now(self._clock)
        if now >= confirmation.expires_at:
            raise LoginRefused(Reason.LOGIN_EXPIRED, "the confirmation expired")
        await self._require_pending(auth_id)
        identity = confirmation.identity
        user = await self._users.sign_in(identity.provider_identifier, user_name_for(identity),
                                         email=identity.trusted_email, display_name=identity.name,
                                         profile_pic_url=identity.picture, now=now)
        actor = Actor("oidc", f"{user.name} ({identity.provider_identifier})", source)
        await self.audit.record("user.login", Target("user", str(user.id), user.name), actor=actor,
                                detail={"auth_id": auth_id})
        with acting_as(actor):
            node = await self._finish_registration(auth_id, user)
        self.log.info("registration {auth_id} finished for user {user} ({identifier})",
                      auth_id=auth_id, user=user.name, identifier=identity.provider_identifier)
        return user, node

    def forget_expired(self) -> int:
        """Drop expired logins and confirmations (a periodic job); how many went."""
        return self.pending.forget_expired(utc_now(self._clock))
