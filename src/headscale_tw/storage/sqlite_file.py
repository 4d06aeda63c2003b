# -*- test-case-name: tests.storage.test_file_modes -*-
"""
The SQLite file behind ``database.sqlite.path``: checked read-only for
``configtest`` and start-up, and made ready (folder, mode 0600) before SQLite
opens it. Plain file-system code; :mod:`headscale_tw.storage.database`
re-exports these names.
"""

from __future__ import annotations

import os

__all__ = ["DatabaseFileError", "SQLITE_FILE_MODE", "check_sqlite_file", "folder_accepts_entries",
           "prepare_sqlite_file"]


class DatabaseFileError(Exception):
    """The SQLite file cannot be used: its path is a folder, or its folder cannot be created."""


#: Mode of every SQLite file this server creates (the database holds the key-hashing pepper).
SQLITE_FILE_MODE = 0o600


def _sqlite_file_path(path: str) -> str | None:
    """The file behind ``database.sqlite.path`` (None for ``:memory:`` and ``file:`` URIs)."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    return os.path.abspath(path)


def check_sqlite_file(path: str) -> bool:
    """Read-only check of ``database.sqlite.path``; True when the file exists.

    A missing file is fine when its folder exists (or could be created) and is
    writable. Nothing is created.

    :raises DatabaseFileError: the path is a folder, or the file could not be created.
    """
    real = _sqlite_file_path(path)
    if real is None:
        return False
    if os.path.isdir(real):
        raise DatabaseFileError(f"database.sqlite.path {path} is a directory, not a database file")
    if os.path.exists(real):
        return True
    parent = os.path.dirname(real)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not folder_accepts_entries(parent):
        raise DatabaseFileError(f"database.sqlite.path {path}: cannot create it, {parent} is not a writable folder")
    return False


def folder_accepts_entries(folder: str) -> bool:
    """Whether a file or folder can be created in ``folder``: tried for real (a temporary folder,
    removed at once), since permission bits say nothing for root or on special file systems."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".headscale-tw-probe-", dir=folder))
    except OSError:
        return False
    return True


def prepare_sqlite_file(path: str) -> None:
    """Make ``database.sqlite.path`` ready for SQLite to open, mode 0600.

    The folder is created when missing; a missing file is created empty with
    mode 0600 before SQLite opens it (SQLite gives its ``-wal`` and ``-shm``
    files the database file's mode); an existing file, ``-wal`` or ``-shm``
    readable by others (as older versions created them) is narrowed to 0600.

    :raises DatabaseFileError: the path is a folder, or the folder or file cannot be created.
    """
    real = _sqlite_file_path(path)
    if real is None:
        return
    if os.path.isdir(real):
        raise DatabaseFileError(f"database.sqlite.path {path} is a directory, not a database file")
    parent = os.path.dirname(real)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise DatabaseFileError(f"database.sqlite.path {path}: cannot create its folder {parent}: "
                                f"{e.strerror or e}") from None
    try:
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SQLITE_FILE_MODE)
    except FileExistsError:
        pass
    except OSError as e:
        raise DatabaseFileError(f"database.sqlite.path {path}: cannot create it: {e.strerror or e}") from None
    else:
        os.close(fd)
    for name in (real, real + "-wal", real + "-shm"):
        try:
            mode = os.stat(name).st_mode & 0o777
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
        except FileNotFoundError:
            pass
