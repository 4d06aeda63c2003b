# -*- test-case-name: tests.control.test_policy_in_force -*-
"""
Where the policy text comes from: a file or the database.

:class:`PolicySource` reads the text for the configured ``policy.mode``:
``file`` reads ``policy.path`` (at start and on SIGHUP), ``database`` the
newest row of the policy store, which is also where :meth:`PolicySource.store`
writes a new one (file mode refuses with :class:`PolicyUpdateRefused`).
:meth:`PolicySource.parse` turns text into a
:class:`~headscale_tw.policy.compile.PolicyEngine` or refuses it with
:class:`PolicyRejected` naming the problem. It holds no compiled state: checking
a policy against the tailnet is :class:`~headscale_tw.control.compilation.PolicyCompilation`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from headscale_tw.errors import InvalidInput
from headscale_tw.policy.compile import PolicyEngine
from headscale_tw.policy.model import PolicyError

__all__ = ["PolicySource", "PolicyRejected", "PolicyUpdateRefused"]


class PolicyRejected(PolicyError, InvalidInput):
    """A policy was refused (parse error, failed ``tests``); the message names the problem."""


class PolicyUpdateRefused(InvalidInput):
    """``set`` was asked for while the policy comes from a file."""


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class PolicySource:
    """
    The configured policy source and the text in force.

    ``config`` gives ``policy.mode``/``policy.path`` and ``server_url`` (None: no
    policy, allow all); ``store`` is an ``IPolicyStore`` (needed in
    ``database`` mode); ``read_file(path) -> str`` reads the policy file
    (injected for tests).
    """

    def __init__(self, config=None, store=None, read_file: Callable[[str], str] | None = None) -> None:
        policy_config = getattr(config, "policy", None)
        #: ``"file"`` or ``"database"``.
        self.mode = getattr(policy_config, "mode", "file") or "file"
        if self.mode not in ("file", "database"):
            raise InvalidInput(f"policy.mode: {self.mode!r} is not 'file' or 'database'")
        #: The policy file (file mode; ``""`` = none).
        self.path = getattr(policy_config, "path", "") or ""
        self.server_url = getattr(config, "server_url", "https://unused")
        self.store = store
        self.read_file = read_file or _read_text

    async def read(self) -> str:
        """The source's current text (``""`` = no policy).

        :raises PolicyRejected: if the file cannot be read.
        :raises InvalidInput: in database mode without a store.
        """
        if self.mode == "database":
            if self.store is None:
                raise InvalidInput("policy.mode database needs a policy store")
            record = await self.store.get_latest()
            return record.data if record is not None else ""
        if not self.path:
            return ""
        try:
            return self.read_file(self.path)
        except OSError as e:
            raise PolicyRejected(f"reading policy file {self.path}: {e.strerror or e}") from None

    def refuse_unless_writable(self) -> None:
        """:raises PolicyUpdateRefused: unless the policy lives in the database."""
        if self.mode != "database":
            raise PolicyUpdateRefused(
                "update is disabled for modes other than 'database': the policy comes from a file "
                "(policy.mode 'file'); edit the policy file and reload the server (SIGHUP), or set "
                "policy.mode to 'database'"
            )

    async def store_text(self, text: str, now: datetime) -> None:
        """Store ``text`` as the newest policy (database mode; check it first)."""
        self.refuse_unless_writable()
        await self.store.set(text, now=now)

    def parse(self, text) -> PolicyEngine:
        """``text`` parsed into an engine (``""``: no policy).

        :raises PolicyRejected: naming the problem (not UTF-8, not text, a parse error).
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise PolicyRejected("policy is not valid UTF-8") from None
        if not isinstance(text, str):
            raise PolicyRejected("policy must be text")
        try:
            return PolicyEngine(text or None, server_url=self.server_url)
        except PolicyRejected:
            raise
        except PolicyError as e:
            raise PolicyRejected(str(e)) from None
