# -*- test-case-name: tests.policy.test_compile -*-
"""
Alias resolution: what addresses each alias of a policy stands for in one
topology, and which topology facts (dependency keys) each answer follows.
"""

from __future__ import annotations

__all__ = ["Resolver"]

import ipaddress
from typing import Iterable, Optional

from .incremental import DependencyMemo, TopologyIndex, idp_group_key
from .ipset import TAILSCALE_ALL, THE_INTERNET, IPSet
from .model import IDP_GROUP_PREFIX, Alias, Node, Policy, Topology, User

_ALL = IPSet.from_networks([ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")])


class Resolver:
    """
    Resolves aliases to address sets for one (policy, topology) pair.

    ``index`` (a :class:`~headscale_tw.policy.incremental.TopologyIndex` of the
    topology's nodes) and ``memo`` (a
    :class:`~headscale_tw.policy.incremental.DependencyMemo`) may be carried
    over from an earlier compilation by an
    :class:`~headscale_tw.policy.incremental.IncrementalCompiler`; alone, the
    resolver indexes the topology and memoises for itself.
    """

    def __init__(self, policy: Policy, topology: Topology, index: Optional[TopologyIndex] = None,
                 memo: Optional[DependencyMemo] = None) -> None:
        self.policy = policy
        self.topology = topology
        self.index = index if index is not None else TopologyIndex(topology.nodes)
        self.memo = memo if memo is not None else DependencyMemo()
        self._node_sets: dict[int, IPSet] = {}
        self._users_by_token: dict[str, list[User]] = {}

    def node_set(self, node: Node) -> IPSet:
        s = self._node_sets.get(node.id)
        if s is None:
            s = node.address_set
            if self.index.nodes.get(node.id) is node:
                self._node_sets[node.id] = s
        return s

    def user_for(self, token: str) -> Optional[User]:
        """The single user a ``user@`` token names (email or name), else None."""
        t = token[:-1] if token.endswith("@") else token
        found = [u for u in self.topology.users if u.email == t or u.name == t]
        return found[0] if len(found) == 1 else None

    def users_for(self, token: str) -> list[User]:
        """Users a token names; ``user:*@<domain>`` names every user of that domain,
        ``idpgroup:<name>`` every user whose last sign-in carried that group."""
        found = self._users_by_token.get(token)
        if found is None:
            if token.startswith(IDP_GROUP_PREFIX):
                group = token[len(IDP_GROUP_PREFIX):]
                found = [u for u in self.topology.users if group in u.idp_groups]
            elif token.startswith("user:*@"):
                domain = token[len("user:*@"):].lower()
                found = [u for u in self.topology.users if u.email.rpartition("@")[2].lower() == domain]
            else:
                u = self.user_for(token)
                found = [u] if u is not None else []
            self._users_by_token[token] = found
        return found

    def nodes_of_user(self, user: Optional[User]) -> list[Node]:
        if user is None:
            return []
        return list(self.index.by_user.get(user.id, {}).values())

    def nodes_of_token(self, token: str) -> list[Node]:
        return [n for u in self.users_for(token) for n in self.nodes_of_user(u)]

    def _union(self, nodes: Iterable[Node]) -> IPSet:
        return IPSet.from_addresses(a for n in nodes for a in n.addresses)

    def alias_keys(self, alias: Alias) -> list[tuple]:
        """The dependency keys (see :mod:`~headscale_tw.policy.incremental`) an alias's set follows."""
        k = alias.kind
        if k == "user":
            return [("user", u.id) for u in self.users_for(alias.name)]
        if k == "group":
            members = self.policy.groups.get(alias.name, ())
            return [("user", u.id) for m in members for u in self.users_for(m)] + [
                idp_group_key(m) for m in members if m.startswith(IDP_GROUP_PREFIX)]
        if k == "idpgroup":
            return [("user", u.id) for u in self.users_for(alias.name)] + [idp_group_key(alias.name)]
        if k == "tag":
            return [("tag", alias.name)]
        if k == "autogroup":
            ag = alias.name[len("autogroup:"):]
            if ag == "member":
                return [("member",)]
            if ag == "tagged":
                return [("tagged",)]
            if ag in ("owner", "admin"):
                return [("user", u.id) for u in self.topology.users]
        return []

    def resolve(self, alias: Alias) -> Optional[IPSet]:
        """The addresses an alias stands for; None for ``autogroup:self``."""
        k = alias.kind
        if k == "*":
            return TAILSCALE_ALL
        return self.memo.get(("alias", alias), lambda: (self.alias_keys(alias), self._resolve(alias)))

    def _resolve(self, alias: Alias) -> Optional[IPSet]:
        k = alias.kind
        if k == "prefix":
            return IPSet.from_networks([alias.prefix])
        if k == "host":
            net = self.policy.hosts.get(alias.name)
            return IPSet.from_networks([net]) if net is not None else IPSet()
        if k in ("user", "idpgroup"):
            return self._union(self.nodes_of_token(alias.name))
        if k == "group":
            nodes: list[Node] = []
            for member in self.policy.groups.get(alias.name, ()):
                nodes.extend(self.nodes_of_token(member))
            return self._union(nodes)
        if k == "tag":
            return self._union(self.index.by_tag.get(alias.name, {}).values())
        if k == "autogroup":
            ag = alias.name[len("autogroup:"):]
            if ag == "member":
                return self._union(self.index.untagged.values())
            if ag == "tagged":
                return self._union(self.index.tagged.values())
            if ag == "internet":
                return THE_INTERNET
            if ag == "danger-all":
                return _ALL
            if ag in ("owner", "admin"):
                # Without roles in the topology, the first user owns the tailnet
                # and every user is an admin (as on a fresh Tailscale tailnet).
                users = sorted(self.topology.users, key=lambda u: u.id)
                if ag == "owner":
                    users = users[:1]
                return self._union(n for u in users for n in self.nodes_of_user(u))
            return None
        return IPSet()

    def resolve_all(self, aliases: Iterable[Alias]) -> IPSet:
        out = IPSet()
        for a in aliases:
            r = self.resolve(a)
            if r is not None:
                out = out | r
        return out

    def approved_subnet_routes(self) -> list[str]:
        seen: dict[str, None] = {}
        routed = self.index.routed
        for nid in sorted(routed):
            for r in routed[nid].subnet_routes:
                seen.setdefault(str(r), None)
        return list(seen)

