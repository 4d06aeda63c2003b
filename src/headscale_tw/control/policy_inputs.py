# -*- test-case-name: tests.control.test_policy_incremental -*-
"""
What the policy is computed from: each node as the policy sees it.

:class:`PolicyInputs` keeps, per node of :class:`~headscale_tw.control.state.ControlState`,
the :class:`~headscale_tw.policy.model.Node` the policy engine takes (user or
tags, addresses, announced/approved routes and the primary routes the HA
election gives it), and which of them changed since the views were last
brought up to date. Only :meth:`PolicyInputs.mark` (a writer telling it a
node changed) and :meth:`PolicyInputs.elect` change it; a node the state has
but nobody marked yet is simply not known here.

The subnet-route HA election (derp-stun-policy.md G.3) runs here because its
result is a policy input: :meth:`PolicyInputs.elect` gives every online node
serving routes to :class:`~headscale_tw.control.election.RouteElection` and
re-marks the nodes whose primary routes moved.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Optional

from headscale_tw.control.routes import RouteElection, announced_routes, approved_routes
from headscale_tw.control.routes import serving as served
from headscale_tw.policy.model import Node as PNode
from headscale_tw.policy.model import Topology
from headscale_tw.policy.model import User as PUser

__all__ = ["PolicyInputs", "users_key", "policy_users"]


@lru_cache(maxsize=1 << 16)
def _address(text: Optional[str]):
    # every policy sync rebuilds each node's policy view from its address strings
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def users_key(state) -> tuple:
    """The users as the policy sees them, comparable: ``(id, name, email, IdP groups)`` sorted by id."""
    return tuple((u.id, u.name, u.email or "", frozenset(u.idp_groups)) for _, u in sorted(state.users.items()))


def policy_users(key: tuple) -> tuple[PUser, ...]:
    """The policy engine's users from a :func:`users_key`."""
    return tuple(PUser(id=i, name=name, email=email, idp_groups=groups) for i, name, email, groups in key)


class PolicyInputs:
    """
    Every known node as the policy engine sees it, and what changed.

    ``nodes`` maps node id to its policy :class:`~headscale_tw.policy.model.Node`;
    ``dirty`` holds nodes whose views must be looked at again, ``stale`` those
    the compiler must take in again, and ``previous`` a changed node's entry
    before its first change since the last update (``None``: it is new).
    """

    def __init__(self, state, election: RouteElection | None = None) -> None:
        self.state = state
        self.election = election if election is not None else RouteElection()
        self.nodes: dict[int, PNode] = {}
        self.dirty: set[int] = set()
        self.stale: set[int] = set()
        self.previous: dict[int, Optional[PNode]] = {}
        self._serving: dict[int, tuple] = {}

    def node_for(self, node, announced=None, approved=None) -> PNode:
        """``node`` (a state row) as the policy engine takes it; no record is changed."""
        tags = tuple(node.tags)
        return PNode(
            id=node.id,
            hostname=node.given_name or node.hostname,
            user_id=None if tags else node.user_id,
            tags=tags,
            ipv4=_address(node.ipv4),
            ipv6=_address(node.ipv6),
            advertised_routes=announced_routes(node) if announced is None else announced,
            approved_routes=approved_routes(node) if approved is None else approved,
            primary_routes=self.election.primary_routes(node.id),
        )

    def topology(self) -> Topology:
        """The policy engine's input built from the state's users and nodes."""
        nodes = tuple(self.node_for(n) for _, n in sorted(self.state.nodes.items()))
        return Topology(users=policy_users(users_key(self.state)), nodes=nodes)

    def owned_by(self, user_ids: set[int]) -> list[int]:
        """The known untagged nodes of ``user_ids``."""
        return [nid for nid, p in self.nodes.items() if not p.is_tagged and p.user_id in user_ids]

    def sync_all(self) -> None:
        """Mark every node of the state (and every known one gone from it), then elect."""
        for node_id in set(self.nodes) | set(self.state.nodes):
            self.mark(node_id)
        self.elect()

    def mark(self, node_id: int) -> bool:
        """Take in ``node_id`` as the state has it now (or its removal); True if its entry changed."""
        node = self.state.nodes.get(node_id)
        if node is None:
            if node_id in self.nodes:
                self.previous.setdefault(node_id, self.nodes[node_id])
                del self.nodes[node_id]
                self.stale.add(node_id)
                self._serving.pop(node_id, None)
                self.dirty.add(node_id)
                return True
            return False
        announced, approved = announced_routes(node), approved_routes(node)
        serving = tuple(r for r in served(announced, approved) if r.prefixlen != 0)
        if serving:
            self._serving[node_id] = serving
        else:
            self._serving.pop(node_id, None)
        pnode = self.node_for(node, announced, approved)
        if self.nodes.get(node_id) != pnode:
            self.previous.setdefault(node_id, self.nodes.get(node_id))
            self.nodes[node_id] = pnode
            self.stale.add(node_id)
            self.dirty.add(node_id)
            return True
        return False

    def elect(self) -> None:
        """Re-elect primary routers among the online nodes serving routes; re-mark the ones that moved."""
        candidates = {}
        runtime_of = self.state.runtime
        for node_id, routes in self._serving.items():
            runtime = runtime_of.get(node_id)
            if routes and runtime is not None and runtime.online:
                candidates[node_id] = routes
        for node_id in self.election.elect(candidates):
            if node_id in self.state.nodes:
                self.mark(node_id)
