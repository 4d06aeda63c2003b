# -*- test-case-name: tests.web.test_admin_audit -*-
"""
Who is at the other end of the local unix socket: the peer's user from ``SO_PEERCRED``.

The socket's file mode is its access control; the audit log names the local
user who connected. Only public API is used: the transport's
:class:`~twisted.internet.interfaces.ISystemHandle` gives the socket object.
"""

from __future__ import annotations

import pwd
import socket
import struct

from twisted.internet.interfaces import ISystemHandle
from twisted.web.iweb import IRequest

__all__ = ["socket_peer_user"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def socket_peer_user(request: IRequest) -> str:
    """``"<name> (uid N)"`` of the unix socket peer of ``request``; ``""`` when not a unix socket (or unknown)."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is None or not ISystemHandle.providedBy(transport):
        return ""
    handle = transport.getHandle()
    option = getattr(socket, "SO_PEERCRED", None)
    if not isinstance(handle, socket.socket) or handle.family != socket.AF_UNIX or option is None:
        return ""
    try:
        _pid, uid, _gid = _UCRED.unpack(handle.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    except OSError:
        return ""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
    return f"{name} (uid {uid})"
