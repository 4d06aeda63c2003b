# -*- test-case-name: tests.control.test_admin_services,tests.web.test_admin_api -*-
"""
Pre-auth key and API key operations for the admin API and CLI.

Keys are stored as a prefix and a keyed hash of the secret (see
:mod:`headscale_tw.secrets`); the full key text exists only in the answer to
the request that created it. Both services share one :class:`Pepper`, the
server's hashing key, read from the database once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime

import attrs
from twisted.logger import Logger

from headscale_tw import secrets
from headscale_tw.control.audit import NO_AUDIT, AuditLog, Target
from headscale_tw.control.users import MAX_STORED_ID, UserAdmin, quoted
from headscale_tw.errors import Expired, InvalidInput, NotFound, Unauthenticated
from headscale_tw.interfaces import IApiKeyStore, IPreAuthKeyStore, IServerStateStore
from headscale_tw.storage.models import ApiKey, PreAuthKey, User
from headscale_tw.timestamps import format_timestamp

__all__ = ["Pepper", "PreAuthKeyAdmin", "ApiKeyAdmin", "OwnedPreAuthKey", "NewPreAuthKey"]


class Pepper:
    """The server's key-hashing pepper from the server-state store, read once and then cached."""

    def __init__(self, server_state: IServerStateStore) -> None:
        self.server_state = server_state
        self._value: bytes | None = None

    async def get(self) -> bytes:
        """The pepper (created race-safely on first use)."""
        if self._value is None:
            self._value = await secrets.get_pepper(self.server_state)
        return self._value


@attrs.frozen
class OwnedPreAuthKey:
    """A stored pre-auth key with the user that owns it (``None`` for a tags-only key)."""

    key: PreAuthKey
    user: User | None


@attrs.frozen
class NewPreAuthKey:
    """A key just created: the stored row, its owner, and the full key text (shown once)."""

    key: PreAuthKey
    user: User | None
    full_text: str


def _check_future(expiration: datetime | None, now: datetime) -> None:
    if expiration is not None and expiration <= now:
        raise InvalidInput(f"expiration {format_timestamp(expiration)} is in the past")


class PreAuthKeyAdmin:
    """List, create, expire and delete pre-auth keys.

    :param keys: the pre-auth key store.
    :param users: the :class:`UserAdmin` (owners are looked up through it).
    :param pepper: the shared :class:`Pepper`.
    :param now: returns the current time as an aware UTC ``datetime``.
    """

    log = Logger()

    def __init__(self, keys: IPreAuthKeyStore, users: UserAdmin, pepper: Pepper, now: Callable[[], datetime],
                 audit: AuditLog = NO_AUDIT) -> None:
        self.keys = keys
        self.users = users
        self.pepper = pepper
        self.now = now
        self.audit = audit

    async def list(self, user_id: int | None = None) -> list[OwnedPreAuthKey]:
        """Every key (of one user if given) with its owner, ordered by id."""
        if user_id is not None and user_id > MAX_STORED_ID:
            return []
        keys = await self.keys.list(user_id) if user_id else await self.keys.list()
        owners = {u.id: u for u in await self.users.list()}
        return [OwnedPreAuthKey(k, owners.get(k.user_id) if k.user_id is not None else None)
                for k in sorted(keys, key=lambda k: k.id)]

    async def create(self, user_id: int | None, *, reusable: bool = False, ephemeral: bool = False,
                     expiration: datetime | None = None, tags: Iterable[str] = ()) -> NewPreAuthKey:
        """Create a key for a user, or for tags only; ``NotFound`` for an unknown user."""
        tags = tuple(dict.fromkeys(tags))
        _check_future(expiration, self.now())
        if user_id is None and not tags:
            raise InvalidInput("a pre-auth key needs a user or at least one tag")
        user = await self.users.by_id(user_id) if user_id is not None else None
        full, prefix, secret = secrets.generate_key("auth")
        key_hash = secrets.hash_secret(secret, await self.pepper.get())
        row = await self.keys.create(user_id, prefix, key_hash, reusable, ephemeral, tags, expiration, now=self.now())
        self.log.info("created pre-auth key {id} (prefix {prefix}) for {owner}", id=row.id, prefix=prefix,
                      owner=user.name if user else ",".join(tags))
        await self.audit.record("preauth_key.create", _preauth_target(row), detail={
            "user": user.name if user else None, "reusable": reusable, "ephemeral": ephemeral, "tags": list(tags),
            "expiration": format_timestamp(expiration) if expiration else None})
        return NewPreAuthKey(row, user, full)

    async def _get(self, key_id: int) -> PreAuthKey:
        if key_id > MAX_STORED_ID:
            raise NotFound(f"pre-auth key {key_id} does not exist")
        return await self.keys.get(key_id)

    async def expire(self, key_id: int) -> PreAuthKey:
        """Expire a key now; ``Expired`` if it already is."""
        key = await self._get(key_id)
        now = self.now()
        if key.expiration is not None and key.expiration <= now:
            raise Expired(f"pre-auth key {key_id} is already expired")
        expired = await self.keys.expire(key_id, now)
        await self.audit.record("preauth_key.expire", _preauth_target(expired))
        return expired

    async def delete(self, key_id: int) -> None:
        """Delete a key (nodes registered with it stay); ``NotFound``."""
        key = await self._get(key_id)
        await self.keys.delete(key_id)
        await self.audit.record("preauth_key.delete", _preauth_target(key))


def _preauth_target(key: PreAuthKey) -> Target:
    return Target("preauth_key", str(key.id), f"hskey-auth-{key.prefix}")


def _apikey_target(key: ApiKey) -> Target:
    return Target("api_key", str(key.id), f"hskey-api-{key.prefix}")


def _bare_prefix(prefix: str) -> str:
    """Accept a bare prefix, the listed ``hskey-api-<prefix>-***`` form, or a whole key."""
    m = re.fullmatch(r"hskey-api-([A-Za-z0-9]+)(?:-.*)?", prefix, re.ASCII | re.DOTALL)
    return m.group(1) if m else prefix


class ApiKeyAdmin:
    """List, create, expire, delete and check API keys.

    :param keys: the API key store.
    :param pepper: the shared :class:`Pepper`.
    :param now: returns the current time as an aware UTC ``datetime``.
    """

    log = Logger()

    def __init__(self, keys: IApiKeyStore, pepper: Pepper, now: Callable[[], datetime], audit: AuditLog = NO_AUDIT) -> None:
        self.keys = keys
        self.pepper = pepper
        self.now = now
        self.audit = audit

    async def list(self) -> list[ApiKey]:
        """Every API key, ordered by id."""
        return sorted(await self.keys.list(), key=lambda k: k.id)

    async def create(self, expiration: datetime | None = None) -> str:
        """Create a key; return its full text (the only time it is shown)."""
        _check_future(expiration, self.now())
        full, prefix, secret = secrets.generate_key("api")
        key_hash = secrets.hash_secret(secret, await self.pepper.get())
        row = await self.keys.create(prefix, key_hash, expiration, now=self.now())
        self.log.info("created API key {id} (prefix {prefix})", id=row.id, prefix=prefix)
        await self.audit.record("api_key.create", _apikey_target(row),
                                detail={"expiration": format_timestamp(expiration) if expiration else None})
        return full

    async def find(self, key_id: int | None = None, prefix: str | None = None) -> ApiKey:
        """The key with this id or this prefix (exactly one of them); ``NotFound``."""
        if bool(key_id) == bool(prefix):
            raise InvalidInput("give exactly one of id and prefix")
        if prefix:
            row = await self.keys.get_by_prefix(_bare_prefix(prefix))
            if row is None:
                raise NotFound(f"API key with prefix {quoted(prefix)} not found")
            return row
        for row in await self.keys.list():
            if row.id == key_id:
                return row
        raise NotFound(f"API key {key_id} not found")

    async def expire(self, key_id: int | None = None, prefix: str | None = None) -> ApiKey:
        """Expire a key now; ``Expired`` if it already is."""
        row = await self.find(key_id, prefix)
        now = self.now()
        if row.expiration is not None and row.expiration <= now:
            raise Expired(f"API key {row.id} is already expired")
        expired = await self.keys.expire(row.id, now)
        await self.audit.record("api_key.expire", _apikey_target(expired))
        return expired

    async def delete(self, key_id: int | None = None, prefix: str | None = None) -> None:
        """Delete a key; ``NotFound``."""
        row = await self.find(key_id, prefix)
        await self.keys.delete(row.id)
        await self.audit.record("api_key.delete", _apikey_target(row))

    async def authenticate(self, token: str) -> ApiKey:
        """The stored key ``token`` is the text of, after recording its use; ``Unauthenticated`` otherwise.

        The secret never appears in a message or a log event.
        """
        try:
            kind, prefix, secret = secrets.parse_key(token)
        except InvalidInput:
            raise Unauthenticated("invalid API key") from None
        if kind != "api":
            raise Unauthenticated("invalid API key (this is not an API key)")
        row = await self.keys.get_by_prefix(prefix)
        try:
            valid = row is not None and secrets.verify_secret(secret, row.key_hash, await self.pepper.get())
        except secrets.BcryptUnavailable as e:
            raise Unauthenticated(str(e)) from None
        if not valid:
            raise Unauthenticated("invalid API key")
        now = self.now()
        if row.expiration is not None and row.expiration <= now:
            raise Unauthenticated("API key expired")
        return await self.keys.touch(row.id, now)
