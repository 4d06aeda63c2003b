# -*- test-case-name: tests.control.test_admin_services,tests.web.test_admin_api -*-
"""
User operations for the admin API and CLI: list, find, create, rename, delete.

:class:`UserAdmin` reaches the database through the user store only. With a
control plane (``state`` and ``notifier`` given) a rename or delete also
updates the plane's cached copy of the user and tells the sessions that can
see that user's nodes (their peer entries show the login name, and the policy
may name the user); nobody else is sent anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from twisted.logger import Logger

from headscale_tw.control.audit import NO_AUDIT, AuditLog, Target
from headscale_tw.control.state import ControlState
from headscale_tw.errors import NotFound, UserHasNodes
from headscale_tw.interfaces import INodeNotifier, IUserStore
from headscale_tw.storage.models import User

__all__ = ["UserAdmin", "MAX_STORED_ID", "quoted"]

#: Row ids are signed 64-bit integers in SQLite and PostgreSQL: a larger
#: (still valid uint64) id can name no row, so it is "not found" without a query.
MAX_STORED_ID = 2**63 - 1

#: At most this many characters of a caller's value are repeated in a message.
_SHOWN = 64


def quoted(value: object) -> str:
    """``value`` as a JSON string for a message, cut to a few dozen characters."""
    text = str(value)
    if len(text) > _SHOWN:
        text = text[:_SHOWN] + "..."
    return json.dumps(text)


class UserAdmin:
    """List, find, create, rename and delete users.

    :param users: the user store (``IUserStore``).
    :param now: returns the current time as an aware UTC ``datetime``.
    :param state: the control plane's cache, or ``None`` without a plane.
    :param notifier: the plane's notifier, or ``None`` without a plane.
    :param audit: records every change (``user.create``, ``user.rename``, ``user.delete``).
    """

    log = Logger()

    def __init__(self, users: IUserStore, now: Callable[[], datetime], state: ControlState | None = None,
                 notifier: INodeNotifier | None = None, audit: AuditLog = NO_AUDIT) -> None:
        self.users = users
        self.now = now
        self.state = state
        self.notifier = notifier
        self.audit = audit

    async def list(self, user_id: int | None = None, name: str | None = None, email: str | None = None) -> list[User]:
        """The users matching one filter (name, then email, then id), or all; ordered by id."""
        if name:
            found = await self._maybe(self.users.get_by_name(name))
            users = [found] if found is not None else []
        elif email:
            users = [u for u in await self.users.list() if u.email == email]
        elif user_id:
            found = await self.get(user_id)
            users = [found] if found is not None else []
        else:
            users = await self.users.list()
        return sorted(users, key=lambda u: u.id)

    @staticmethod
    async def _maybe(lookup) -> User | None:
        try:
            return await lookup
        except NotFound:
            return None

    async def get(self, user_id: int) -> User | None:
        """The user with this id, or ``None``."""
        if user_id > MAX_STORED_ID:
            return None
        return await self._maybe(self.users.get(user_id))

    async def by_id(self, user_id: int) -> User:
        """The user with this id; ``NotFound`` naming it."""
        user = await self.get(user_id)
        if user is None:
            raise NotFound(f"user {user_id} does not exist")
        return user

    async def find(self, ident: str | int) -> User:
        """A user by id (ASCII digits) or by name; ``NotFound`` naming what was asked for."""
        text = str(ident)
        if text.isascii() and text.isdigit():
            user = await self.get(int(text))
        else:
            user = await self._maybe(self.users.get_by_name(text))
        if user is None:
            raise NotFound(f"user {quoted(text)} not found")
        return user

    async def create(self, name: str, display_name: str = "", email: str = "") -> User:
        """Create a user; ``AlreadyExists`` if the name is taken."""
        user = await self.users.create(name, display_name=display_name, email=email, now=self.now())
        if self.state is not None:
            self.state.remember_user(user)
        self.log.info("created user {name} ({id})", name=user.name, id=user.id)
        await self.audit.record("user.create", Target("user", str(user.id), user.name))
        return user

    async def rename(self, user_id: int, new_name: str) -> User:
        """Rename a user; the sessions that see its nodes get their new entries."""
        if user_id > MAX_STORED_ID:
            raise NotFound(f"user {user_id} does not exist")
        user = await self.users.rename(user_id, new_name, now=self.now())
        if self.state is not None and self.notifier is not None:
            await self.state.refresh_user(user_id)
            self.notifier.user_changed(user_id)
        await self.audit.record("user.rename", Target("user", str(user.id), user.name),
                                detail={"new_name": new_name})
        return user

    async def delete(self, user_id: int) -> User:
        """Delete a user and its pre-auth keys; ``UserHasNodes`` while it owns nodes.

        A user that owns no node is visible to no session, so none is sent a
        full map: the plane forgets the user and the policy is re-resolved for
        the user's (no longer existing) nodes only.
        """
        user = await self.by_id(user_id)
        try:
            await self.users.delete(user_id)
        except UserHasNodes:
            raise UserHasNodes(f"user {quoted(user.name)} still owns nodes; delete or move them first") from None
        self.log.info("deleted user {name} ({id})", name=user.name, id=user_id)
        if self.state is not None and self.notifier is not None:
            self.state.forget_user(user_id)
            self.notifier.user_changed(user_id)
        await self.audit.record("user.delete", Target("user", str(user.id), user.name))
        return user
