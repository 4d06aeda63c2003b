# -*- test-case-name: tests.cluster.test_changefeed -*-
"""
A change feed between headscale-tw instances sharing one PostgreSQL database.

Every instance has a random *instance id*. After a committed write that other
instances care about, the writer sends::

    NOTIFY headscale_changes, '<instance-id> <kind> <id>'

with ``kind`` one of :data:`KINDS` (``node``, ``user``, ``policy`` and ``auth``
(an ``auth_requests`` row that was approved or rejected) are rows to re-read;
``online``/``offline`` say that a node's map stream started or ended on
the writer). Listeners ignore their own notifications and hand the rest to a
subscriber (``control/cluster.py``).

Transport choice: **one dedicated txpostgres connection** that only runs
``LISTEN`` (and a periodic ``SELECT 1`` probe). txpostgres keeps the socket as a
reader in the reactor, so a notification is delivered as soon as it arrives, with
no thread and no polling timer. Notifications are *sent* through the ordinary
adbapi pool (``SELECT pg_notify(...)``) right after the store write commits.
(Sending inside the writing transaction would need every store to know about the
feed; the window this leaves, a crash between commit and notify, is covered by the
full resync described below.)

Failure handling: when the connection cannot be opened, the ``LISTEN`` fails, or
the probe fails or times out, the connection is dropped and reopened after a
backoff that doubles up to ``max_backoff``. After every successful ``LISTEN``
(the first one included) the subscriber's ``resync`` is called: notifications sent
while nobody listened are lost, so the subscriber re-reads everything.
:meth:`ChangeFeed.stop` cancels every timer and closes the connection.

:class:`PublishingDatabase` wraps a ``Database`` so that the mutating store
methods that matter to peers publish on the feed after they succeed.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from headscale_tw.storage.models import Change

__all__ = [
    "CHANNEL",
    "KINDS",
    "Change",
    "ChangeFeed",
    "PublishingDatabase",
    "encode_change",
    "parse_change",
    "new_instance_id",
    "postgres_listener",
]

CHANNEL = "headscale_changes"
KINDS = frozenset({"node", "user", "policy", "auth", "online", "offline"})


def new_instance_id() -> str:
    """A random id naming this process on the feed."""
    return secrets.token_hex(8)


def encode_change(instance: str, kind: str, ident: int) -> str:
    """The NOTIFY payload for a change."""
    if kind not in KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    return f"{instance} {kind} {int(ident)}"


def parse_change(payload: str) -> Change:
    """Parse a NOTIFY payload; ``ValueError`` naming what is wrong."""
    parts = payload.split(" ")
    if len(parts) != 3:
        raise ValueError(f"change payload must be '<instance> <kind> <id>', got {payload[:80]!r}")
    instance, kind, ident = parts
    if kind not in KINDS:
        raise ValueError(f"change payload has unknown kind {kind!r}")
    try:
        number = int(ident)
    except ValueError:
        raise ValueError(f"change payload id is not a number: {ident[:40]!r}") from None
    return Change(instance, kind, number)


def postgres_listener(pg_config, reactor) -> Callable[[], Deferred]:
    """A factory opening one asynchronous (txpostgres) connection described by ``database.postgres``."""
    import psycopg2
    from twisted.internet import main
    from txpostgres import txpostgres

    kwargs: dict[str, Any] = {
        "host": pg_config.host,
        "port": pg_config.port,
        "dbname": pg_config.name,
        "user": pg_config.user,
        "sslmode": "require" if pg_config.ssl == "true" else (pg_config.ssl if pg_config.ssl not in ("false", "") else "disable"),
    }
    if pg_config.password:
        kwargs["password"] = pg_config.password

    class ListenConnection(txpostgres.Connection):
        """Reports a dropped socket at once (``notify_lost``) instead of an unhandled error."""

        notify_lost: Callable[[], None] | None = None

        def doRead(self):
            try:
                return super().doRead()
            except psycopg2.OperationalError as e:
                ChangeFeed.log.warn("change feed connection failed: {reason}", reason=str(e).strip())
                return main.CONNECTION_LOST

        def connectionLost(self, reason):
            super().connectionLost(reason)
            callback, self.notify_lost = self.notify_lost, None
            if callback is not None:
                callback()

    def connect() -> Deferred:
        conn = ListenConnection(reactor=reactor)
        return conn.connect(**kwargs).addCallback(lambda _: conn)

    return connect


class ChangeFeed:
    """LISTEN on one dedicated connection, NOTIFY through the pool.

    ``connect()`` returns a Deferred firing with a connected txpostgres
    ``Connection`` (see :func:`postgres_listener`); ``pool`` is the
    ``DatabasePool`` used to send. Call :meth:`subscribe` before :meth:`start`.
    """

    log = Logger()

    def __init__(
        self,
        connect: Callable[[], Deferred],
        pool,
        clock,
        instance_id: str | None = None,
        probe_interval: float = 15.0,
        probe_timeout: float = 10.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.instance_id = instance_id or new_instance_id()
        self._connect = connect
        self._pool = pool
        self.clock = clock
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._backoff = initial_backoff
        self._on_change: Callable[[Change], Any] | None = None
        self._on_resync: Callable[[], Any] | None = None
        self._conn = None
        self._pending: Deferred | None = None
        self._timer = None
        self._running = False
        #: How many times LISTEN succeeded (1 after the first connect).
        self.listens = 0

    def subscribe(self, on_change: Callable[[Change], Any], on_resync: Callable[[], Any]) -> None:
        """Receive other instances' changes, and a call to re-read everything after each (re)connect."""
        self._on_change = on_change
        self._on_resync = on_resync

    @property
    def listening(self) -> bool:
        """True while a connection is open and listening."""
        return self._conn is not None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Open the connection and LISTEN (retrying with backoff until :meth:`stop`)."""
        if self._running:
            return
        self._running = True
        self._open()

    def stop(self) -> None:
        """Cancel every timer and close the connection."""
        self._running = False
        self._cancel_timer()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._drop()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _open(self) -> None:
        self._timer = None
        if not self._running:
            return
        d = self._pending = Deferred.fromCoroutine(self._listen())
        d.addErrback(self._failed)

    async def _listen(self) -> None:
        conn = await self._connect()
        try:
            if not self._running:
                raise _Stopped()
            conn.addNotifyObserver(self._notified)
            await conn.runOperation(f"LISTEN {CHANNEL}")
        except BaseException:
            _close(conn)
            raise
        self._pending = None
        self._conn = conn
        if hasattr(conn, "notify_lost"):
            conn.notify_lost = lambda: self._lost(conn, Failure(ConnectionError("connection closed")))
        self._backoff = self.initial_backoff
        self.listens += 1
        self.log.info("change feed listening on {channel} as instance {instance}",
                      channel=CHANNEL, instance=self.instance_id)
        self._schedule(self.probe_interval, self._probe)
        if self._on_resync is not None:
            self._on_resync()

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if not self._running or failure.check(_Stopped):
            return
        delay = self._backoff
        self._backoff = min(self.max_backoff, self._backoff * 2)
        self.log.warn("change feed connection failed ({reason}); retrying in {delay}s",
                      reason=failure.getErrorMessage(), delay=delay)
        self._schedule(delay, self._open)

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, fn)

    def _probe(self) -> None:
        self._timer = None
        conn = self._conn
        if conn is None or not self._running:
            return
        d = conn.runQuery("SELECT 1")
        d.addTimeout(self.probe_timeout, self.clock)
        d.addCallbacks(lambda _: self._probed(conn), lambda f: self._lost(conn, f))

    def _probed(self, conn) -> None:
        if conn is self._conn and self._running:
            self._schedule(self.probe_interval, self._probe)

    def _lost(self, conn, failure: Failure) -> None:
        if conn is not self._conn or not self._running:
            return
        self.log.warn("change feed connection lost ({reason}); reconnecting", reason=failure.getErrorMessage())
        self._drop()
        self._failed(failure)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if hasattr(conn, "notify_lost"):
                conn.notify_lost = None
            conn.removeNotifyObserver(self._notified)
            _close(conn)

    def connection_lost(self) -> None:
        """Treat the connection as dead now (tests, or an external health check)."""
        if self._conn is not None:
            self._lost(self._conn, Failure(ConnectionError("connection dropped")))

    # -- receiving -------------------------------------------------------------

    def _notified(self, notify) -> None:
        if notify.channel != CHANNEL:
            return
        try:
            change = parse_change(notify.payload)
        except ValueError as e:
            self.log.warn("ignoring a malformed change notification: {reason}", reason=str(e))
            return
        if change.instance == self.instance_id or self._on_change is None:
            return
        self._on_change(change)

    # -- sending ---------------------------------------------------------------

    async def publish(self, kind: str, ident: int) -> None:
        """Send a change to the other instances (errors are logged: the write has already committed)."""
        payload = encode_change(self.instance_id, kind, ident)

        def notify_change_txn(txn) -> None:
            txn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

        try:
            await self._pool.run_interaction("notify_change", notify_change_txn)
        except Exception as e:  # noqa: BLE001 - the feed must never break a committed write
            self.log.warn("change {payload!r} not sent: {reason}", payload=payload, reason=str(e))


class _Stopped(Exception):
    """The feed was stopped while connecting."""


def _close(conn) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may itself fail
        pass


class _PublishingStore:
    """A store whose listed methods publish ``kind`` after they succeed."""

    def __init__(self, store, publish: Callable[[str, int], Awaitable[None]], kind: str,
                 methods: dict[str, Callable[[tuple, Any], int]]) -> None:
        self._store = store
        directlyProvides(self, *providedBy(store))
        for name, ident in methods.items():
            setattr(self, name, self._wrap(getattr(store, name), publish, kind, ident))

    @staticmethod
    def _wrap(method, publish, kind, ident):
        async def wrapped(*args, **kw):
            result = await method(*args, **kw)
            await publish(kind, ident(args, result))
            return result

        wrapped.__name__ = method.__name__
        wrapped.__doc__ = method.__doc__
        return wrapped

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def _row_id(args: tuple, result: Any) -> int:
    return result.id


def _first_arg(args: tuple, result: Any) -> int:
    return int(args[0])


class PublishingDatabase:
    """A ``Database`` whose node, user, policy and auth-request writes publish on a :class:`ChangeFeed`.

    Of the auth requests only the state changes publish (``finish``, ``set_node``):
    an instance holding that client's long-poll re-reads the row and answers it.
    """

    def __init__(self, db, publish: Callable[[str, int], Awaitable[None]]) -> None:
        self._db = db
        directlyProvides(self, *providedBy(db))
        self.nodes = _PublishingStore(db.nodes, publish, "node",
                                      {"create": _row_id, "update": _first_arg, "delete": _first_arg})
        self.users = _PublishingStore(db.users, publish, "user",
                                      {"create": _row_id, "sign_in": _row_id, "rename": _first_arg,
                                       "delete": _first_arg})
        self.policies = _PublishingStore(db.policies, publish, "policy", {"set": lambda args, result: 0})
        self.auth_requests = _PublishingStore(db.auth_requests, publish, "auth",
                                              {"finish": _row_id, "set_node": _row_id})

    def __getattr__(self, name: str):
        return getattr(self._db, name)
