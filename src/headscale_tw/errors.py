"""
Domain errors shared by stores, the control plane and the admin API.

Each carries a message meant for a person; the admin API maps them to HTTP
status codes and the CLI prints them on one line.
"""

__all__ = ["HeadscaleError", "NotFound", "AlreadyExists", "UserHasNodes", "InvalidInput", "Expired",
           "Unauthenticated", "LimitReached", "Conflict"]


class HeadscaleError(Exception):
    """Base class: ``str(error)`` is the one-line message shown to users."""


class NotFound(HeadscaleError):
    """The named object does not exist."""


class AlreadyExists(HeadscaleError):
    """A unique name or key is already taken."""


class UserHasNodes(HeadscaleError):
    """A user cannot be deleted while it still owns nodes."""


class InvalidInput(HeadscaleError):
    """A request or argument is malformed; the message names what is wrong."""


class Expired(HeadscaleError):
    """A key or node has expired."""


class Unauthenticated(HeadscaleError):
    """A credential (API key) is missing, malformed, unknown or expired."""


class LimitReached(HeadscaleError):
    """A bounded resource is full; the message names the limit. ``limit`` is its value."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


class Conflict(HeadscaleError):
    """The object exists but is not in a state that allows the operation."""
