# -*- test-case-name: tests.policy.test_compile -*-
"""
Compile a policy against a topology into per-node packet filters, peer sets,
SSH policies and node capabilities.

The work is split in two stages so the control plane can recompute cheaply:

1. :obj:`CompiledPolicy` (built by :obj:`PolicyEngine.compile`) resolves every alias
   of every grant (ACLs are turned into grants first) to address sets once
   per (policy, topology) pair. Grants that do not depend on the viewing node
   become ready-made, unreduced filter rules.
2. Per-node views (:obj:`CompiledPolicy.filter_for`, :obj:`CompiledPolicy.peers_for`,
   :obj:`CompiledPolicy.ssh_policy_for`, :obj:`CompiledPolicy.cap_map_for`) only add
   the node-specific parts (``autogroup:self``, ``via``) and reduce the rules
   to what concerns that node. Results are memoised per node id.

When a node changes, build a new :obj:`CompiledPolicy` from the same engine
(alias resolution is linear in the number of nodes) and ask only the affected
nodes again.
"""


from __future__ import annotations

__all__ = [
    "FilterRule",
    "NetPortRange",
    "CapGrant",
    "Match",
    "PolicyEngine",
    "CompiledPolicy",
    "FILTER_ALLOW_ALL",
]

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

from .grants import _CompiledGrant, _GrantCompiler, _self_rules, _via_rules, acl_to_grants
from .incremental import DependencyMemo, TopologyIndex, grant_keys
from .ipset import IPSet, Network
from .model import Grant, Node, Policy, Topology
from .offered import OfferedRoutes
from .parse import parse_policy
from .reduce import (
    _overlaps_any,  # noqa: F401  (control/views.py and viewindex.py import it from here)
    _viewer_masks,
    can_access,
    reduce_rules,
)
from .resolve import Resolver
from .rules import DEFAULT_ACL, FILTER_ALLOW_ALL, CapGrant, FilterRule, Match, NetPortRange, _match_of, merge_rules

#: Node capabilities Tailscale adds alongside some ``nodeAttrs`` attributes.
COMPANION_NODE_CAPS = {
    "funnel": (
        "https://tailscale.com/cap/funnel-ports?ports=443,8443,10000",
        "https://tailscale.com/cap/warn-funnel-no-https",
    ),
}


@dataclass(frozen=True)
class PeerView:
    """A peer as a node sees it: AllowedIPs and PrimaryRoutes (strings)."""

    node: Node
    allowed_ips: tuple[str, ...]
    primary_routes: tuple[str, ...]


class PolicyEngine:
    """
    A parsed policy, ready to be compiled against topologies.

    ``PolicyEngine(None)`` (or empty text) is "no policy": every node may
    reach every node.

    :raises PolicyError: if the policy text is invalid.
    """

    def __init__(self, policy: Union[str, bytes, dict, Policy, None], server_url: str = "https://unused",
                 domains: Optional[Iterable[str]] = None) -> None:
        self.policy: Optional[Policy] = policy if isinstance(policy, Policy) else parse_policy(policy)
        self.server_url = server_url
        self._domains = None if domains is None else frozenset(d.lower() for d in domains)
        self._grants: Optional[tuple[Grant, ...]] = None

    def tailnet_domains(self, topology: Topology) -> frozenset[str]:
        """
        Domains usable in ``localpart:*@<domain>``: those given to the
        constructor, else the email domain of the first user (the owner).
        """
        if self._domains is not None:
            return self._domains
        users = sorted((u for u in topology.users if "@" in u.email), key=lambda u: u.id)
        if not users:
            return frozenset()
        return frozenset([users[0].email.rpartition("@")[2].lower()])

    def compile(self, topology: Topology) -> "CompiledPolicy":
        """Resolve the policy against ``topology`` (do this once per change)."""
        return CompiledPolicy(self, topology)

    def grant_list(self) -> tuple[Grant, ...]:
        """The policy's grants followed by its ACLs turned into grants (computed once)."""
        if self._grants is None:
            grants: list[Grant] = []
            if self.policy is not None:
                grants = list(self.policy.grants or ())
                acls = self.policy.acls
                if acls is None and self.policy.grants is None:
                    # Neither section: Tailscale applies its default "* -> *:*" ACL.
                    acls = (DEFAULT_ACL,)
                for acl in acls or ():
                    grants.extend(acl_to_grants(acl))
            self._grants = tuple(grants)
        return self._grants

    def check(self, topology: Topology) -> None:
        """
        Run the checks that need users and nodes: ``localpart:`` domains,
        ``tests`` and ``sshTests``.

        :raises PolicyError: if one fails (the policy must then be rejected).
        """
        if self.policy is not None:
            self.check_compiled(self.compile(topology))

    def check_compiled(self, cp: "CompiledPolicy") -> None:
        """:meth:`check` on a compilation already made (e.g. by an IncrementalCompiler)."""
        from .checks import check_policy

        if self.policy is not None:
            check_policy(cp)

    # conveniences mirroring CompiledPolicy, for one-off callers
    def filter_for(self, node: Node, topology: Topology) -> list[FilterRule]:
        return self.compile(topology).filter_for(node)

    def peers_for(self, node: Node, topology: Topology) -> list[PeerView]:
        return self.compile(topology).peers_for(node)

    def ssh_policy_for(self, node: Node, topology: Topology) -> Optional[dict]:
        return self.compile(topology).ssh_policy_for(node)

    def cap_map_for(self, node: Node, topology: Topology) -> dict[str, Any]:
        return self.compile(topology).cap_map_for(node)


class CompiledPolicy:
    """A policy resolved against one topology; per-node views are memoised."""

    def __init__(self, engine: PolicyEngine, topology: Topology, index: Optional[TopologyIndex] = None,
                 memo: Optional[DependencyMemo] = None, grant_compiler=None,
                 offered: Optional[OfferedRoutes] = None) -> None:
        self.engine = engine
        self.policy = engine.policy
        self.topology = topology
        self.resolver = Resolver(self.policy or Policy(), topology, index=index, memo=memo)
        self._unreduced: dict[int, list[FilterRule]] = {}
        self._matches: dict[int, list[Match]] = {}
        self._filters: dict[int, list[FilterRule]] = {}
        #: Each router's offered routes with their rule masks (an incremental compiler's carries over).
        self.offered = offered if offered is not None else OfferedRoutes()
        self.allow_all = self.policy is None
        self.grants: list[_CompiledGrant] = []
        grants = engine.grant_list()
        if grants:
            gc = _GrantCompiler(self.resolver)
            memo = self.resolver.memo
            resolver = self.resolver

            def compiled(i: int, grant: Grant):
                # A grant's rules follow only the aliases it names (and, with "*", the routes).
                return memo.get(("grant", i), lambda: (grant_keys(grant, resolver.alias_keys), gc.compile(grant)))

            if grant_compiler is not None:  # an IncrementalCompiler recompiling only stale grants
                every = grant_compiler(grants, resolver, compiled)
            else:
                every = [compiled(i, g) for i, g in enumerate(grants)]
            self.grants = [cg for cg in every if cg is not None]
        self.per_node = any(cg.is_self or cg.is_via for cg in self.grants)
        # (grant, resolved sources, destination prefixes, has autogroup:internet)
        # for via steering of peer routes; None when no grant uses via.
        self._via_grants: Optional[list[tuple[Grant, IPSet, list[Network], bool]]] = None
        if self.policy is not None and any(g.via for g in self.policy.grants or ()):
            self._via_grants = []
            for g in engine.grant_list():
                dst_nets: list[Network] = []
                for d in g.dst:
                    if d.is_autogroup("internet") or d.is_autogroup("self"):
                        continue
                    ips = self.resolver.resolve(d)
                    if ips is not None:
                        dst_nets.extend(ips.networks())
                self._via_grants.append((g, self.resolver.resolve_all(g.src), dst_nets,
                                         any(d.is_autogroup("internet") for d in g.dst)))
        self._global: Optional[list[FilterRule]] = None

    # filters ---------------------------------------------------------------

    def unreduced_rules(self, node: Node) -> list[FilterRule]:
        """All rules relevant for computing this node's view, before reduction."""
        if self.allow_all:
            return list(FILTER_ALLOW_ALL)
        if not self.per_node:
            if self._global is None:
                self._global = merge_rules(r for cg in self.grants for r in cg.rules)
            return self._global
        if node.id not in self._unreduced:
            rules: list[FilterRule] = []
            for cg in self.grants:
                rules.extend(cg.rules)
                if cg.is_self:
                    rules.extend(_self_rules(cg, node, self.resolver))
                if cg.is_via:
                    rules.extend(_via_rules(cg, node))
            self._unreduced[node.id] = merge_rules(rules)
        return self._unreduced[node.id]

    def matches_for(self, node: Node) -> list[Match]:
        if not self.per_node and not self.allow_all:
            key = -1
        else:
            key = node.id
        if key not in self._matches:
            self._matches[key] = list(map(_match_of, self.unreduced_rules(node)))
        return self._matches[key]

    def filter_for(self, node: Node) -> list[FilterRule]:
        """The packet filter rules to send to ``node`` (``PacketFilters.base``)."""
        if node.id not in self._filters:
            self._filters[node.id] = reduce_rules(node, self.unreduced_rules(node), self.resolver.node_set(node))
        return self._filters[node.id]

    def filter_wire_for(self, node: Node) -> list[dict]:
        return [r.to_wire() for r in self.filter_for(node)]

    # peers -----------------------------------------------------------------

    def sees(self, a: Node, b: Node) -> bool:
        """Do ``a`` and ``b`` get each other as peers (symmetric)?"""
        sa, sb = self.resolver.node_set(a), self.resolver.node_set(b)
        ma = self.matches_for(a)
        mb = self.matches_for(b)
        return (
            can_access(a, b, ma, sa, sb)
            or can_access(b, a, mb, sb, sa)
            or (ma is not mb and (can_access(b, a, ma, sb, sa) or can_access(a, b, mb, sa, sb)))
        )

    def peers_for(self, node: Node) -> list[PeerView]:
        """The peers ``node`` may see, sorted by node id, with their routes."""
        out = []
        matches = self.matches_for(node)
        own = self.resolver.node_set(node)
        for peer in sorted(self.topology.nodes, key=lambda n: n.id):
            if peer.id == node.id or not self.sees(node, peer):
                continue
            routes = self.route_texts_for_peer(node, peer, matches, own)
            allowed = self._visible_prefixes(node, peer) + [t for _, t in routes]
            primaries = [t for r, t in routes if r.prefixlen != 0]
            out.append(PeerView(peer, tuple(allowed), tuple(primaries)))
        return out

    def routes_for_peer(self, viewer: Node, peer: Node, matches: Sequence[Match],
                        viewer_set: IPSet) -> list[Network]:
        """The routes of ``peer`` that ``viewer`` gets in the peer's AllowedIPs."""
        return [r for r, _ in self.route_texts_for_peer(viewer, peer, matches, viewer_set)]

    def route_view_key(self, viewer: Node, matches: Sequence[Match], viewer_set: IPSet) -> Optional[tuple]:
        """What decides which of any peer's routes ``viewer`` gets from :meth:`route_texts_for_peer`.

        The bit masks of the rules whose sources, and whose destinations,
        overlap the viewer, and for a viewer serving subnet routes itself
        those routes (an HA secondary is shown who is primary for them):
        viewers with equal keys get the same routes of every peer, so a view
        builder can compute a router's entry once per key instead of once per
        viewer. None when more than that decides (``via`` grants).
        """
        if self._via_grants is not None:
            return None
        masks = _viewer_masks(viewer, matches, viewer_set)
        subnets = viewer.subnet_route_set
        return masks if not subnets else masks + (subnets,)

    def route_texts_for_peer(self, viewer: Node, peer: Node, matches: Sequence[Match],
                             viewer_set: IPSet) -> list[tuple[Network, str]]:
        """:meth:`routes_for_peer` with the text of each route.

        A router may serve many prefixes and this runs for each viewer of it:
        the per-route work (overlap with each rule, text form) is done once
        per peer (:class:`~headscale_tw.policy.offered.OfferedRoutes`), and a viewer without ``via``
        grants or routes of its own costs two integer ANDs per route.
        """
        include, exclude, use_primary = self.via_routes_for_peer(viewer, peer, viewer_set)
        reduced: list[tuple[Network, str]] = []
        offered = self.offered.get(peer, matches)
        if offered:
            src_side, dst_side = _viewer_masks(viewer, matches, viewer_set)
            reduced = [(o.route, o.text) for o in offered if src_side & o.dsts_hit or dst_side & o.srcs_hit]
            if exclude:
                excluded = set(exclude)
                reduced = [pair for pair in reduced if pair[0] not in excluded]
        viewer_subnets = viewer.subnet_route_set
        if not include and not viewer_subnets:
            return reduced
        text = peer.route_text
        kept = {r for r, _ in reduced}
        primary_only = set(use_primary)
        for r in include:
            if r in kept:
                continue
            if r in peer.primary_route_set or r not in primary_only:
                reduced.append((r, text.get(r) or str(r)))
                kept.add(r)
        # co-router visibility: HA secondaries learn who is primary for their prefix
        for r in peer.primary_routes:
            if r in viewer_subnets and r not in kept:
                reduced.append((r, text.get(r) or str(r)))
                kept.add(r)
        return reduced

    def offered_routes(self, peer: Node, matches: Sequence[Match]) -> tuple:
        """``peer``'s primary and exit routes with their rule masks (the same tuple while they hold)."""
        return self.offered.get(peer, matches)

    def via_routes_for_peer(self, viewer: Node, peer: Node, viewer_set: IPSet
                            ) -> tuple[list[Network], list[Network], list[Network]]:
        """Routes a ``via`` grant steers to (include) or away from (exclude) ``peer``."""
        include: list[Network] = []
        exclude: list[Network] = []
        use_primary: list[Network] = []
        if self._via_grants is None or viewer.id == peer.id:
            return include, exclude, use_primary
        matched = []
        for g, src_set, dsts, internet in self._via_grants:
            if not src_set.overlaps(viewer_set):
                continue
            matched.append((g, dsts))
            if not g.via:
                continue
            prefixes = [r for d in dsts for r in peer.subnet_routes if d.version == r.version and d.overlaps(r)]
            if internet and peer.is_exit_node:
                prefixes.extend(peer.exit_routes)
            if not prefixes:
                continue
            if any(t in peer.tags for t in g.via):
                include.extend(prefixes)
            else:
                exclude.extend(prefixes)
        if not include and not exclude:
            return include, exclude, use_primary
        for g, dsts in matched:
            if not g.via:
                continue
            for d in dsts:
                for r in list(include):
                    if d.version != r.version or not d.overlaps(r):
                        continue
                    holders = [n.id for n in self.topology.nodes
                               if any(t in n.tags for t in g.via) and r in n.subnet_route_set]
                    if holders and peer.id != min(holders):
                        include = [x for x in include if x != r]
                        if r not in exclude:
                            exclude.append(r)
        for g, dsts in matched:
            if g.via:
                continue
            for d in dsts:
                for r in include:
                    if d.version == r.version and d.overlaps(r) and r not in use_primary:
                        use_primary.append(r)
                exclude = [r for r in exclude if not (d.version == r.version and d.overlaps(r))]
        return include, exclude, use_primary

    def self_allowed_ips(self, node: Node) -> list[str]:
        """The node's own AllowedIPs: addresses plus every route it serves."""
        text = node.route_text  # each route's text made once per node, shared with its peers' views
        return self._visible_prefixes(node, node) + [
            text.get(r) or str(r) for r in node.subnet_routes + node.exit_routes
        ]

    # route approval ----------------------------------------------------------

    def can_auto_approve(self, node: Node, route: Network) -> bool:
        """May ``node`` have ``route`` approved by ``autoApprovers``?"""
        if self.policy is None:
            return False
        aa = self.policy.auto_approvers
        addrs = node.addresses
        if route.prefixlen == 0:
            return bool(aa.exit_node) and self.resolver.resolve_all(aa.exit_node).contains_any(addrs)
        for prefix, owners in aa.routes:
            if prefix.version == route.version and prefix.prefixlen <= route.prefixlen \
                    and route.subnet_of(prefix):  # type: ignore[arg-type]  # same version, checked first
                if self.resolver.resolve_all(owners).contains_any(addrs):
                    return True
        return False

    def auto_approvable(self, node: Node, routes: Iterable[Network]) -> list[Network]:
        """The ``routes`` that ``node`` may have approved by ``autoApprovers`` (as :meth:`can_auto_approve`).

        Who owns each ``autoApprovers`` entry is resolved once, not once per route.
        """
        if self.policy is None:
            return []
        aa = self.policy.auto_approvers
        addrs = node.addresses
        # (version, length, the prefix's leading bits) of each owned entry: a route is inside
        # one when its own leading bits are the same (integer shifts, not subnet_of per pair).
        owned = [(p.version, p.prefixlen, int(p.network_address) >> (p.max_prefixlen - p.prefixlen), p.max_prefixlen)
                 for p, owners in aa.routes if self.resolver.resolve_all(owners).contains_any(addrs)]
        exit_ok: Optional[bool] = None
        out = []
        for route in routes:
            if route.prefixlen == 0:
                if exit_ok is None:
                    exit_ok = bool(aa.exit_node) and self.resolver.resolve_all(aa.exit_node).contains_any(addrs)
                if exit_ok:
                    out.append(route)
                continue
            version, length, value = route.version, route.prefixlen, int(route.network_address)
            if any(v == version and plen <= length and value >> (bits - plen) == lead
                   for v, plen, lead, bits in owned):
                out.append(route)
        return out

    def auto_approved_routes(self, node: Node) -> tuple[Network, ...]:
        """``node``'s approved routes plus the advertised ones the policy approves."""
        seen = set(node.approved_routes)
        new = [r for r in node.advertised_routes if r not in seen]
        return tuple(node.approved_routes) + tuple(dict.fromkeys(self.auto_approvable(node, new)))

    # ssh / caps ------------------------------------------------------------

    def ssh_policy_for(self, node: Node) -> Optional[dict]:
        """The ``SSHPolicy`` for ``node``, or None when the policy has no ``ssh``."""
        from .ssh import compile_ssh_policy

        return compile_ssh_policy(self, node)

    def cap_map_for(self, node: Node) -> dict[str, Any]:
        """Node capabilities from ``nodeAttrs`` and ``randomizeClientPort``."""
        caps: dict[str, Any] = {}
        if self.policy is None:
            return caps
        if self.policy.randomize_client_port:
            caps["randomize-client-port"] = None
        for na in self.policy.node_attrs:
            if not na.attr:
                continue
            s = self.resolver.resolve_all(na.target)
            if s.contains_any(node.addresses):
                for a in na.attr:
                    caps.setdefault(a, None)
                    for extra in COMPANION_NODE_CAPS.get(a, ()):
                        caps.setdefault(extra, None)
        return caps

    def _visible_prefixes(self, viewer: Node, node: Node) -> list[str]:
        if "disable-ipv4" in self.cap_map_for(viewer) or "disable-ipv4" in self.cap_map_for(node):
            return list(node.prefix_strings_v6)
        return list(node.prefix_strings)  # formatted once per node object, not once per view
