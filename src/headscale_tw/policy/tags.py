# -*- test-case-name: tests.control.test_policy_tags -*-
"""
Who may hold a tag: the ``tagOwners`` rules, as pure functions of a policy.

A tag is owned by the users and groups listed for it, by ``autogroup:member``
/ ``autogroup:admin`` (any user), and by a node already holding one of the
tags listed as its owners. With no policy no tag is declared, and a node may
request none (an admin may still set any tag: :func:`defines_tag` is True).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional

from .model import Policy

if TYPE_CHECKING:
    from .compile import CompiledPolicy

__all__ = ["defines_tag", "unowned_tags"]


def defines_tag(policy: Optional[Policy], tag: str) -> bool:
    """Whether ``policy`` declares ``tag`` in ``tagOwners`` (always True with no policy)."""
    return policy is None or tag in policy.tag_owners


def unowned_tags(cp: Optional["CompiledPolicy"], tags: Iterable[str], user_id: Optional[int],
                 node_tags: Iterable[str] = ()) -> list[str]:
    """
    The tags in ``tags`` that neither ``user_id`` nor the node's current tags
    (``node_tags``) own per the ``tagOwners`` of ``cp`` (empty: all permitted).

    ``cp`` is the policy compiled over the current users and nodes (its
    resolver names a user's memberships), or None with no policy, when no tag
    can be requested by a node.
    """
    tags = list(tags)
    policy = None if cp is None else cp.policy
    if cp is None or policy is None:
        return tags
    resolver = cp.resolver
    held = set(node_tags)

    def owns(tag: str) -> bool:
        if tag in held:
            return True
        for owner in policy.tag_owners.get(tag, ()):
            if owner.startswith("tag:"):
                if owner in held:
                    return True
                continue
            members = policy.groups.get(owner, ()) if owner.startswith("group:") else (owner,)
            for member in members:
                if owner.startswith("autogroup:") or member.startswith("autogroup:"):
                    if user_id is not None and member in ("autogroup:member", "autogroup:admin"):
                        return True
                    continue
                if user_id is not None and any(u.id == user_id for u in resolver.users_for(member)):
                    return True
        return False

    return [t for t in tags if t not in policy.tag_owners or not owns(t)]
