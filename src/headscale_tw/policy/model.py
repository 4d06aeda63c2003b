# -*- test-case-name: tests.policy.test_parse -*-
"""
Data model of a parsed policy and of the tailnet it is applied to.

Everything here is a frozen dataclass so compiled results can be cached and
shared. The policy side (:obj:`Policy` and its parts) is produced by
:obj:`headscale_tw.policy.parse.parse_policy`; the topology side (:obj:`User`,
:obj:`Node`, :obj:`Topology`) is built by the control plane from its database rows or
by the conformance runner from a scenario file.
"""

from __future__ import annotations

__all__ = [
    "PolicyError",
    "Alias",
    "PortRange",
    "ANY_PORTS",
    "Destination",
    "ProtoPorts",
    "ACL",
    "Grant",
    "SSHRule",
    "NodeAttr",
    "AutoApprovers",
    "PolicyTest",
    "SSHPolicyTest",
    "Policy",
    "User",
    "Node",
    "Topology",
    "PROTOCOL_NUMBERS",
    "IDP_GROUP_PREFIX",
    "IDP_GROUP_NAME_MAX",
]

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Optional, Union

from .ipset import IPSet

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class PolicyError(ValueError):
    """The policy is invalid; the message names the place (``acls[2].dst[0]: ...``)."""


# -- policy -------------------------------------------------------------------

#: Alias kinds: ``*``, ``user``, ``group``, ``idpgroup``, ``tag``, ``autogroup``, ``host``, ``prefix``.
ALIAS_KINDS = ("*", "user", "group", "idpgroup", "tag", "autogroup", "host", "prefix")

IDP_GROUP_PREFIX = "idpgroup:"
"""How a policy names the users whose last OIDC sign-in carried a group: ``idpgroup:<name>``.

Not a Tailscale alias (Tailscale's own groups are ``group:``), so a policy
written for Tailscale never means it by accident."""

IDP_GROUP_NAME_MAX = 256
"""The longest IdP group name, in characters, a policy may name and a sign-in keeps."""


@dataclass(frozen=True)
class Alias:
    """One entry of a ``src``/``dst``/``target`` list, as written (trimmed)."""

    kind: str
    name: str
    network: Optional[Network] = None

    def __str__(self) -> str:
        return self.name

    def is_autogroup(self, which: str) -> bool:
        return self.kind == "autogroup" and self.name == f"autogroup:{which}"

    @property
    def prefix(self) -> Network:
        """The network of a ``prefix`` alias (an error for any other kind)."""
        if self.network is None:
            raise ValueError(f"{self.name!r} is a {self.kind}, not an address or prefix")
        return self.network


PortRange = tuple[int, int]
ANY_PORTS: PortRange = (0, 65535)


@dataclass(frozen=True)
class Destination:
    """An ACL ``dst`` entry: an alias plus its port ranges."""

    alias: Alias
    ports: tuple[PortRange, ...]


#: Protocol names accepted in ``proto`` / grant ``ip`` and their IANA numbers.
PROTOCOL_NUMBERS: Mapping[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "ipv4": 4,
    "ip-in-ip": 4,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": 58,
    "sctp": 132,
    "fc": 133,
}


@dataclass(frozen=True)
class ProtoPorts:
    """A grant ``ip`` entry: a protocol (``""`` = default set) and port ranges."""

    proto: str
    ports: tuple[PortRange, ...]

    def ip_proto(self) -> Optional[list[int]]:
        """The ``IPProto`` list for the wire, or None when omitted."""
        if not self.proto:
            return None
        if self.proto in PROTOCOL_NUMBERS:
            return [PROTOCOL_NUMBERS[self.proto]]
        return [int(self.proto)]


@dataclass(frozen=True)
class ACL:
    """An ``acls`` entry (the only action is ``accept``)."""

    proto: str
    src: tuple[Alias, ...]
    dst: tuple[Destination, ...]


@dataclass(frozen=True)
class Grant:
    """A ``grants`` entry; ACLs are converted into grants before compiling."""

    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    ip: tuple[ProtoPorts, ...] = ()
    app: Optional[Mapping[str, Any]] = field(default=None, hash=False, compare=True)
    via: tuple[str, ...] = ()


@dataclass(frozen=True)
class SSHRule:
    """An ``ssh`` entry. ``check_period`` is seconds, 0 for ``always``, None if unset."""

    action: str
    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    users: tuple[str, ...]
    check_period: Optional[float] = None
    accept_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeAttr:
    """A ``nodeAttrs`` entry: capabilities given to the target nodes."""

    target: tuple[Alias, ...]
    attr: tuple[str, ...]
    ip_pool: tuple[Network, ...] = ()


@dataclass(frozen=True)
class AutoApprovers:
    """``autoApprovers``: owners that may self-approve routes / exit nodes."""

    routes: tuple[tuple[Network, tuple[Alias, ...]], ...] = ()
    exit_node: tuple[Alias, ...] = ()


@dataclass(frozen=True)
class PolicyTest:
    """A ``tests`` entry: from ``src``, each ``accept`` dst must be allowed, each ``deny`` not."""

    src: str
    proto: str
    accept: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass(frozen=True)
class SSHPolicyTest:
    """An ``sshTests`` entry: login users that must be accepted/checked/denied."""

    src: str
    dst: tuple[str, ...]
    accept: tuple[str, ...] = ()
    check: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """
    A validated policy. ``acls``/``grants``/``ssh`` are None when the key is
    absent (absent and empty differ: no ``acls`` and no ``grants`` = allow all).
    """

    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    hosts: Mapping[str, Network] = field(default_factory=dict, hash=False)
    tag_owners: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    acls: Optional[tuple[ACL, ...]] = None
    grants: Optional[tuple[Grant, ...]] = None
    ssh: Optional[tuple[SSHRule, ...]] = None
    node_attrs: tuple[NodeAttr, ...] = ()
    auto_approvers: AutoApprovers = AutoApprovers()
    tests: tuple[PolicyTest, ...] = ()
    ssh_tests: tuple[SSHPolicyTest, ...] = ()
    randomize_client_port: bool = False


# -- topology -----------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A tailnet user; policies name users by email or ``name@``, and by ``idpgroup:`` for ``idp_groups``."""

    id: int
    name: str
    email: str = ""
    idp_groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Node:
    """
    What the policy engine needs to know about a node.

    ``user_id`` is ignored for tagged nodes (tags replace user ownership).
    ``approved_routes`` are the admin/auto-approved prefixes; served routes are
    ``advertised_routes`` ∩ ``approved_routes``. ``primary_routes`` are the
    subnet prefixes this node is currently primary for (HA election happens in
    the control plane, not here).

    The derived address and route tuples are computed once per instance
    (the node is frozen): views read them for every peer pair.
    """

    id: int
    hostname: str
    user_id: Optional[int] = None
    tags: tuple[str, ...] = ()
    ipv4: Optional[ipaddress.IPv4Address] = None
    ipv6: Optional[ipaddress.IPv6Address] = None
    advertised_routes: tuple[Network, ...] = ()
    approved_routes: tuple[Network, ...] = ()
    primary_routes: tuple[Network, ...] = ()
    online: bool = True

    # Derived values are cached on the (immutable) instance: the policy engine asks for them
    # once per rule and node. cached_property writes the instance __dict__ directly, which a
    # frozen dataclass allows; equality and hashing still use the fields only.

    @property
    def is_tagged(self) -> bool:
        return bool(self.tags)

    @cached_property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)

    @cached_property
    def address_prefixes(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(a) for a in self.addresses)

    @cached_property
    def address_set(self) -> IPSet:
        """:attr:`addresses` as an :class:`~headscale_tw.policy.ipset.IPSet` (a rule index rebuild asks for every node's)."""
        return IPSet.from_addresses(self.addresses)

    @cached_property
    def prefix_strings(self) -> tuple[str, ...]:
        """``address_prefixes`` as strings (``100.64.0.1/32``), as sent in ``AllowedIPs``."""
        return tuple(str(p) for p in self.address_prefixes)

    @cached_property
    def prefix_strings_v6(self) -> tuple[str, ...]:
        """The IPv6 ones of :attr:`prefix_strings` (peers of a ``disable-ipv4`` node)."""
        return tuple(str(p) for p in self.address_prefixes if p.version == 6)

    @cached_property
    def _approved_set(self) -> frozenset[Network]:
        return frozenset(self.approved_routes)

    @cached_property
    def subnet_routes(self) -> tuple[Network, ...]:
        """Advertised and approved routes, excluding exit routes."""
        approved = self._approved_set
        return tuple(r for r in self.advertised_routes if r.prefixlen != 0 and r in approved)

    @cached_property
    def subnet_route_set(self) -> frozenset[Network]:
        """:attr:`subnet_routes` as a set, for membership tests."""
        return frozenset(self.subnet_routes)

    @cached_property
    def primary_route_set(self) -> frozenset[Network]:
        """:attr:`primary_routes` as a set, for membership tests."""
        return frozenset(self.primary_routes)

    @cached_property
    def route_text(self) -> dict[Network, str]:
        """The text of each advertised route (views of this node ask for it once per viewer)."""
        return {r: str(r) for r in self.advertised_routes}

    @cached_property
    def exit_routes(self) -> tuple[Network, ...]:
        """Advertised and approved exit routes (0.0.0.0/0, ::/0)."""
        approved = self._approved_set
        return tuple(r for r in self.advertised_routes if r.prefixlen == 0 and r in approved)

    @cached_property
    def is_exit_node(self) -> bool:
        return bool(self.exit_routes)


@dataclass(frozen=True)
class Topology:
    """The users and nodes a policy is compiled against."""

    users: tuple[User, ...]
    nodes: tuple[Node, ...]

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)
