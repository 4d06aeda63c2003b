# -*- test-case-name: tests.control.test_notifier,tests.nodesapi.test_api -*-
"""
Node operations for the admin API and CLI.

Every change goes through :class:`ControlState` (store first, then cache)
and is announced to peers through the notifier.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from headscale_tw.control import limits
from headscale_tw.control.audit import NO_AUDIT, AuditLog, Target
from headscale_tw.control.names import validate_given_name
from headscale_tw.control.registration import Registrar
from headscale_tw.control.routes import announced_routes, normalize_approval, parse_prefix, served_routes
from headscale_tw.control.slices import in_slices
from headscale_tw.control.state import ControlState
from headscale_tw.control.users import UserAdmin, quoted
from headscale_tw.errors import AlreadyExists, InvalidInput, NotFound
from headscale_tw.interfaces import INodeNotifier, IPreAuthKeyStore, ITailnetPolicy
from headscale_tw.storage.models import Node, PreAuthKey, User

__all__ = ["NodeAdmin", "NodeDetails", "RouteInfo", "validate_tag", "validate_debug_auth_id", "MAX_TAG"]


#: A tag is ``tag:`` plus a name of at most one DNS label.
MAX_TAG = limits.TAG_MAX_LENGTH
_TAG_NAME = re.compile(r"[a-z][a-z0-9-]*", re.ASCII)
#: Auth ids ``debug create-node --key`` accepts: ours (24 letters and digits, as
#: :func:`~headscale_tw.control.authrequests.new_auth_id` makes) or Headscale's.
_DEBUG_AUTH_ID = re.compile(r"[A-Za-z0-9]{24}|hskey-authreq-[A-Za-z0-9_-]{24}", re.ASCII)


def validate_tag(tag: object, field: str = "tags") -> str:
    """Tailscale's tag rules (``tailcfg.CheckTag``) with Headscale's lower case, at most :data:`MAX_TAG`
    characters: ``tag:``, a letter, then letters, digits and ``-``; ``InvalidInput`` naming the rule."""
    shown = tag if isinstance(tag, str) and len(tag) <= 64 else (tag[:64] + "..." if isinstance(tag, str) else
                                                                  f"<{type(tag).__name__}>")
    if not isinstance(tag, str) or not tag.startswith("tag:") or len(tag) == 4:
        raise InvalidInput(f"invalid tag {shown!r}: tags must start with 'tag:' and have a name")
    if len(tag) > MAX_TAG:
        raise InvalidInput(f"{field}: at most {MAX_TAG} characters are allowed, got {len(tag)}")
    if tag.lower() != tag:
        raise InvalidInput(f"invalid tag {shown!r}: tags must be lowercase")
    if any(c.isspace() for c in tag):
        raise InvalidInput(f"invalid tag {shown!r}: tags must not contain spaces")
    if not _TAG_NAME.fullmatch(tag[4:]):
        raise InvalidInput(f"invalid tag {shown!r}: a tag name starts with a letter and has only letters, "
                           "digits and '-'")
    return tag


def validate_debug_auth_id(text: object, field: str = "key") -> str:
    """An auth id for ``debug create-node``: ``InvalidInput`` naming the two accepted forms."""
    if not isinstance(text, str) or not _DEBUG_AUTH_ID.fullmatch(text):
        raise InvalidInput(f"{field}: expected an auth id of 24 letters and digits, or Headscale's "
                           "\"hskey-authreq-\" followed by 24 URL-safe characters")
    return text


@attrs.frozen
class RouteInfo:
    """A node's routes for ``nodes list-routes``: all tuples of prefix strings."""

    node_id: int
    name: str
    announced: tuple[str, ...]
    approved: tuple[str, ...]
    served: tuple[str, ...]  # announced and approved
    primary: tuple[str, ...]  # subnet prefixes this node currently routes (HA primary)


@attrs.frozen
class NodeDetails:
    """What the admin API shows of a node: the row, its owner and key, and runtime facts."""

    node: Node
    user: User | None
    key: PreAuthKey | None
    key_user: User | None
    online: bool
    subnet_routes: tuple[str, ...]  # HA primary subnets plus approved exit routes


def auth_id_of(text: str) -> str:
    """The auth id in ``text``: the id itself, or the whole ``.../register/<id>`` URL the client printed."""
    return text.strip().rstrip("/").rpartition("/")[2]


class NodeAdmin:
    """List, describe, expire, rename, delete, tag, move and register nodes.

    ``users`` (a :class:`~headscale_tw.control.users.UserAdmin`) resolves the
    user named in ``move_to`` and ``register`` and the owners in ``describe``;
    ``preauthkeys`` is the pre-auth key store (``describe`` shows each node's key);
    ``audit`` records every change (``node.*``, ``auth.approve``, ``auth.reject``;
    ``auth register`` is recorded by the registrar as ``node.register``).
    """

    def __init__(self, state: ControlState, notifier: INodeNotifier, registrar: Registrar, users: UserAdmin,
                 preauthkeys: IPreAuthKeyStore, clock: IReactorTime | None = None, audit: AuditLog = NO_AUDIT,
                 *, policy: ITailnetPolicy) -> None:
        self.state = state
        self.notifier = notifier
        self.policy = policy
        self.registrar = registrar
        self.users = users
        self.preauthkeys = preauthkeys
        #: Cuts the parsing of a long approval into reactor turns (None: all at once).
        self.clock = clock
        self.audit = audit

    async def _record(self, action: str, node: Node, detail: dict | None = None) -> None:
        await self.audit.record(action, Target("node", str(node.id), node.given_name), detail=detail)

    async def describe(self, nodes: Iterable[Node]) -> list[NodeDetails]:
        """Each node with its owner, pre-auth key (and the key's owner), online state and served routes."""
        nodes = list(nodes)
        users = {u.id: u for u in await self.users.list()}
        keys = {k.id: k for k in await self.preauthkeys.list()} if any(n.auth_key_id for n in nodes) else {}
        policy = self.policy
        out = []
        for node in nodes:
            key = keys.get(node.auth_key_id) if node.auth_key_id is not None else None
            exits = tuple(str(r) for r in served_routes(node) if r.prefixlen == 0)
            out.append(NodeDetails(
                node=node,
                user=users.get(node.user_id) if node.user_id is not None else None,
                key=key,
                key_user=users.get(key.user_id) if key is not None and key.user_id is not None else None,
                online=self.is_online(node.id),
                subnet_routes=tuple(policy.primary_routes(node.id)) + exits,
            ))
        return out

    def list(self, user_id: int | None = None) -> list[Node]:
        """Every node (of one user if given), ordered by id."""
        return [n for _, n in sorted(self.state.nodes.items()) if user_id is None or n.user_id == user_id]

    async def list_of(self, user: str | int | None = None) -> builtins.list[Node]:
        """:meth:`list` for a user named by name or id (``NotFound`` naming it), or every node."""
        return self.list((await self.users.find(user)).id if user else None)

    def get(self, node_id: int) -> Node:
        """The node; ``NotFound`` if absent."""
        return self.state.get(node_id)

    def is_online(self, node_id: int) -> bool:
        """Whether the node currently has a map session (or is inside its reconnect grace)."""
        runtime = self.state.runtime.get(node_id)
        return bool(runtime and runtime.online)

    async def expire(self, node_id: int, at: datetime | None = None) -> Node:
        """Set the node's key expiry (default: now); peers see it expired."""
        self.state.get(node_id)
        node = await self.state.update_node(node_id, expiry=at or self.state.now())
        self.notifier.node_changed(node_id)
        await self._record("node.expire", node, {"expiry": node.expiry.isoformat() if node.expiry else None})
        return node

    async def disable_expiry(self, node_id: int) -> Node:
        """Clear the node's key expiry: it never expires (``nodes expire --disable``)."""
        self.state.get(node_id)
        node = await self.state.update_node(node_id, expiry=None)
        await self._record("node.disable_expiry", node)
        self.notifier.node_changed(node_id)
        return node

    async def move(self, node_id: int, user_id: int) -> Node:
        """
        Give a user-owned node to another user (``nodes move``). A tagged node
        is owned by its tags, so it cannot be moved (``InvalidInput``); an
        unknown user is ``NotFound``.
        """
        current = self.state.get(node_id)
        if current.tags or current.user_id is None:
            raise InvalidInput(
                f"node {node_id} is tagged ({', '.join(current.tags) or 'no user'}); "
                "tagged nodes are owned by their tags and cannot be moved to a user"
            )
        user = await self.state.user(user_id)
        if current.user_id == user.id:
            return current
        node = await self.state.update_node(node_id, user_id=user.id)
        if await self.policy.auto_approve(node_id):
            node = self.state.get(node_id)
        self.notifier.node_changed(node_id)
        await self._record("node.move", node, {"from_user_id": current.user_id, "to_user": user.name})
        return node

    async def rename(self, node_id: int, new_name: str) -> Node:
        """Set the MagicDNS given name (kept even when the hostname changes later)."""
        name = validate_given_name(new_name)
        self.state.get(node_id)
        owner = self.state.name_owner(name)
        if owner is not None and owner != node_id:
            raise AlreadyExists(f"a node named {name!r} already exists")
        node = await self.state.update_node(node_id, given_name=name, given_name_auto=False)
        self.notifier.node_changed(node_id)
        await self._record("node.rename", node)
        return node

    async def delete(self, node_id: int) -> Node:
        """Delete the node, free its addresses; peers get ``PeersRemoved``."""
        node = await self.state.delete_node(node_id)
        self.notifier.node_removed(node_id)
        await self._record("node.delete", node)
        return node

    async def set_tags(self, node_id: int, tags: Iterable[str]) -> Node:
        """
        Replace the node's ACL tags (each ``tag:<name>``). With a policy, every
        tag must be declared in ``tagOwners``. A node no user owns (registered
        with a tagged key or tags) must keep at least one tag.
        """
        if isinstance(tags, str):
            raise InvalidInput("tags must be a list of tag:<name> strings")
        tags = tuple(sorted({validate_tag(t) for t in tags}))
        policy = self.policy
        undefined = [t for t in tags if not policy.defines_tag(t)]
        if undefined:
            raise InvalidInput(f"tags {', '.join(undefined)} not defined in the policy's tagOwners")
        current = self.state.get(node_id)
        if not tags and current.user_id is None:
            raise InvalidInput(f"node {node_id} is owned by its tags only; it must keep at least one tag")
        node = await self.state.update_node(node_id, tags=tags)
        if await policy.auto_approve(node_id):
            node = self.state.get(node_id)
        self.notifier.node_changed(node_id)
        await self._record("node.tag", node, {"tags": list(tags)})
        return node

    async def approve_routes(self, node_id: int, routes: Iterable[str]) -> Node:
        """
        Set the node's approved routes (replacing the list; empty clears it).
        Approving ``0.0.0.0/0`` or ``::/0`` approves both (exit node).
        Routes need not be announced yet; they are served once announced.
        """
        if isinstance(routes, str):
            routes = [r for r in routes.split(",") if r.strip()]
        wanted = limits.check_count(list(routes), limits.ROUTES_MAX, "approve routes: routes")
        nets: list = []

        def parse(r) -> None:
            nets.append(parse_prefix(limits.check_length(r, limits.PREFIX_MAX_LENGTH, "approve routes: a route")
                                     if isinstance(r, str) else r, "approve routes"))

        await in_slices(wanted, parse, self.clock)  # up to 1,024 prefixes: a slice per reactor turn
        self.state.get(node_id)
        node = await self.state.update_node(node_id, approved_routes=normalize_approval(nets))
        self.notifier.node_changed(node_id)
        await self._record("node.approve_routes", node, {"routes": [str(r) for r in node.approved_routes]})
        return node

    def routes(self, node_id: int | None = None) -> builtins.list[RouteInfo]:
        """Announced/approved/served/primary routes of one node, or of every node that has any."""
        nodes = [self.state.get(node_id)] if node_id is not None else [n for _, n in sorted(self.state.nodes.items())]
        policy = self.policy
        out = []
        for node in nodes:
            announced = tuple(str(r) for r in announced_routes(node))
            if node_id is None and not announced and not node.approved_routes:
                continue
            out.append(
                RouteInfo(
                    node_id=node.id,
                    name=node.given_name,
                    announced=announced,
                    approved=tuple(node.approved_routes),
                    served=tuple(str(r) for r in served_routes(node)),
                    primary=policy.primary_routes(node.id),
                )
            )
        return out

    async def move_to(self, node_id: int, user: str | int) -> Node:
        """:meth:`move` to a user named by name or id; ``NotFound`` for the node first, then the user."""
        self.state.get(node_id)
        found = await self.users.find(user)
        return await self.move(node_id, found.id)

    async def register(self, auth_id: str, user: str | int) -> Node:
        """``headscale auth register --auth-id <id> --user <name or id>``.

        ``auth_id`` may be the whole URL the client printed (``.../register/<id>``).
        """
        auth_id = auth_id_of(auth_id)
        if await self.registrar.get_pending(auth_id) is None:  # missing, expired, rejected or finished
            raise NotFound(f"no pending registration with auth id {quoted(auth_id)} "
                           "(it may have expired; run tailscale up again)")
        found = await self.users.find(user)
        return await self.registrar.complete(auth_id, found.name)

    async def backfill_ips(self) -> builtins.list[str]:
        """``headscale nodes backfillips``: give every node an address of each configured prefix it
        lacks (and drop addresses of a family no longer configured); peers and the node are told.
        Returns what changed, one line each, in Headscale's words; a second run returns ``[]``."""
        changes = []
        for node, notes in await self.state.backfill_addresses():
            self.notifier.node_changed(node.id)
            changes.extend(notes)
        return changes

    async def debug_create(self, name: str, user: str | int, auth_id: str, routes: Iterable[str],
                           source: str = "") -> NodeDetails:
        """``headscale debug create-node``: a pending registration under ``auth_id`` for a made-up
        machine called ``name``, to be finished with ``headscale auth register --auth-id``.

        As Headscale, the answer describes the node-to-be (id 0, no addresses yet); the user must
        exist but is chosen again by ``auth register``. ``routes`` are announced once registered.
        """
        auth_id = validate_debug_auth_id(auth_id)
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("name: a host name is required")
        limits.check_length(name, limits.HOSTNAME_MAX_LENGTH, "name")
        if isinstance(routes, str):
            raise InvalidInput("routes must be a list of prefixes")
        routes = limits.check_count(list(routes), limits.ROUTES_MAX, "routes")
        prefixes = tuple(str(parse_prefix(limits.check_length(r, limits.PREFIX_MAX_LENGTH, "routes: a route")
                                          if isinstance(r, str) else r, "routes")) for r in routes)
        owner = await self.users.find(user)
        row = await self.registrar.open_debug(auth_id, name, prefixes, source)
        hostinfo: dict[str, Any] = {"Hostname": name, "OS": "TestOS"}
        if prefixes:
            hostinfo["RoutableIPs"] = list(prefixes)
        node = Node(id=0, machine_key=row.machine_key, node_key=row.node_key, hostname=name, given_name="",
                    user_id=owner.id, hostinfo=hostinfo, register_method="cli")
        return NodeDetails(node=node, user=owner, key=None, key_user=None, online=False, subnet_routes=())

    async def approve(self, auth_id: str) -> None:
        """``headscale auth approve --auth-id <id>``: for SSH check requests (a registration is refused)."""
        auth_id = auth_id_of(auth_id)
        await self.registrar.approve(auth_id)
        await self.audit.record("auth.approve", Target("auth_request", auth_id))

    async def reject(self, auth_id: str) -> None:
        """``headscale auth reject --auth-id <id>``: the waiting client is told its login was refused."""
        auth_id = auth_id_of(auth_id)
        row = await self.registrar.reject(auth_id)
        await self.audit.record("auth.reject", Target("auth_request", auth_id, row.hostname))
