# -*- test-case-name: tests.oidc.test_ssh_check -*-
"""
SSH check mode with an OpenID provider: the person proves who they are again.

1. :meth:`SSHCheckSignIn.begin` (``GET /auth/<auth_id>``): the SSH check must be
   pending; a :class:`~headscale_tw.oidc.login.LoginRecord` is kept (in the
   database through its own :class:`~headscale_tw.oidc.signin.PendingLogins`,
   kind ``ssh_check``, apart from registrations, so the callback may land on any
   instance) and the provider's URL returned.
2. :meth:`SSHCheckSignIn.callback` (``GET /oidc/callback``, the one redirect URI
   providers know): when ``state`` names one of its logins, the login is
   finished and checked like a registration's (state, nonce, PKCE, ID token,
   ``allowed_*``), the person's user found or created by ``(issuer, subject)``
   and kept current, and the check approved if that user owns the source node
   (:meth:`~headscale_tw.control.ssh_check.SSHChecks.approve_as`). Unlike a
   registration there is no confirmation step: approving a check gives nobody
   a machine, and only the source node's owner can approve (as Headscale 0.29).

Refusals are :class:`~headscale_tw.oidc.refusals.LoginRefused` with
``CHECK_UNKNOWN`` or ``NOT_SOURCE_OWNER`` (besides the sign-in's own reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from headscale_tw.clock import utc_now
from headscale_tw.control.audit import NO_AUDIT, Actor, AuditLog, Target
from headscale_tw.control.ssh_check import NotSourceOwner
from headscale_tw.errors import Conflict, NotFound
from headscale_tw.interfaces import IUserStore
from headscale_tw.oidc.claims import user_name_for
from headscale_tw.oidc.client import RelyingParty
from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.oidc.signin import PendingLogins

__all__ = ["SSHCheckSignIn"]


class SSHCheckSignIn:
    """Approves SSH checks for the person who signs in at the provider.

    :param relying_party: talks to the provider (shared with registration sign-in).
    :param users: the user store (``sign_in``).
    :param checks: the :class:`~headscale_tw.control.ssh_check.SSHChecks` (``pending``, ``approve_as``).
    :param clock: the reactor's clock.
    :param pending: where started sign-ins are kept (``PendingLogins(db.oidc_logins, login_kind="ssh_check")``).
    :param audit: records each approval (``auth.approve`` by the signed-in person).
    """

    log = Logger()

    def __init__(self, relying_party: RelyingParty, users: IUserStore, checks: Any, clock: IReactorTime,
                 pending: PendingLogins, audit: AuditLog = NO_AUDIT) -> None:
        self.relying_party = relying_party
        self.audit = audit
        self._users = users
        self._checks = checks
        self._clock = clock
        self.pending = pending

    async def _require_pending(self, auth_id: str) -> Any:
        row = await self._checks.pending(auth_id)
        if row is None:
            raise LoginRefused(Reason.CHECK_UNKNOWN, f"no pending SSH check {auth_id!r}")
        return row

    async def begin(self, auth_id: str) -> str:
        """Start a sign-in for the pending SSH check ``auth_id``; the provider URL to redirect to."""
        await self._require_pending(auth_id)
        record, url = await self.relying_party.start_login(auth_id)
        await self.pending.add_login(record)
        return url

    async def callback(self, params: Mapping[str, str]) -> tuple[Any, Any] | None:
        """Finish the sign-in named by ``state`` and approve its check: ``(user, auth request)``.

        ``None`` when ``state`` is not one of the SSH check sign-ins (a registration's callback).
        """
        state = params.get("state")
        record = await self.pending.take_login(state) if state else None
        if record is None:
            return None
        identity = await self.relying_party.finish_login(record, params)
        await self._require_pending(record.auth_id)
        user = await self._users.sign_in(identity.provider_identifier, user_name_for(identity),
                                         email=identity.trusted_email, display_name=identity.name,
                                         profile_pic_url=identity.picture, now=utc_now(self._clock))
        try:
            row = await self._checks.approve_as(record.auth_id, user.id)
        except NotSourceOwner as e:
            raise LoginRefused(Reason.NOT_SOURCE_OWNER, str(e)) from None
        except (NotFound, Conflict) as e:
            raise LoginRefused(Reason.CHECK_UNKNOWN, str(e)) from None
        await self.audit.record("auth.approve", Target("auth_request", record.auth_id),
                                actor=Actor("oidc", f"{user.name} ({identity.provider_identifier})"),
                                detail={"kind": "ssh_check"})
        self.log.info("SSH check {auth_id} approved by {user} ({identifier}) at the provider",
                      auth_id=record.auth_id, user=user.name, identifier=identity.provider_identifier)
        return user, row

    async def forget_expired(self) -> int:
        """Drop expired sign-ins; how many went (the store's sweep covers every kind)."""
        return await self.pending.forget_expired(utc_now(self._clock))
