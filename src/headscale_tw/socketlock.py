# -*- test-case-name: tests.test_socketlock -*-
"""
The server's lock on its unix socket: an OS lock (``flock``) on ``<socket>.lock``.

Only one server may use a socket path. The lock is ``fcntl.flock(LOCK_EX)`` on
a lock file next to the socket, held for the life of the process; the kernel
drops it when the process dies, however it dies, so a ``kill -9`` never leaves a
lock behind. The file stays on disk and only records the holder's PID for the
error message; a stale file (or a PID reused by another program, or a zombie)
blocks nothing. Twisted's ``unix:...:lockfile=1`` lock, a symlink naming a PID,
did: after ``kill -9`` the next start refused as soon as that PID was alive again.

A symlink at the lock path (left by that older lock) is replaced. With the lock
held, a socket file left at the socket path is removed before listening.

:meth:`SocketLock.holder` asks whether a live process holds the lock without
taking it or creating anything (``headscale configtest`` beside a running server).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

__all__ = ["LockHeld", "SocketLock"]


class LockHeld(Exception):
    """Another live process holds the socket's lock."""

    def __init__(self, lock_path: str, pid: int | None) -> None:
        holder = f" (pid {pid})" if pid else ""
        super().__init__(f"another headscale-tw server{holder} holds {lock_path}; stop it first")
        self.lock_path = lock_path
        self.pid = pid


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class SocketLock:
    """The ``flock`` on ``<socket_path>.lock``; :meth:`acquire` once, :meth:`release` on stop."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.lock_path = socket_path + ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between :meth:`acquire` and :meth:`release`."""
        return self._fd is not None

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.lock_path, flags, 0o600)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
        os.unlink(self.lock_path)  # Twisted's old symlink lock: the flock replaces it
        return os.open(self.lock_path, flags, 0o600)

    def acquire(self) -> None:
        """Take the lock (never waits) and clear a socket file left by a dead server.

        :raises LockHeld: another live process holds it.
        :raises OSError: the lock file cannot be opened.
        """
        if self._fd is not None:
            return
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise LockHeld(self.lock_path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        self._remove_stale_socket()

    def _remove_stale_socket(self) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Drop the lock (the file stays; it blocks nobody once unlocked)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def holder(self) -> int | None:
        """The PID of a live process holding the lock (0 if it wrote none), or None; takes nothing, creates nothing."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file (or the old symlink lock): nobody holds the flock
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_pid(fd) or 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
