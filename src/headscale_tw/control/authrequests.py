# -*- test-case-name: tests.control.test_authrequests -*-
"""
Auth requests: things a person or an admin has to finish, kept in the database.

An interactive ``tailscale up`` opens one (kind ``register``); ``headscale auth
register`` finishes it for a user, ``headscale auth reject`` refuses it. SSH
check mode (:mod:`~headscale_tw.control.ssh_check`) opens kind ``ssh_check``
requests that ``headscale auth approve`` (or the person signing in with the
OIDC provider) finishes. The rows live in the ``auth_requests`` table
(:class:`~headscale_tw.storage.stores.auth_requests.AuthRequestStore`), never in
one instance's memory, so:

* any instance on the same database can finish a request another one opened;
* a request survives a restart of the instance within its lifetime;
* the number of open requests is bounded per source address and in total
  (:class:`~headscale_tw.errors.LimitReached` past either cap), and each expires
  after ``lifetime`` seconds (Headscale's register cache keeps entries 15 minutes);
  :meth:`AuthRequests.expire` (a periodic job) deletes expired rows.

The only thing held in memory is the list of long-polls waiting on this instance
(:meth:`AuthRequests.wait`). They are released when this instance finishes the
request, when another instance's change arrives through the change feed
(:meth:`AuthRequests.changed`), or, as a fallback, by a re-read when their own
timeout fires.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger

from headscale_tw.errors import Conflict, NotFound
from headscale_tw.interfaces import IAuthRequestStore
from headscale_tw.storage.models import AuthRequest

__all__ = [
    "AuthRequests",
    "new_auth_id",
    "DEFAULT_LIFETIME",
    "DEFAULT_MAX_PER_SOURCE",
    "DEFAULT_MAX_TOTAL",
    "REJECTED",
]

DEFAULT_LIFETIME = 15 * 60.0
"""Seconds an auth request stays open: Headscale's ``registerCacheExpiration``."""

DEFAULT_MAX_TOTAL = 1024
"""Open requests the server holds at most: Headscale's ``defaultRegisterCacheMaxEntries``."""

DEFAULT_MAX_PER_SOURCE = 32
"""Open requests one client address holds at most (Headscale has no per-source cap)."""

REJECTED = "auth request rejected by an administrator"
"""The reason a request refused with ``headscale auth reject`` carries (and its client is told)."""

_AUTH_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_auth_id() -> str:
    """A 24-character random id for an auth request (about 143 bits).

    Letters and digits only: an id starting with ``-`` would be read as an
    option by ``headscale auth register --auth-id <id>``.
    """
    return "".join(secrets.choice(_AUTH_ID_ALPHABET) for _ in range(24))


class AuthRequests:
    """Opens, waits on and finishes auth requests stored in ``store`` (an ``IAuthRequestStore``).

    ``now()`` gives the current aware UTC datetime; ``clock`` times the waits.
    """

    log = Logger()

    def __init__(
        self,
        store: IAuthRequestStore,
        clock,
        now: Callable[[], datetime],
        lifetime: float = DEFAULT_LIFETIME,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_total: int = DEFAULT_MAX_TOTAL,
    ) -> None:
        self.store = store
        self.clock = clock
        self.now = now
        self.lifetime = lifetime
        self.max_per_source = max_per_source
        self.max_total = max_total
        self._waiters: dict[str, list[Deferred]] = {}
        self._waited_ids: dict[int, str] = {}

    # -- opening and reading ---------------------------------------------------

    async def open(self, kind: str, source: str, *, machine_key: str = "", node_key: str = "",
                   hostname: str = "", details: dict | None = None, auth_id: str | None = None) -> AuthRequest:
        """The open request of ``kind`` for this machine and node key, or a new one.

        Asking again while a request is open returns the same one (the client
        keeps its login URL) and counts against no cap. ``auth_id`` chooses the
        new request's id (``headscale debug create-node --key``; default: random).

        :raises AlreadyExists: ``auth_id`` is already in use.

        :raises LimitReached: ``source`` or the server holds the maximum of open requests.
        """
        now = self.now()
        if machine_key:
            existing = await self.store.find_pending(kind, machine_key, node_key, now=now)
            if existing is not None:
                return existing
        return await self.store.create(
            auth_id=auth_id or new_auth_id(), kind=kind, source=source, machine_key=machine_key, node_key=node_key,
            hostname=hostname, details=details, expires_at=now + timedelta(seconds=self.lifetime),
            max_per_source=self.max_per_source, max_total=self.max_total, now=now,
        )

    async def get(self, auth_id: str) -> AuthRequest | None:
        """The request with this auth id in any state (expired ones until the sweep), or ``None``."""
        return await self.store.get(auth_id)

    async def pending(self, auth_id: str, kind: str | None = None) -> AuthRequest:
        """The open request with this auth id (of ``kind`` if given).

        :raises NotFound: no such request (or of another kind), or it has expired.
        :raises Conflict: it was already approved or rejected.
        """
        row = await self.store.get(auth_id)
        state = None if row is None else row.state_at(self.now())
        if row is None or state == "expired" or (kind is not None and row.kind != kind):
            raise NotFound(f"no pending auth request with auth id \"{auth_id}\" "
                           "(it may have expired; start the login again)")
        if state != "pending":
            raise Conflict(f"the auth request \"{auth_id}\" is already {state}")
        return row

    def settled(self, row: AuthRequest) -> bool:
        """Whether a waiting client can be answered: rejected, expired, or approved with its result.

        An approved registration is settled once its node is recorded.
        """
        state = row.state_at(self.now())
        if state == "approved":
            return row.kind != "register" or row.node_id is not None
        return state != "pending"

    # -- finishing ---------------------------------------------------------------

    async def claim(self, auth_id: str, user_id: int) -> AuthRequest:
        """Approve an open registration for ``user_id`` before its node is written.

        Only one caller (on any instance) wins; the others get ``Conflict``.
        """
        return await self.store.finish(auth_id, "approved", user_id=user_id, now=self.now())

    async def unclaim(self, auth_id: str) -> bool:
        """Undo :meth:`claim` when the node could not be written, so the admin can try again."""
        return await self.store.reopen(auth_id)

    async def attach_node(self, auth_id: str, node_id: int) -> AuthRequest:
        """Record the node of a claimed registration; its waiting clients are answered."""
        row = await self.store.set_node(auth_id, node_id)
        self.release(row)
        return row

    async def approve(self, auth_id: str, user_id: int | None = None) -> AuthRequest:
        """``headscale auth approve``: approve an open SSH check (``user_id``: who signed in to approve it).

        :raises Conflict: the request is a node registration (finish those with
            ``auth register``, which names the user).
        """
        row = await self.pending(auth_id)
        if row.kind != "ssh_check":
            raise Conflict(f"the auth request \"{auth_id}\" is a node registration: finish it with "
                           f"'headscale auth register --auth-id {auth_id} --user <user>' "
                           "(auth approve is for SSH check requests)")
        row = await self.store.finish(auth_id, "approved", user_id=user_id, now=self.now())
        self.release(row)
        return row

    async def reject(self, auth_id: str, reason: str = REJECTED) -> AuthRequest:
        """Refuse an open request of any kind; its waiting clients are told ``reason``."""
        await self.pending(auth_id)
        row = await self.store.finish(auth_id, "rejected", reason=reason, now=self.now())
        self.release(row)
        return row

    # -- waiting -------------------------------------------------------------------

    async def wait(self, row: AuthRequest, timeout: float) -> AuthRequest:
        """Wait until ``row`` is :meth:`settled` or ``timeout`` seconds pass; return its newest version.

        On timeout the row is read again (a change whose notification was lost
        is still seen). Cancelling the wait (the client went away) leaves nothing behind.
        """
        if self.settled(row):
            return row
        waiter: Deferred = Deferred()
        self._waiters.setdefault(row.auth_id, []).append(waiter)
        self._waited_ids[row.id] = row.auth_id
        waiter.addTimeout(timeout, self.clock)
        try:
            return await waiter
        except TimeoutError:
            latest = await self.store.get(row.auth_id)
            return row if latest is None else latest
        finally:
            self._forget(row, waiter)

    def _forget(self, row: AuthRequest, waiter: Deferred) -> None:
        waiters = self._waiters.get(row.auth_id)
        if waiters is None:
            return
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            del self._waiters[row.auth_id]
            self._waited_ids.pop(row.id, None)

    @property
    def waiting(self) -> int:
        """How many long-polls wait on this instance."""
        return sum(len(w) for w in self._waiters.values())

    def release(self, row: AuthRequest) -> None:
        """Answer the clients waiting on ``row`` here, if it is settled."""
        if not self.settled(row):
            return
        for waiter in list(self._waiters.get(row.auth_id, ())):
            if not waiter.called:
                waiter.callback(row)

    async def changed(self, request_id: int) -> None:
        """Another instance changed row ``request_id``: re-read it if a client waits on it here."""
        if request_id not in self._waited_ids:
            return
        row = await self.store.get_by_id(request_id)
        if row is not None:
            self.release(row)

    async def recheck(self) -> None:
        """Re-read every request a client waits on here (after the change feed reconnects)."""
        for auth_id in list(self._waiters):
            row = await self.store.get(auth_id)
            if row is not None:
                self.release(row)

    # -- housekeeping --------------------------------------------------------------

    async def expire(self) -> int:
        """Delete the requests whose lifetime has passed; return how many (a periodic job)."""
        removed = await self.store.delete_expired(now=self.now())
        if removed:
            self.log.debug("removed {count} expired auth requests", count=removed)
        return removed

    def stop(self) -> None:
        """Cancel every waiting long-poll (service shutdown)."""
        for waiters in list(self._waiters.values()):
            for waiter in list(waiters):
                if not waiter.called:
                    waiter.cancel()
