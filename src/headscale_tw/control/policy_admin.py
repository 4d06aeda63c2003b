# -*- test-case-name: tests.nodesapi.test_api -*-
"""
The policy operations of the admin API and CLI: read, check, set and reload the policy text.

:class:`PolicyAdmin` wraps the plane's :class:`~headscale_tw.control.policy.TailnetPolicy`
and the policy store, so that the API never reads a store itself, and hands
the differences a new policy makes to the notifier (the policy side never
calls the notifier).
"""

from __future__ import annotations

from datetime import datetime

import attrs

from headscale_tw.control.audit import NO_AUDIT, AuditLog, Target, policy_detail
from headscale_tw.control.policy import TailnetPolicy
from headscale_tw.errors import NotFound
from headscale_tw.interfaces import IPolicyStore

__all__ = ["PolicyAdmin", "PolicyText", "POLICY_NOT_FOUND"]

#: The words Headscale answers when no policy is stored; Headplane reads a
#: refusal containing them as "no policy yet" and offers an empty one.
POLICY_NOT_FOUND = "acl policy not found"


@attrs.frozen
class PolicyText:
    """The policy in force: its text and when it was stored (``None`` in file mode)."""

    text: str
    updated_at: datetime | None


class PolicyAdmin:
    """Get, check and set the policy; the store is read only for the update time.

    :param policy: the plane's ``TailnetPolicy``.
    :param store: the policy store (``get_latest()``).
    :param notifier: the plane's notifier (``push``), which tells sessions what a new policy changed.
    :param audit: records every change (``policy.set``).
    """

    def __init__(self, policy: TailnetPolicy, store: IPolicyStore, notifier, audit: AuditLog = NO_AUDIT) -> None:
        self.policy = policy
        self.store = store
        self.notifier = notifier
        self.audit = audit

    async def current(self) -> PolicyText:
        """The policy in force; ``NotFound`` (saying :data:`POLICY_NOT_FOUND`) when there is none."""
        if not self.policy.get_policy():
            if self.policy.mode == "database":
                where = "no policy is stored in the database"
            elif self.policy.path:
                where = f"the policy file {self.policy.path} is empty"
            else:
                where = "policy.path is not set"
            raise NotFound(f"{POLICY_NOT_FOUND}: no policy in force ({where}): all traffic is allowed")
        return await self._text()

    async def _text(self) -> PolicyText:
        updated = None
        if self.policy.mode == "database":
            record = await self.store.get_latest()
            if record is not None:
                updated = record.updated_at or record.created_at
        return PolicyText(self.policy.get_policy(), updated)

    def check(self, text: str) -> None:
        """Validate ``text`` without storing or applying it; ``PolicyRejected`` naming the problem."""
        self.policy.check_policy(text)

    async def set(self, text: str) -> PolicyText:
        """Validate, store and apply ``text`` (database mode only; file mode refuses)."""
        self.notifier.push(await self.policy.set_policy(text))
        stored = await self._text()
        await self.audit.record("policy.set", Target("policy", "", self.policy.mode), detail=policy_detail(text))
        return stored

    async def reload(self) -> bool:
        """Re-read the policy source and push what changed; True if the policy changed.

        A rejected or unreadable source is logged and the old policy stays (False).
        """
        changes = await self.policy.reload()
        if changes is None:
            return False
        self.notifier.push(changes)
        return True
