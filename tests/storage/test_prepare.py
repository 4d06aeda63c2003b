"""
Tests for headscale_tw.storage.prepare: fresh schema, upgrades, refusals, backups.
"""

import os
import shutil
import sqlite3
from importlib import resources
from pathlib import Path

from twisted.trial import unittest

from headscale_tw.storage.database import make_pool
from headscale_tw.storage.prepare import (
    SCHEMA_VERSION,
    DatabaseTooNew,
    PrepareError,
    judge_schema_state,
    prepare_database,
    schema_files,
)
from headscale_tw.testing.db import (
    NonThreadPool,
    ThreadlessReactor,
    create_postgres_database,
    open_test_database,
    resolve,
    sqlite_config,
)

NEXT = SCHEMA_VERSION + 1
TABLES = {"users", "nodes", "pre_auth_keys", "api_keys", "policies", "server_state", "audit_events"}


class MigrationTestsMixin:
    """Migration behaviour common to both engines; ``make_config`` picks one."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.config = self.make_config()
        self.schema = Path(self.mktemp())
        shutil.copytree(str(resources.files("headscale_tw.storage").joinpath("schema")), self.schema)

    def pool(self):
        pool = make_pool(self.config, ThreadlessReactor(), threadpool=NonThreadPool())
        self.addCleanup(lambda: resolve(pool.close()))
        return pool

    def prepare(self, pool, version=SCHEMA_VERSION):
        path = self.config.sqlite.path if self.config.type == "sqlite" else None
        return resolve(prepare_database(pool, schema_dir=self.schema, schema_version=version, sqlite_path=path))

    def query(self, pool, sql, args=()):
        return resolve(pool.run_interaction("raw", lambda txn: txn.query(sql, args)))

    def add_delta(self, version, name, sql):
        directory = self.schema / "delta" / f"{version:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(sql)

    def test_fresh(self):
        """A fresh database gets every table and the current schema version."""
        pool = self.pool()
        self.assertEqual(self.prepare(pool), SCHEMA_VERSION)
        self.assertEqual(self.query(pool, "SELECT version FROM schema_version"), [(SCHEMA_VERSION,)])
        for table in TABLES:
            self.assertEqual(self.query(pool, f"SELECT COUNT(*) FROM {table}"), [(0,)])

    def test_reopen_is_noop(self):
        """Preparing an up-to-date database again changes nothing."""
        pool = self.pool()
        self.prepare(pool)
        applied = self.query(pool, "SELECT version, file FROM applied_schema_deltas ORDER BY file")
        resolve(pool.run_interaction("w", lambda txn: txn.execute("INSERT INTO users (name) VALUES ('a')")))
        self.assertEqual(self.prepare(pool), SCHEMA_VERSION)
        self.assertEqual(self.query(pool, "SELECT name FROM users"), [("a",)])
        self.assertEqual(self.query(pool, "SELECT version, file FROM applied_schema_deltas ORDER BY file"), applied)

    def test_upgrade(self):
        """A delta for the next version is applied once, recorded, and the version bumped."""
        pool = self.pool()
        self.prepare(pool)
        resolve(pool.run_interaction("w", lambda txn: txn.execute("INSERT INTO users (name) VALUES ('a')")))
        self.add_delta(NEXT, "01_colour.sql", "-- users get a colour\nALTER TABLE users ADD COLUMN colour TEXT NOT NULL DEFAULT 'blue';\n")
        self.add_delta(NEXT, "02_index.sql", "CREATE INDEX ix_users_colour ON users (colour);")
        self.assertEqual(self.prepare(pool, NEXT), NEXT)
        self.assertEqual(self.query(pool, "SELECT name, colour FROM users"), [("a", "blue")])
        self.assertEqual(self.query(pool, "SELECT version FROM schema_version"), [(NEXT,)])
        self.assertEqual(
            sorted(self.query(pool, "SELECT version, file FROM applied_schema_deltas WHERE version = ?", (NEXT,))),
            [(NEXT, "01_colour.sql"), (NEXT, "02_index.sql")],
        )
        self.assertEqual(self.prepare(pool, NEXT), NEXT)  # nothing applied twice

    def test_fresh_uses_full_then_deltas(self):
        """A fresh database at a newer code version is built from the full schema plus later deltas."""
        self.add_delta(NEXT, "01_colour.sql", "ALTER TABLE users ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';")
        pool = self.pool()
        self.assertEqual(self.prepare(pool, NEXT), NEXT)
        resolve(pool.run_interaction("w", lambda txn: txn.execute("INSERT INTO users (name) VALUES ('a')")))
        self.assertEqual(self.query(pool, "SELECT colour FROM users"), [("red",)])

    def test_failed_delta_resumes(self):
        """A failing delta rolls back alone; earlier deltas stay applied and a rerun finishes."""
        pool = self.pool()
        self.prepare(pool)
        self.add_delta(NEXT, "01_good.sql", "CREATE TABLE extra (id INTEGER);")
        self.add_delta(NEXT, "02_bad.sql", "CREATE TABLE extra2 (id INTEGER);\nTHIS IS NOT SQL;")
        self.assertRaises(Exception, self.prepare, pool, NEXT)
        self.assertEqual(self.query(pool, "SELECT version FROM schema_version"), [(SCHEMA_VERSION,)])
        self.assertEqual(self.query(pool, "SELECT file FROM applied_schema_deltas WHERE version = ?", (NEXT,)),
                         [("01_good.sql",)])
        self.add_delta(NEXT, "02_bad.sql", "CREATE TABLE extra2 (id INTEGER);")
        self.assertEqual(self.prepare(pool, NEXT), NEXT)
        self.assertEqual(self.query(pool, "SELECT COUNT(*) FROM extra2"), [(0,)])

    def test_fresh_stores_minimum(self):
        """A fresh database records the lowest code version that can serve it (4, where the rule began)."""
        pool = self.pool()
        self.prepare(pool)
        self.assertEqual(self.query(pool, "SELECT minimum_code_version FROM schema_compat"), [(4,)])

    def test_serve_newer_additive(self):
        """A database one additive delta ahead is served by the older code as it is, and its version returned."""
        pool = self.pool()
        self.prepare(pool)
        self.add_delta(NEXT, "01_colour.sql", "ALTER TABLE users ADD COLUMN colour TEXT NOT NULL DEFAULT 'blue';")
        self.prepare(pool, NEXT)
        applied = self.query(pool, "SELECT version, file FROM applied_schema_deltas ORDER BY version, file")
        self.assertEqual(self.prepare(pool, SCHEMA_VERSION), NEXT)
        self.assertEqual(self.query(pool, "SELECT version FROM schema_version"), [(NEXT,)])
        self.assertEqual(self.query(pool, "SELECT version, file FROM applied_schema_deltas ORDER BY version, file"),
                         applied)

    def test_refuse_newer(self):
        """A database whose contracting delta raised the minimum past the code raises DatabaseTooNew
        naming the database's version, the code's and the minimum, touching nothing."""
        pool = self.pool()
        self.prepare(pool)
        self.add_delta(NEXT, "01_drop.sql", "ALTER TABLE users DROP COLUMN display_name;\n"
                       f"UPDATE schema_compat SET minimum_code_version = {NEXT} WHERE minimum_code_version < {NEXT};")
        self.prepare(pool, NEXT)
        error = self.assertRaises(DatabaseTooNew, self.prepare, pool, SCHEMA_VERSION)
        self.assertIn(f"database schema version {NEXT} is newer than this code supports ({SCHEMA_VERSION})", str(error))
        self.assertIn(f"it needs code at schema version {NEXT} or later", str(error))
        self.assertEqual((error.db_version, error.code_version, error.minimum), (NEXT, SCHEMA_VERSION, NEXT))
        self.assertEqual(self.query(pool, "SELECT version FROM schema_version"), [(NEXT,)])

    def test_refuse_newer_without_minimum(self):
        """A newer database with no stored minimum is refused: nothing says older code may serve it."""
        pool = self.pool()
        self.prepare(pool, NEXT)
        resolve(pool.run_interaction("w", lambda txn: txn.execute("DELETE FROM schema_compat")))
        error = self.assertRaises(DatabaseTooNew, self.prepare, pool, SCHEMA_VERSION)
        self.assertEqual(error.minimum, NEXT)

    def test_refuse_foreign_tables(self):
        """A database with tables but no schema_version (e.g. Headscale's) is refused by name."""
        pool = self.pool()
        resolve(pool.run_interaction("w", lambda txn: txn.execute("CREATE TABLE migrations (id TEXT)")))
        error = self.assertRaises(PrepareError, self.prepare, pool)
        self.assertIn("migrations", str(error))


class SqliteMigrationTests(MigrationTestsMixin, unittest.TestCase):
    """Migrations on a SQLite file."""

    def make_config(self):
        directory = self.mktemp()
        return sqlite_config(os.path.join(directory, "sub", "db.sqlite"))

    def test_parent_directory_created(self):
        """The SQLite file's missing parent directories are created."""
        self.pool()
        self.assertTrue(os.path.isdir(os.path.dirname(self.config.sqlite.path)))

    def test_backup_before_upgrade(self):
        """Before deltas touch an existing file it is copied to <file>.bak-v<N>, and kept."""
        path = self.config.sqlite.path
        pool = self.pool()
        self.prepare(pool)
        self.assertFalse(os.path.exists(f"{path}.bak-v{SCHEMA_VERSION}"))
        resolve(pool.run_interaction("w", lambda txn: txn.execute("INSERT INTO users (name) VALUES ('a')")))
        self.add_delta(NEXT, "01_colour.sql", "ALTER TABLE users ADD COLUMN colour TEXT;")
        self.prepare(pool, NEXT)
        backup = f"{path}.bak-v{SCHEMA_VERSION}"
        conn = sqlite3.connect(backup)
        try:
            self.assertEqual(conn.execute("SELECT version FROM schema_version").fetchall(), [(SCHEMA_VERSION,)])
            self.assertEqual(conn.execute("SELECT name FROM users").fetchall(), [("a",)])
            columns = [r[1] for r in conn.execute("PRAGMA table_info(users)")]
            self.assertNotIn("colour", columns)
        finally:
            conn.close()
        self.assertEqual(os.stat(backup).st_mode & 0o777, 0o600)

    def test_no_backup_for_fresh(self):
        """A fresh database is not backed up, even when deltas follow the full schema."""
        self.add_delta(NEXT, "01_colour.sql", "ALTER TABLE users ADD COLUMN colour TEXT;")
        self.prepare(self.pool(), NEXT)
        directory = os.path.dirname(self.config.sqlite.path)
        self.assertEqual([f for f in os.listdir(directory) if ".bak-" in f], [])

    def test_pragmas(self):
        """Connections enforce foreign keys and use WAL."""
        pool = self.pool()
        self.assertEqual(self.query(pool, "PRAGMA foreign_keys"), [(1,)])
        self.assertEqual(self.query(pool, "PRAGMA journal_mode"), [("wal",)])


class PostgresMigrationTests(MigrationTestsMixin, unittest.TestCase):
    """Migrations on a fresh PostgreSQL database."""

    def make_config(self):
        return create_postgres_database(self)


class JudgeSchemaStateTests(unittest.TestCase):
    """The compatibility rule on its own: code N serves M > N only when the stored minimum is at most N."""

    def test_rule(self):
        """Older or equal databases pass; newer ones pass only with a known minimum not above the code."""
        tables = {"schema_version"}
        self.assertEqual(judge_schema_state(3, tables, 4), 3)
        self.assertEqual(judge_schema_state(4, tables, 4), 4)
        self.assertEqual(judge_schema_state(6, tables, 4, minimum=4), 6)
        self.assertEqual(judge_schema_state(6, tables, 5, minimum=4), 6)
        for minimum in (5, 6, None):
            error = self.assertRaises(DatabaseTooNew, judge_schema_state, 6, tables, 4, minimum)
            self.assertIn("schema version 6 is newer than this code supports (4)", str(error))
        self.assertIsNone(judge_schema_state(None, set(), 4))


class SchemaFilesTests(unittest.TestCase):
    """Choosing the schema files for one engine."""

    def test_engine_specific_wins(self):
        """A per-engine file replaces the shared one; the other engine's file is ignored."""
        directory = Path(self.mktemp())
        directory.mkdir()
        for name in ("01_a.sql", "01_a.postgres.sql", "02_b.sql", "03_c.sqlite.sql", "README.md"):
            (directory / name).write_text("")
        self.assertEqual([n for n, _ in schema_files(directory, "sqlite")], ["01_a.sql", "02_b.sql", "03_c.sqlite.sql"])
        self.assertEqual([n for n, _ in schema_files(directory, "postgres")], ["01_a.postgres.sql", "02_b.sql"])

    def test_packaged_schema_opens(self):
        """The packaged schema builds a working database through open_database."""
        db = open_test_database(self)
        self.assertEqual(db.engine, "sqlite")
