# -*- test-case-name: tests.storage.test_database -*-
"""
The asynchronous database pool, for SQLite (``sqlite3``) and PostgreSQL (``psycopg2``).

Both engines run through ``twisted.enterprise.adbapi.ConnectionPool``: every
interaction is a plain synchronous function ``fn(txn, *args)`` (its name ends in
``_txn``) that runs in one transaction on a pool thread, and callers ``await``
:meth:`DatabasePool.run_interaction`. Stores therefore write each query once,
for both engines:

- SQL uses ``?`` placeholders; :class:`Txn` rewrites them to ``%s`` for psycopg2.
- ``datetime`` arguments are stored as UTC (``TIMESTAMPTZ`` on PostgreSQL,
  fixed-width ISO text on SQLite, so text order is time order); read them back
  with :func:`to_datetime`.
- Unique and foreign-key violations become :class:`UniqueViolation` (naming the
  column) and :class:`ForeignKeyViolation`, never engine exceptions.

SQLite uses one connection (``cp_min = cp_max = 1``): SQLite has a single writer,
and one connection keeps every interaction serialised. Every SQLite transaction
starts with ``BEGIN IMMEDIATE`` (the connection runs with
``isolation_level=None``), so DDL in migrations is transactional too.

**Group commit (SQLite):** interactions submitted while a transaction runs
share the next one, each in its own savepoint, and get their results after its
``COMMIT`` (:mod:`headscale_tw.storage.group_commit`).

The thread pool can be replaced (``threadpool=``) by one that runs work inline;
:mod:`headscale_tw.testing.db` does so to run the real SQL without threads.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from headscale_tw.clock import as_utc
from headscale_tw.counters import Histogram
from headscale_tw.interfaces import (  # the store interfaces annotate Database's attributes
    IAcmeStore,
    IApiKeyStore,
    IAuditEventStore,
    IAuthRequestStore,
    IDatabase,
    IInstanceStore,
    ILeaseStore,
    INodeSessionStore,
    INodeStore,
    IOIDCLoginStore,
    IPolicyStore,
    IPreAuthKeyStore,
    IServerStateStore,
    IUserStore,
)
from headscale_tw.storage.group_commit import GROUP_COMMIT_MAX, GroupCommit
from headscale_tw.storage.sqlite_file import (
    SQLITE_FILE_MODE,
    DatabaseFileError,
    check_sqlite_file,
    folder_accepts_entries,
    prepare_sqlite_file,
)

__all__ = [
    "DatabasePool",
    "Engine",
    "SqliteEngine",
    "PostgresEngine",
    "Txn",
    "IntegrityViolation",
    "UniqueViolation",
    "ForeignKeyViolation",
    "DatabaseClosed",
    "to_datetime",
    "to_bytes",
    "make_pool",
    "DatabaseFileError",
    "SQLITE_FILE_MODE",
    "check_sqlite_file",
    "folder_accepts_entries",
    "prepare_sqlite_file",
    "postgres_connect_kwargs",
    "read_only_txn",
    "split_sql",
    "Database",
    "open_database",
    "PoolStats",
    "GROUP_COMMIT_MAX",
]

R = TypeVar("R")

_SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f+00:00"


class IntegrityViolation(Exception):
    """A constraint rejected a write (base class)."""


class UniqueViolation(IntegrityViolation):
    """A unique constraint rejected a write; ``field`` names the column (or ``None``)."""

    def __init__(self, table: str | None, field: str | None, detail: str):
        super().__init__(detail)
        self.table = table
        self.field = field


class ForeignKeyViolation(IntegrityViolation):
    """A write referred to a row that does not exist (or a delete left a dangling reference)."""


class DatabaseClosed(Exception):
    """Work was submitted to a pool that is closing or closed."""


def to_datetime(value: Any) -> datetime | None:
    """Turn a stored timestamp (``datetime`` or SQLite text) into an aware UTC ``datetime``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)


def to_bytes(value: Any) -> bytes | None:
    """Turn a stored blob (``bytes``, ``memoryview``) into ``bytes``."""
    if value is None:
        return None
    return bytes(value)


def required_datetime(value: Any) -> datetime:
    """:func:`to_datetime` for a ``NOT NULL`` column: a ``NULL`` there raises ``ValueError``."""
    result = to_datetime(value)
    if result is None:
        raise ValueError("a NOT NULL timestamp column held NULL")
    return result


def required_bytes(value: Any) -> bytes:
    """:func:`to_bytes` for a ``NOT NULL`` column: a ``NULL`` there raises ``ValueError``."""
    if value is None:
        raise ValueError("a NOT NULL blob column held NULL")
    return bytes(value)


class Engine:
    """What differs between the two databases; one instance per pool."""

    name: str = ""
    module: Any = None

    def convert_sql(self, sql: str) -> str:
        """Rewrite ``?``-style SQL into the driver's paramstyle."""
        return sql

    def adapt(self, value: Any) -> Any:
        """Turn one Python argument into what the driver should bind."""
        return value

    def begin(self, cursor: Any) -> None:
        """Start the transaction explicitly, if the driver does not."""

    def classify(self, error: Exception) -> IntegrityViolation | None:
        """Map a driver ``IntegrityError`` onto an :class:`IntegrityViolation`."""
        return None


class SqliteEngine(Engine):
    """SQLite through the standard library's ``sqlite3``."""

    name = "sqlite"
    module = sqlite3

    _UNIQUE = re.compile(r"UNIQUE constraint failed: (\w+)\.(\w+)")

    def adapt(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return as_utc(value).strftime(_SQLITE_TIME_FORMAT)
        return value

    def begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def classify(self, error: Exception) -> IntegrityViolation | None:
        text = str(error)
        match = self._UNIQUE.search(text)
        if match:
            return UniqueViolation(match.group(1), match.group(2), text)
        if "UNIQUE constraint failed" in text:
            return UniqueViolation(None, None, text)
        if "FOREIGN KEY constraint failed" in text:
            return ForeignKeyViolation(text)
        return None


class PostgresEngine(Engine):
    """PostgreSQL through ``psycopg2`` (imported when the pool is made)."""

    name = "postgres"

    def __init__(self) -> None:
        import psycopg2
        import psycopg2.errors

        self.module = psycopg2
        self._errors = psycopg2.errors

    def convert_sql(self, sql: str) -> str:
        # Project SQL never contains ``?`` or ``%`` inside literals; check anyway.
        return sql.replace("%", "%%").replace("?", "%s")

    def adapt(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return as_utc(value)
        return value

    def classify(self, error: Exception) -> IntegrityViolation | None:
        diag = getattr(error, "diag", None)
        table = getattr(diag, "table_name", None)
        if isinstance(error, self._errors.UniqueViolation):
            constraint = getattr(diag, "constraint_name", None) or ""
            field = None
            # Unique indexes are named uq_<table>_<column> in both schemas.
            if table and constraint.startswith(f"uq_{table}_"):
                field = constraint[len(f"uq_{table}_") :]
            return UniqueViolation(table, field, str(error).strip())
        if isinstance(error, self._errors.ForeignKeyViolation):
            return ForeignKeyViolation(str(error).strip())
        return None


class Txn:
    """One transaction: a cursor that speaks ``?`` SQL on either engine."""

    def __init__(self, engine: Engine, cursor: Any):
        self.engine = engine
        self._cursor = cursor

    def execute(self, sql: str, args: tuple | list = ()) -> None:
        """Run one statement; constraint failures raise :class:`IntegrityViolation`."""
        engine = self.engine
        try:
            self._cursor.execute(engine.convert_sql(sql), tuple(engine.adapt(a) for a in args))
        except engine.module.IntegrityError as e:
            mapped = engine.classify(e)
            if mapped is None:
                raise
            raise mapped from e

    def execute_script(self, script: str) -> None:
        """Run every statement of an SQL script (one statement per ``;``), in this transaction."""
        for statement in split_sql(script):
            self._cursor.execute(statement)

    def insert(self, sql: str, args: tuple | list = ()) -> int:
        """Run an ``INSERT`` and return the new row's ``id`` (``RETURNING id`` is appended)."""
        self.execute(sql + " RETURNING id", args)
        return int(self._cursor.fetchone()[0])

    def fetchone(self) -> tuple | None:
        """The next row of the last query, or ``None``."""
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple]:
        """Every remaining row of the last query."""
        return list(self._cursor.fetchall())

    def query(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        """Run a ``SELECT`` and return all its rows."""
        self.execute(sql, args)
        return self.fetchall()

    def query_one(self, sql: str, args: tuple | list = ()) -> tuple | None:
        """Run a ``SELECT`` and return its first row, or ``None``."""
        self.execute(sql, args)
        return self._cursor.fetchone()

    def query_row(self, sql: str, args: tuple | list = ()) -> tuple:
        """Run a statement that always yields a row (an aggregate, a row this transaction
        wrote, ``INSERT ... RETURNING``) and return that row; none raises ``LookupError``."""
        self.execute(sql, args)
        return self.fetch_row()

    def fetch_row(self) -> tuple:
        """The next row of the last query, which must have one (else ``LookupError``)."""
        row = self._cursor.fetchone()
        if row is None:
            raise LookupError("the statement returned no row")
        return row

    @property
    def rowcount(self) -> int:
        """Rows changed by the last statement."""
        return self._cursor.rowcount



def split_sql(script: str) -> list[str]:
    """Split an SQL script into statements at ``;``, dropping ``--`` comments.

    Semicolons inside quoted literals or identifiers do not split. Dollar-quoted
    PostgreSQL bodies are not understood: schema files do not use them.
    """
    statements = []
    current: list[str] = []
    i, n = 0, len(script)
    while i < n:
        ch = script[i]
        if ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if script[end] == ch:
                    if end + 1 < n and script[end + 1] == ch:  # doubled quote: escaped
                        end += 2
                        continue
                    break
                end += 1
            current.append(script[i : end + 1])
            i = end + 1
            continue
        if ch == ";":
            statement = "".join(current).strip()
            if statement:
                statements.append(statement)
            current = []
        else:
            current.append(ch)
        i += 1
    statement = "".join(current).strip()
    if statement:
        statements.append(statement)
    return statements


class _ConnectionPool(adbapi.ConnectionPool):
    """``adbapi.ConnectionPool`` whose thread pool can be replaced before it starts."""

    def __init__(self, *args: Any, threadpool: Any = None, **kw: Any):
        self._replacement_threadpool = threadpool
        super().__init__(*args, **kw)

    def start(self) -> None:
        if self._replacement_threadpool is not None and not self.running:
            self.threadpool = self._replacement_threadpool
            self._replacement_threadpool = None
        super().start()


@dataclass(frozen=True)
class PoolStats:
    """The pool's figures at one moment (for ``/metrics``)."""

    #: Connections the pool may open (``cp_max``).
    max_connections: int
    #: Connections open now.
    open_connections: int
    #: Interactions running on a connection now.
    in_use: int
    #: Interactions submitted but waiting for a free connection.
    waiting: int


class DatabasePool:
    """The one async API over both engines.

    ``await pool.run_interaction(desc, fn, *args)`` runs ``fn(txn, *args)`` in a
    transaction (committed when it returns, rolled back when it raises) and gives
    its result. ``await pool.close()`` waits for in-flight work, then closes.
    ``last_success`` is the reactor time at which an interaction last returned
    (:mod:`headscale_tw.storage.health` reads it instead of querying).
    ``query_seconds`` holds how long each interaction took from submission
    (waiting for a connection included) to its result.
    """

    log = Logger()

    def __init__(self, engine: Engine, reactor: Any, connargs: tuple, connkw: dict,
                 *, on_connect: Callable[[Any], None], min_conns: int, max_conns: int,
                 threadpool: Any = None):
        self.engine = engine
        self._reactor = reactor
        self._in_flight: set[Deferred] = set()
        self._closing = False
        self.last_success: float | None = None
        self.query_seconds = Histogram()
        self._max_conns = max_conns
        self._pool = _ConnectionPool(
            engine.module.__name__,
            *connargs,
            cp_reactor=reactor,
            cp_openfun=on_connect,
            cp_min=min_conns,
            cp_max=max_conns,
            cp_noisy=False,
            threadpool=threadpool,
            **connkw,
        )
        # Group commit: only where every interaction shares one connection (SQLite).
        self._group: GroupCommit | None = None
        if engine.name == "sqlite" and max_conns == 1:
            self._group = GroupCommit(self._pool, self._interaction, self._begin_txn)
        self._ungrouped_transactions = 0

    @property
    def transactions(self) -> int:
        """Transactions (and raw connection uses) started on the pool's connections, for work-count tests."""
        grouped = self._group.transactions if self._group is not None else 0
        return grouped + self._ungrouped_transactions

    def _begin_txn(self, cursor: Any) -> Txn:
        self.engine.begin(cursor)
        return Txn(self.engine, cursor)

    def _interaction(self, cursor: Any, desc: str, fn: Callable[..., R], args: tuple) -> R:
        self.engine.begin(cursor)
        return fn(Txn(self.engine, cursor), *args)

    async def run_interaction(self, desc: str, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(txn, *args)`` in one transaction on a pool connection; return its result.

        On SQLite the transaction may be shared with interactions submitted at the
        same time (group commit, see the module docstring); ``fn`` sees only its own
        effects undone when it raises, and its result is returned once committed.
        """
        if self._closing:
            raise DatabaseClosed(f"database is closed (while running {desc})")
        if self._group is not None:
            d = self._group.submit(desc, fn, args)
        else:
            self._ungrouped_transactions += 1
            d = self._pool.runInteraction(self._interaction, desc, fn, args)
        self._in_flight.add(d)
        d.addBoth(self._done, d, self._reactor.seconds())
        return await d

    async def run_with_connection(self, desc: str, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(connection, *args)`` with the raw driver connection, outside a transaction."""
        if self._closing:
            raise DatabaseClosed(f"database is closed (while running {desc})")
        if self._group is not None:
            d = self._group.submit(desc, fn, args, raw=True)
        else:
            self._ungrouped_transactions += 1
            d = self._pool.runWithConnection(fn, *args)
        self._in_flight.add(d)
        d.addBoth(self._done, d, self._reactor.seconds())
        return await d

    def _done(self, result: Any, d: Deferred, submitted: float) -> Any:
        self._in_flight.discard(d)
        now = self._reactor.seconds()
        self.query_seconds.observe(max(0.0, now - submitted))
        if not isinstance(result, Failure):
            self.last_success = now
        return result

    def stats(self) -> PoolStats:
        """Connections allowed and open, interactions running and waiting (adbapi runs at most
        ``cp_max`` at once, one per connection; the rest queue for a thread)."""
        in_flight = len(self._in_flight)
        in_use = min(in_flight, self._max_conns)
        return PoolStats(max_connections=self._max_conns, open_connections=len(self._pool.connections),
                         in_use=in_use, waiting=in_flight - in_use)

    async def close(self) -> None:
        """Refuse new work, wait for what is running, then close every connection."""
        if self._closing:
            return
        self._closing = True
        while self._in_flight:
            await DeferredList(list(self._in_flight), consumeErrors=True)
        self._pool.close()


def _sqlite_on_connect(write_ahead_log: bool, wal_autocheckpoint: int, busy_timeout_ms: int):
    def on_connect(conn: sqlite3.Connection) -> None:
        cursor = conn.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if write_ahead_log:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint)}")
            # FULL: a commit is on disk when it returns, even across power loss
            # (NORMAL would only survive a process crash). Writes are few here.
            cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    return on_connect


def _postgres_on_connect(conn: Any) -> None:
    cursor = conn.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    conn.commit()


def read_only_txn(db_config: Any, fn: Callable[..., R], *args: Any) -> R:
    """Run ``fn(txn, *args)`` synchronously on a read-only connection; nothing can be written.

    For checks made without a reactor (``headscale configtest``): SQLite is
    opened with ``mode=ro`` (the file must exist; nothing is created),
    PostgreSQL in a read-only session whose transaction is rolled back.
    """
    from urllib.parse import quote

    if db_config.type in ("sqlite", "sqlite3"):
        path = db_config.sqlite.path
        target = path if path.startswith("file:") else "file:{}?mode=ro".format(quote(os.path.abspath(path)))
        conn = sqlite3.connect(target, uri=True)
        try:
            return fn(Txn(SqliteEngine(), conn.cursor()), *args)
        finally:
            conn.close()
    engine = PostgresEngine()
    conn = engine.module.connect(**postgres_connect_kwargs(db_config.postgres))
    try:
        conn.set_session(readonly=True)
        return fn(Txn(engine, conn.cursor()), *args)
    finally:
        conn.rollback()
        conn.close()


def postgres_connect_kwargs(pg: Any) -> dict[str, Any]:
    """The ``psycopg2.connect`` keywords for a ``PostgresConfig`` (used by the pool and by read-only checks)."""
    connkw: dict[str, Any] = {
        "host": pg.host,
        "port": pg.port,
        "dbname": pg.name,
        "user": pg.user,
        "sslmode": pg.ssl if pg.ssl not in ("false", "") else "disable",
        "connect_timeout": 10,
    }
    if pg.ssl in ("true",):
        connkw["sslmode"] = "require"
    if pg.password:
        connkw["password"] = pg.password
    return connkw


def make_pool(db_config: Any, reactor: Any, *, threadpool: Any = None,
              busy_timeout_ms: int = 5000) -> DatabasePool:
    """Build the :class:`DatabasePool` described by a ``DatabaseConfig``.

    For SQLite the file is made ready first (:func:`prepare_sqlite_file`: folder
    created when missing, file mode 0600).
    """
    kind = db_config.type
    if kind in ("sqlite", "sqlite3"):
        sq = db_config.sqlite
        path = sq.path
        prepare_sqlite_file(path)
        return DatabasePool(
            SqliteEngine(),
            reactor,
            (path,),
            {"check_same_thread": False, "isolation_level": None},
            on_connect=_sqlite_on_connect(sq.write_ahead_log, sq.wal_autocheckpoint, busy_timeout_ms),
            min_conns=1,
            max_conns=1,
            threadpool=threadpool,
        )
    if kind in ("postgres", "postgresql"):
        pg = db_config.postgres
        connkw = {**postgres_connect_kwargs(pg), "cp_reconnect": True, "cp_good_sql": "SELECT 1"}
        max_conns = max(1, pg.max_open_conns)
        return DatabasePool(
            PostgresEngine(),
            reactor,
            (),
            connkw,
            on_connect=_postgres_on_connect,
            min_conns=1,
            max_conns=max_conns,
            threadpool=threadpool,
        )
    raise ValueError(f"database.type must be 'sqlite' or 'postgres', not {kind!r}")


@implementer(IDatabase)
class Database:
    """An open, migrated database: one store attribute per table area."""

    def __init__(self, pool: DatabasePool, reactor: Any):
        # Imported here: the store modules import this one.
        from headscale_tw.storage.stores.acme import AcmeStore
        from headscale_tw.storage.stores.apikeys import ApiKeyStore
        from headscale_tw.storage.stores.audit_events import AuditEventStore
        from headscale_tw.storage.stores.auth_requests import AuthRequestStore
        from headscale_tw.storage.stores.instances import InstanceStore
        from headscale_tw.storage.stores.leases import LeaseStore
        from headscale_tw.storage.stores.node_sessions import NodeSessionStore
        from headscale_tw.storage.stores.nodes import NodeStore
        from headscale_tw.storage.stores.oidc_logins import OIDCLoginStore
        from headscale_tw.storage.stores.policies import PolicyStore
        from headscale_tw.storage.stores.preauthkeys import PreAuthKeyStore
        from headscale_tw.storage.stores.server_state import ServerStateStore
        from headscale_tw.storage.stores.users import UserStore

        self.pool = pool
        self.engine = pool.engine.name
        self.users: IUserStore = UserStore(pool, reactor)
        self.nodes: INodeStore = NodeStore(pool, reactor)
        self.preauthkeys: IPreAuthKeyStore = PreAuthKeyStore(pool, reactor)
        self.apikeys: IApiKeyStore = ApiKeyStore(pool, reactor)
        self.policies: IPolicyStore = PolicyStore(pool, reactor)
        self.server_state: IServerStateStore = ServerStateStore(pool, reactor)
        self.auth_requests: IAuthRequestStore = AuthRequestStore(pool, reactor)
        self.leases: ILeaseStore = LeaseStore(pool, reactor)
        self.instances: IInstanceStore = InstanceStore(pool, reactor)
        self.node_sessions: INodeSessionStore = NodeSessionStore(pool, reactor)
        self.acme: IAcmeStore = AcmeStore(pool, reactor)
        self.oidc_logins: IOIDCLoginStore = OIDCLoginStore(pool, reactor)
        self.audit: IAuditEventStore = AuditEventStore(pool, reactor)

    async def close(self) -> None:
        """Finish in-flight work and close every connection."""
        await self.pool.close()


async def open_database(db_config: Any, reactor: Any, *, threadpool: Any = None,
                        schema_dir: Any = None) -> Database:
    """Open the database a ``DatabaseConfig`` describes, migrate it, and return a :class:`Database`.

    Raises :class:`~headscale_tw.storage.prepare.DatabaseTooNew` (the pool is closed
    again) when the database was written by newer code.
    """
    from headscale_tw.storage.prepare import prepare_database

    pool = make_pool(db_config, reactor, threadpool=threadpool)
    sqlite_path = db_config.sqlite.path if pool.engine.name == "sqlite" else None
    try:
        kwargs = {} if schema_dir is None else {"schema_dir": schema_dir}
        await prepare_database(pool, sqlite_path=sqlite_path, **kwargs)
    except BaseException:
        await pool.close()
        raise
    return Database(pool, reactor)
