# -*- test-case-name: tests.storage.test_prepare -*-
"""
Schema migrations: numbered SQL files shipped as package data.

Layout under ``storage/schema/``:

- ``full/NNNN.sql`` (or ``NNNN.sqlite.sql`` / ``NNNN.postgres.sql`` when the two
  engines need different DDL): the whole schema at version ``NNNN``, used for a
  fresh database. The highest one not newer than :data:`SCHEMA_VERSION` is used.
- ``delta/<NN>/<MM>_description.sql`` (same per-engine suffixes allowed): the
  changes that bring a database from version ``NN - 1`` to ``NN``, applied in
  file-name order. A full schema ``NNNN`` already contains every delta up to
  ``NNNN``.

Bookkeeping lives in two tables: ``schema_version`` (one row: the version the
database is at) and ``applied_schema_deltas`` (which delta files ran). Every
delta file runs in its own transaction together with its bookkeeping row, so a
crash in the middle of an upgrade resumes where it stopped. A released delta
file is never edited; a change needs a new file.

Rolling upgrades (expand, then contract): since delta ``04/20`` the one-row
table ``schema_compat`` stores the lowest code schema version that can still
serve the database (``minimum_code_version``). A delta that only adds (a table,
a nullable or defaulted column, an index) leaves it alone, so instances of the
previous release keep running on the upgraded database; a delta that removes or
changes what older code reads raises it in the same file
(``UPDATE schema_compat SET minimum_code_version = N WHERE minimum_code_version < N``).
Code at version N serves a database at version M > N when the stored minimum is
at most N, without touching it; otherwise (or when the database has no
``schema_compat`` row) it raises :class:`DatabaseTooNew` naming both versions,
and nothing is touched. Before deltas are applied to an existing SQLite file it is copied to
``<file>.bak-v<N>`` (with SQLite's online backup API, so WAL content is included);
an existing backup of the same version is kept, never overwritten.

On PostgreSQL every migration transaction first takes an advisory lock, so two
servers starting together on one database do not both migrate it; on SQLite
``BEGIN IMMEDIATE`` serialises them.
"""

from __future__ import annotations

import os
import re
import sqlite3
from importlib import resources
from typing import Any

from twisted.logger import Logger

from headscale_tw.storage.database import DatabasePool, Txn

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseTooNew",
    "PrepareError",
    "prepare_database",
    "schema_files",
    "judge_schema_state",
    "read_schema_version",
]

SCHEMA_VERSION = 4
"""The schema version this code reads and writes."""

_PG_LOCK_ID = 0x68735F74775F6462  # "hs_tw_db": advisory lock around migrations

_BOOKKEEPING = """
CREATE TABLE schema_version (
    lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE CHECK (lock = 'X'),
    version INTEGER NOT NULL
);
CREATE TABLE applied_schema_deltas (
    version INTEGER NOT NULL,
    file TEXT NOT NULL,
    UNIQUE (version, file)
);
"""

_NAME = re.compile(r"^(?P<stem>[0-9A-Za-z_]+?)(?:\.(?P<engine>sqlite|postgres))?\.sql$")

log = Logger()


class DatabaseTooNew(Exception):
    """The database was written by a newer version of headscale-tw."""

    def __init__(self, db_version: int, code_version: int, minimum: int | None = None):
        needs = f"; it needs code at schema version {minimum} or later" if minimum is not None else ""
        super().__init__(
            f"the database schema version {db_version} is newer than this code supports "
            f"({code_version}){needs}; upgrade headscale-tw or restore a backup"
        )
        self.db_version = db_version
        self.code_version = code_version
        self.minimum = minimum


class PrepareError(Exception):
    """The database cannot be prepared (foreign tables, missing schema files)."""


def schema_files(directory: Any, engine: str) -> list[tuple[str, Any]]:
    """Return ``(name, file)`` for the ``.sql`` files in ``directory`` meant for ``engine``,
    sorted by name; a per-engine file replaces the shared one of the same stem."""
    chosen: dict[str, tuple[str, Any]] = {}
    if not directory.is_dir():
        return []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        stem, only = match.group("stem"), match.group("engine")
        if only is not None and only != engine:
            continue
        if only is None and stem in chosen:
            continue  # the per-engine file wins
        chosen[stem] = (entry.name, entry)
    return [chosen[stem] for stem in sorted(chosen)]


def _numbered_dirs(directory: Any) -> dict[int, Any]:
    if not directory.is_dir():
        return {}
    return {int(e.name): e for e in directory.iterdir() if e.is_dir() and e.name.isdigit()}


def _table_names_txn(txn: Txn) -> set[str]:
    if txn.engine.name == "sqlite":
        rows = txn.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    else:
        rows = txn.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {r[0] for r in rows}


def _lock_txn(txn: Txn) -> None:
    if txn.engine.name == "postgres":
        txn.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_ID,))


def _read_state_txn(txn: Txn) -> tuple[int | None, set[str], int | None]:
    """``(schema version, table names, stored minimum code version)``; None where absent."""
    tables = _table_names_txn(txn)
    if "schema_version" not in tables:
        return None, tables, None
    row = txn.query_one("SELECT version FROM schema_version")
    if row is None:
        raise PrepareError("the schema_version table is empty; the database is damaged")
    minimum = None
    if "schema_compat" in tables:
        compat = txn.query_one("SELECT minimum_code_version FROM schema_compat")
        minimum = int(compat[0]) if compat is not None else None
    return int(row[0]), tables, minimum


def judge_schema_state(version: int | None, tables: set[str], code_version: int = SCHEMA_VERSION,
                       minimum: int | None = None) -> int | None:
    """Whether this code can use a database in this state: its version, or None for an empty one.

    Shared by start-up (:func:`prepare_database`) and the read-only check of
    ``headscale configtest`` (:func:`read_schema_version`). A database newer than
    ``code_version`` is usable when its stored ``minimum`` (the lowest code
    version that can serve it) is known and at most ``code_version``.

    :raises PrepareError: tables but no ``schema_version``: not a headscale-tw database.
    :raises DatabaseTooNew: written by newer code that older code cannot serve.
    """
    if version is None:
        if tables:
            raise PrepareError(
                "the database has tables ({}) but no schema_version table: it was not created "
                "by headscale-tw; use an empty database".format(", ".join(sorted(tables)))
            )
        return None
    if version > code_version and (minimum is None or minimum > code_version):
        raise DatabaseTooNew(version, code_version, minimum if minimum is not None else version)
    return version


def _judged_state_txn(txn: Txn, code_version: int = SCHEMA_VERSION) -> int | None:
    version, tables, minimum = _read_state_txn(txn)
    return judge_schema_state(version, tables, code_version, minimum)


def read_schema_version(db_config: Any) -> int | None:
    """Read (never create, never migrate) the schema version of the configured database.

    Synchronous, for ``headscale configtest``, through
    :func:`~headscale_tw.storage.database.read_only_txn` (a missing SQLite file
    gives None: start-up would create it).

    :raises DatabaseFileError: the SQLite path cannot hold a database.
    :raises PrepareError, DatabaseTooNew: as :func:`judge_schema_state`.
    :raises sqlite3.Error, psycopg2.Error: the database cannot be reached or read.
    """
    from headscale_tw.storage.database import check_sqlite_file, read_only_txn

    if db_config.type in ("sqlite", "sqlite3") and not check_sqlite_file(db_config.sqlite.path):
        return None
    return read_only_txn(db_config, _judged_state_txn)


def _create_fresh_txn(txn: Txn, full_version: int, script: str) -> bool:
    _lock_txn(txn)
    if "schema_version" in _table_names_txn(txn):
        return False  # another server created it meanwhile
    txn.execute_script(_BOOKKEEPING)
    txn.execute_script(script)
    txn.execute("INSERT INTO schema_version (lock, version) VALUES ('X', ?)", (full_version,))
    return True


def _apply_delta_txn(txn: Txn, version: int, name: str, script: str) -> bool:
    _lock_txn(txn)
    if txn.query_one("SELECT 1 FROM applied_schema_deltas WHERE version = ? AND file = ?", (version, name)):
        return False
    txn.execute_script(script)
    txn.execute("INSERT INTO applied_schema_deltas (version, file) VALUES (?, ?)", (version, name))
    return True


def _set_version_txn(txn: Txn, version: int) -> None:
    _lock_txn(txn)
    txn.execute("UPDATE schema_version SET version = ? WHERE version < ?", (version, version))


def _backup_sqlite(conn: Any, target: str) -> None:
    # Created 0600 before SQLite opens it, like the database it copies (it holds the pepper too).
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    dest = sqlite3.connect(target)
    try:
        conn.backup(dest)
    finally:
        dest.close()


async def prepare_database(
    pool: DatabasePool,
    *,
    schema_dir: Any = None,
    schema_version: int = SCHEMA_VERSION,
    sqlite_path: str | None = None,
) -> int:
    """Bring the database behind ``pool`` to ``schema_version``; return the version it is at.

    A newer database this code may serve (see the module docstring) is left as
    it is, and its own version is returned.

    ``schema_dir`` (a ``pathlib.Path`` or importlib ``Traversable``) defaults to the
    packaged ``storage/schema``. ``sqlite_path`` names the SQLite file to back up
    before an upgrade (``None`` or ``:memory:``: no backup).
    """
    if schema_dir is None:
        schema_dir = resources.files("headscale_tw.storage").joinpath("schema")
    engine = pool.engine.name
    version = await pool.run_interaction("read_schema_state", _judged_state_txn, schema_version)
    fresh = version is None

    if version is None:
        fulls = {}
        for name, entry in schema_files(schema_dir.joinpath("full"), engine):
            number = int(name.split(".")[0])
            if number <= schema_version:
                fulls[number] = entry
        if not fulls:
            raise PrepareError(f"no full schema for {engine} at or below version {schema_version}")
        version = max(fulls)
        script = fulls[version].read_text(encoding="utf-8")
        created = await pool.run_interaction("create_schema", _create_fresh_txn, version, script)
        if created:
            log.info("Created a fresh {engine} database at schema version {version}", engine=engine, version=version)
        else:
            # Another server created it meanwhile: judge what it wrote like any existing schema.
            version = await pool.run_interaction("read_schema_state", _judged_state_txn, schema_version)
            if version is None:
                raise PrepareError("another server began creating the schema but no schema version is recorded")
            fresh = False
    if version > schema_version:
        log.info("The database is at schema version {version}, newer than this code ({code}), "
                 "and still compatible with it; serving it unchanged", version=version, code=schema_version)
        return version

    if not fresh and version < schema_version and sqlite_path not in (None, ":memory:"):
        target = f"{sqlite_path}.bak-v{version}"
        if not os.path.exists(target):
            log.info("Backing up {path} to {target} before upgrading", path=sqlite_path, target=target)
            await pool.run_with_connection("backup", _backup_sqlite, target)

    deltas = _numbered_dirs(schema_dir.joinpath("delta"))
    for step in range(version + 1, schema_version + 1):
        for name, entry in schema_files(deltas[step], engine) if step in deltas else []:
            script = entry.read_text(encoding="utf-8")
            applied = await pool.run_interaction(f"delta {step}/{name}", _apply_delta_txn, step, name, script)
            if applied:
                log.info("Applied schema delta {step}/{name}", step=step, name=name)
        await pool.run_interaction("set_schema_version", _set_version_txn, step)
    return schema_version
