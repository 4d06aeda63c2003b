# -*- test-case-name: tests.storage.test_stores -*-
"""The ``users`` table: :class:`UserStore`."""

from __future__ import annotations

import hashlib
from datetime import datetime

from zope.interface import implementer

from headscale_tw.errors import AlreadyExists, NotFound, UserHasNodes
from headscale_tw.interfaces import IUserStore
from headscale_tw.storage.database import Txn, UniqueViolation
from headscale_tw.storage.models import User
from headscale_tw.storage.stores._common import StoreBase, dump_json, json_list, to_datetime

__all__ = ["UserStore"]

_COLUMNS = (
    "id, name, display_name, email, provider, provider_identifier, profile_pic_url, created_at, updated_at,"
    " idp_groups"
)


def _row(row: tuple) -> User:
    return User(
        id=int(row[0]),
        name=row[1],
        display_name=row[2],
        email=row[3],
        provider=row[4],
        provider_identifier=row[5],
        profile_pic_url=row[6],
        created_at=to_datetime(row[7]),
        updated_at=to_datetime(row[8]),
        idp_groups=json_list(row[9]),
    )


def _taken(error: UniqueViolation, name: str, provider_identifier: str) -> AlreadyExists:
    if error.field == "provider_identifier":
        return AlreadyExists(f"a user with provider identifier {provider_identifier!r} already exists")
    return AlreadyExists(f"a user named {name!r} already exists (user name must be unique)")


def get_user_txn(txn: Txn, user_id: int) -> User:
    """The ``User`` with this id, or ``NotFound``."""
    row = txn.query_one(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NotFound(f"user {user_id} does not exist")
    return _row(row)


def _insert_user_txn(txn: Txn, name: str, display_name: str, email: str, provider: str,
                     provider_identifier: str, profile_pic_url: str, when: datetime,
                     idp_groups: tuple[str, ...] = ()) -> User:
    """Insert one user row and return it; ``AlreadyExists`` naming the taken name or identifier."""
    try:
        user_id = txn.insert(
            "INSERT INTO users (name, display_name, email, provider, provider_identifier, profile_pic_url,"
            " created_at, updated_at, idp_groups) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, display_name, email, provider, provider_identifier, profile_pic_url, when, when,
             dump_json(idp_groups)),
        )
    except UniqueViolation as e:
        raise _taken(e, name, provider_identifier) from None
    return get_user_txn(txn, user_id)


@implementer(IUserStore)
class UserStore(StoreBase):
    """Users; names are unique."""

    async def create(self, name, display_name="", email="", provider="", provider_identifier="",
                     now: datetime | None = None) -> User:
        """Insert a user and return it; ``AlreadyExists`` if the name is taken."""
        when = self._now(now)

        def create_user_txn(txn: Txn) -> User:
            return _insert_user_txn(txn, name, display_name, email, provider, provider_identifier, "", when)

        return await self._pool.run_interaction("create_user", create_user_txn)

    async def sign_in(self, provider_identifier, name, email="", display_name="", profile_pic_url="",
                      idp_groups=None, now: datetime | None = None) -> User:
        """The user an OpenID provider identifies as ``provider_identifier``, created or kept current.

        An existing user keeps its name; its email, display name and picture are
        replaced by this sign-in's, and so are its IdP groups when ``idp_groups``
        is given (the caller bounds them; ``None`` keeps the stored ones, for a
        sign-in that does not stand for the person's groups). A new user (``provider = 'oidc'``) gets ``name``, or ``name``
        plus ``-`` and 6 hex digits of the identifier's SHA-256 when another user
        already has that name (a person signing in never takes over an existing
        user by name). ``AlreadyExists`` only if both names are taken.
        """
        when = self._now(now)

        def sign_in_user_txn(txn: Txn) -> User:
            row = txn.query_one(f"SELECT {_COLUMNS} FROM users WHERE provider_identifier = ?",
                                (provider_identifier,))
            if row is not None:
                user = _row(row)
                txn.execute("UPDATE users SET email = ?, display_name = ?, profile_pic_url = ?, updated_at = ?"
                            " WHERE id = ?", (email, display_name, profile_pic_url, when, user.id))
                if idp_groups is not None:
                    txn.execute("UPDATE users SET idp_groups = ? WHERE id = ?", (dump_json(tuple(idp_groups)), user.id))
                return get_user_txn(txn, user.id)
            chosen = name
            if txn.query_one("SELECT id FROM users WHERE name = ?", (chosen,)) is not None:
                chosen = f"{name}-{hashlib.sha256(provider_identifier.encode()).hexdigest()[:6]}"
            return _insert_user_txn(txn, chosen, display_name, email, "oidc", provider_identifier, profile_pic_url,
                                    when, tuple(idp_groups or ()))

        return await self._pool.run_interaction("sign_in_user", sign_in_user_txn)

    async def get(self, user_id) -> User:
        """The ``User`` with this id, or ``NotFound``."""
        return await self._pool.run_interaction("get_user", get_user_txn, user_id)

    async def get_by_name(self, name) -> User:
        """The ``User`` with this name, or ``NotFound``."""

        def get_user_by_name_txn(txn: Txn) -> User:
            row = txn.query_one(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,))
            if row is None:
                raise NotFound(f"user {name!r} does not exist")
            return _row(row)

        return await self._pool.run_interaction("get_user_by_name", get_user_by_name_txn)

    async def list(self) -> list[User]:
        """Every ``User``, ordered by id."""

        def list_users_txn(txn: Txn) -> list[User]:
            return [_row(r) for r in txn.query(f"SELECT {_COLUMNS} FROM users ORDER BY id")]

        return await self._pool.run_interaction("list_users", list_users_txn)

    async def rename(self, user_id, new_name, now: datetime | None = None) -> User:
        """Rename the user and return it; ``NotFound`` / ``AlreadyExists``."""
        when = self._now(now)

        def rename_user_txn(txn: Txn) -> User:
            get_user_txn(txn, user_id)
            try:
                txn.execute("UPDATE users SET name = ?, updated_at = ? WHERE id = ?", (new_name, when, user_id))
            except UniqueViolation as e:
                raise _taken(e, new_name, "") from None
            return get_user_txn(txn, user_id)

        return await self._pool.run_interaction("rename_user", rename_user_txn)

    async def delete(self, user_id) -> None:
        """Delete the user and its pre-auth keys; ``NotFound``; ``UserHasNodes`` if it owns nodes."""

        def delete_user_txn(txn: Txn) -> None:
            user = get_user_txn(txn, user_id)
            (count,) = txn.query_row("SELECT COUNT(*) FROM nodes WHERE user_id = ?", (user_id,))
            if count:
                raise UserHasNodes(
                    f"user {user.name!r} still owns {count} node(s); delete or move them first"
                )
            txn.execute("DELETE FROM pre_auth_keys WHERE user_id = ?", (user_id,))
            txn.execute("DELETE FROM users WHERE id = ?", (user_id,))

        await self._pool.run_interaction("delete_user", delete_user_txn)
