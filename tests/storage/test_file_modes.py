# -*- test-case-name: tests.storage.test_file_modes -*-
"""The SQLite files are private: created 0600 (they hold the key-hashing pepper)."""

import os

from twisted.trial import unittest

from headscale_tw.storage.database import DatabaseFileError, check_sqlite_file, prepare_sqlite_file
from headscale_tw.testing.db import open_test_database, sqlite_config

__all__ = ["SqliteFileModeTests"]


class SqliteFileModeTests(unittest.TestCase):
    """prepare_sqlite_file and the open database keep every SQLite file at 0600."""

    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.folder, "var", "db.sqlite")
        old = os.umask(0o022)  # the usual umask, which gave 0644 files
        self.addCleanup(os.umask, old)

    def mode(self, suffix: str = "") -> int:
        return os.stat(self.path + suffix).st_mode & 0o777

    def test_open_database_files_0600(self):
        """Opening a new WAL database leaves the file, -wal and -shm at 0600."""
        db = open_test_database(self, sqlite_config(self.path))
        from headscale_tw.testing.db import resolve

        resolve(db.users.create("alice"))
        self.assertEqual([self.mode(s) for s in ("", "-wal", "-shm")], [0o600, 0o600, 0o600])

    def test_existing_files_narrowed(self):
        """Files an older version created 0644 are narrowed to 0600; the content is kept."""
        os.makedirs(os.path.dirname(self.path))
        for suffix in ("", "-wal", "-shm"):
            with open(self.path + suffix, "w") as f:
                f.write("")
            os.chmod(self.path + suffix, 0o644)
        prepare_sqlite_file(self.path)
        self.assertEqual([self.mode(s) for s in ("", "-wal", "-shm")], [0o600, 0o600, 0o600])

    def test_folder_as_path(self):
        """A folder at the database path is refused by name, by start-up and by the read-only check."""
        os.makedirs(self.path)
        for check in (prepare_sqlite_file, check_sqlite_file):
            with self.assertRaises(DatabaseFileError) as e:
                check(self.path)
            self.assertIn("is a directory", str(e.exception))

    def test_memory_untouched(self):
        """:memory: and file: URIs are left to SQLite."""
        prepare_sqlite_file(":memory:")
        self.assertFalse(check_sqlite_file("file:x?mode=memory"))
