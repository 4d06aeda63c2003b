# -*- test-case-name: tests.control.test_policy_routes -*-
"""
Which announced routes ``autoApprovers`` approve, as a pure function.

The control side stores the result (:meth:`~headscale_tw.control.policy.TailnetPolicy.auto_approve`);
here only the rule is applied: of a node's announced routes not yet
approved, those the policy lets its owner (user, group or tag) have approved.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .model import Network, Node

if TYPE_CHECKING:
    from .compile import CompiledPolicy

__all__ = ["pending_approval", "routes_to_approve"]


def pending_approval(announced: Iterable[Network], approved: Iterable[Network]) -> list[Network]:
    """The routes of ``announced`` not in ``approved``, in announcement order."""
    approved_set = set(approved)
    return [r for r in announced if r not in approved_set]


def routes_to_approve(cp: "CompiledPolicy", node: Node, pending: Iterable[Network]) -> list[Network]:
    """The routes of ``pending`` (see :func:`pending_approval`) that ``autoApprovers`` approve for ``node``."""
    return cp.auto_approvable(node, pending)
