# -*- test-case-name: tests.control.test_ipalloc -*-
"""
The control plane's in-memory view of nodes and users, kept in step with the store.

Every node mutation goes through :class:`ControlState`: it writes the store
first, then updates the cached row and bumps the node's *generation* (which
invalidates the mapper's cached peer entry). Map building reads only this
cache, so a map never waits for the database and never rescans the world.

Runtime facts that are not stored (online, the capability version of the
last request, when the last session ended, streaming on another instance)
live here too, in :class:`NodeRuntimes`: their one writer, which the notifier,
the poll and register paths and the cluster feed report to, and everyone else reads.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime

import attrs
from twisted.logger import Logger

from headscale_tw.control.ipalloc import IPAllocator
from headscale_tw.control.names import sanitize_hostname, unique_given_name
from headscale_tw.counters import NodeStoreCounters
from headscale_tw.errors import AlreadyExists, NotFound
from headscale_tw.interfaces import IDatabase
from headscale_tw.storage.models import AuditEvent, Node, User

__all__ = ["ControlState", "NodeRuntime", "NodeRuntimes", "TAGGED_DEVICES_USER_ID"]

# The pseudo-user that owns tagged nodes on the wire (Headscale uses the same number).
TAGGED_DEVICES_USER_ID = 2147455555

# Another instance on the same database may take an address or name at the same
# moment; the store's unique constraints catch it and create_node tries again.
_CREATE_ATTEMPTS = 16
_ADDRESS_TAKEN = ("a node with IPv4 address ", "a node with IPv6 address ")
_NAME_TAKEN = "a node with given name "


class _TakenNames:
    """The given names in use, as a container view: no copy of every name per registration."""

    def __init__(self, owners: dict[str, int], also: Collection[str] = (), exclude: int | None = None) -> None:
        self._owners = owners
        self._also = also
        self._exclude = exclude

    def __contains__(self, name: object) -> bool:
        owner = self._owners.get(name) if isinstance(name, str) else None
        return (owner is not None and owner != self._exclude) or name in self._also


@attrs.define
class NodeRuntime:
    """
    Per-node facts that live only in memory.

    Read it anywhere; write it only through :class:`NodeRuntimes` (``state.runtime``),
    which also bumps the node's generation when a peer-visible fact changes.
    """

    cap: int = 0
    online: bool | None = None
    disconnected_at: datetime | None = None
    #: The node streams on another instance sharing the database (cluster mode).
    elsewhere: bool = False
    #: When it came online, as the ``node_sessions`` table says (cluster mode; HA election rank).
    online_since: datetime | None = None


class NodeRuntimes(Mapping[int, NodeRuntime]):
    """
    The one writer of every node's :class:`NodeRuntime`; a read-only mapping for everyone else.

    The notifier reports streams opening and ending (:meth:`came_online`,
    :meth:`disconnected`, :meth:`went_offline`), map and register requests
    report the capability version (:meth:`set_cap`), the cluster feed and the
    node sessions table report streams on other instances (:meth:`set_elsewhere`,
    :meth:`set_online`, :meth:`set_online_since`). Mapper, policy, lifecycle,
    admin services and metrics only read. ``touch(node_id)`` bumps a node's
    generation (its cached peer entry is stale); ``now()`` is the clock.
    """

    def __init__(self, touch: Callable[[int], None], now: Callable[[], datetime]) -> None:
        self._facts: dict[int, NodeRuntime] = {}
        self._touch = touch
        self._now = now

    def __getitem__(self, node_id: int) -> NodeRuntime:
        return self._facts[node_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._facts)

    def __len__(self) -> int:
        return len(self._facts)

    def track(self, node_id: int) -> None:
        """Start keeping facts for a node entering the cache (kept if already there)."""
        self._facts.setdefault(node_id, NodeRuntime())

    def drop(self, node_id: int) -> None:
        """Forget a node leaving the cache."""
        self._facts.pop(node_id, None)

    def came_online(self, node_id: int) -> bool:
        """A stream opened here; return whether the node was not online before."""
        runtime = self._facts[node_id]
        runtime.disconnected_at = None
        if runtime.online:
            return False
        runtime.online = True
        self._touch(node_id)
        return True

    def disconnected(self, node_id: int) -> None:
        """The node's last stream here ended (it stays online through the offline grace)."""
        self._facts[node_id].disconnected_at = self._now()

    def went_offline(self, node_id: int) -> None:
        """The offline grace passed with no stream: the node is offline."""
        self._facts[node_id].online = False
        self._touch(node_id)

    def set_cap(self, node_id: int, cap: int) -> bool:
        """Record the capability version of the node's latest request (0: not given); return whether it changed."""
        runtime = self._facts[node_id]
        if not cap or cap == runtime.cap:
            return False
        runtime.cap = cap
        self._touch(node_id)
        return True

    def set_elsewhere(self, node_id: int, elsewhere: bool) -> None:
        """Record whether the node also streams on another instance sharing the database."""
        self._facts[node_id].elsewhere = elsewhere

    def set_online(self, node_id: int, online: bool) -> bool:
        """Online as the other instances' streams say (cluster feed); return whether ``online`` changed.

        Going offline records the time (``disconnected_at``); coming online clears it.
        """
        runtime = self._facts[node_id]
        if online:
            runtime.disconnected_at = None
        elif runtime.online:
            runtime.disconnected_at = self._now()
        if runtime.online == online:
            return False
        runtime.online = online
        self._touch(node_id)
        return True

    def set_online_since(self, node_id: int, since: datetime | None) -> bool:
        """Record when the node came online (the HA election's rank in cluster mode); return whether it moved."""
        runtime = self._facts[node_id]
        if runtime.online_since == since:
            return False
        runtime.online_since = since
        return True


class ControlState:
    """Cached nodes and users over an ``IDatabase``; ``await load()`` before use.

    ``now`` is a callable returning an aware UTC ``datetime`` (from the injected clock).
    """

    log = Logger()

    def __init__(self, db: IDatabase, allocator: IPAllocator, now: Callable[[], datetime]) -> None:
        self.db = db
        self.allocator = allocator
        self.now = now
        self.nodes: dict[int, Node] = {}
        self.users: dict[int, User] = {}
        #: Facts about each node that live only in memory (online, capability version, ...).
        self.runtime = NodeRuntimes(self.touch, now)
        self._generation: dict[int, int] = {}
        self._by_node_key: dict[str, int] = {}
        self._by_machine_key: dict[str, int] = {}
        self._names: dict[str, int] = {}
        #: Every node up to this id had its addresses read from the store (see ``_read_taken_addresses``).
        self._addresses_read_to = 0
        #: Writes and their durations, the start-up load, change batches (``headscale_nodestore_*``).
        self.counters = NodeStoreCounters()

    def _seconds_since(self, start: datetime) -> float:
        return max(0.0, (self.now() - start).total_seconds())

    # -- loading -----------------------------------------------------------

    async def load(self) -> None:
        """Read every user and node from the store and mark their addresses used."""
        start = self.now()
        for user in await self.db.users.list():
            self.users[user.id] = user
        for node in await self.db.nodes.list():
            self._index(node)
        self.allocator.load(await self.db.nodes.allocated_ips())
        self._addresses_read_to = max(self.nodes, default=0)
        self.counters.snapshot_seconds.observe(self._seconds_since(start))

    def _index(self, node: Node, previous: Node | None = None) -> None:
        if previous is not None:
            self._by_node_key.pop(previous.node_key, None)
            self._by_machine_key.pop(previous.machine_key, None)
            self._names.pop(previous.given_name, None)
        self.nodes[node.id] = node
        self._by_node_key[node.node_key] = node.id
        self._by_machine_key[node.machine_key] = node.id
        self._names[node.given_name] = node.id
        self.runtime.track(node.id)
        self._generation[node.id] = self._generation.get(node.id, 0) + 1

    # -- reads -------------------------------------------------------------

    def get(self, node_id: int) -> Node:
        """The cached ``Node``; ``NotFound`` if absent."""
        try:
            return self.nodes[node_id]
        except KeyError:
            raise NotFound(f"node {node_id} not found") from None

    def by_node_key(self, node_key: str) -> Node | None:
        node_id = self._by_node_key.get(node_key)
        return None if node_id is None else self.nodes[node_id]

    def by_machine_key(self, machine_key: str) -> Node | None:
        node_id = self._by_machine_key.get(machine_key)
        return None if node_id is None else self.nodes[node_id]

    def generation(self, node_id: int) -> int:
        """A counter bumped on every change of the node's peer-visible data."""
        return self._generation.get(node_id, 0)

    def touch(self, node_id: int) -> None:
        """Bump the generation for a change that is not a stored field (online, cap, expiry passing)."""
        if node_id in self.nodes:
            self._generation[node_id] = self._generation.get(node_id, 0) + 1

    def free_name(self, hostname: str, exclude: int | None = None) -> str:
        """A unique given name derived from ``hostname``."""
        return unique_given_name(sanitize_hostname(hostname), _TakenNames(self._names, exclude=exclude))

    def name_owner(self, given_name: str) -> int | None:
        return self._names.get(given_name)

    async def user(self, user_id: int) -> User:
        """The cached ``User``, read from the store on first use."""
        user = self.users.get(user_id)
        if user is None:
            user = await self.db.users.get(user_id)
            self.users[user_id] = user
        return user

    async def refresh_user(self, user_id: int) -> None:
        """Re-read a user after an admin change (rename) and mark its nodes changed."""
        self.users[user_id] = await self.db.users.get(user_id)
        for node in self.nodes.values():
            if node.user_id == user_id:
                self.touch(node.id)

    def remember_user(self, user: User) -> None:
        """Cache a user created after start (so the cache counts every user this instance made)."""
        self.users[user.id] = user

    def forget_user(self, user_id: int) -> None:
        """Drop a deleted user from the cache (it owns no node, so no node changes)."""
        self.users.pop(user_id, None)

    # -- writes ------------------------------------------------------------

    async def create_node(self, audit_event: Callable[[Node], AuditEvent | None] | None = None, **fields) -> Node:
        """Allocate addresses and a unique name, insert, cache and return the new ``Node``.

        When the store reports that the chosen address or name was taken meanwhile
        (another instance on the same database), the next free one is tried.
        ``audit_event`` builds the creation's audit event from the stored node; it is
        written in the node's own transaction (see :meth:`~headscale_tw.control.audit.AuditLog.node_event`).
        """
        hostname = fields.get("hostname", "")
        given = dict(fields)
        start = self.now()
        given.setdefault("created_at", start)
        taken_names: set[str] = set()
        collided = False
        for _ in range(_CREATE_ATTEMPTS):
            attempt = dict(given)
            attempt.setdefault(
                "given_name", unique_given_name(sanitize_hostname(hostname), _TakenNames(self._names, taken_names))
            )
            ipv4, ipv6 = self.allocator.allocate(scatter=collided)
            attempt.setdefault("ipv4", ipv4)
            attempt.setdefault("ipv6", ipv6)
            try:
                node = await self.db.nodes.create(Node(id=0, **attempt), audit_event)
            except AlreadyExists as e:
                reason = str(e)
                if reason.startswith(_ADDRESS_TAKEN) and "ipv4" not in given and "ipv6" not in given:
                    # Someone else holds one of them: mark it, and what was created since we last looked, as used.
                    self.log.info("address taken concurrently, trying the next: {reason}", reason=reason)
                    await self._read_taken_addresses(ipv4, ipv6)
                    collided = True  # the other instance allocates from the same place: go elsewhere
                    continue
                self.allocator.release(ipv4, ipv6)
                if reason.startswith(_NAME_TAKEN) and "given_name" not in given:
                    taken_names.add(attempt["given_name"])
                    continue
                raise
            except BaseException:
                self.allocator.release(ipv4, ipv6)
                raise
            self._index(node)
            self.counters.count_operation("put", self._seconds_since(start))
            return node
        raise AlreadyExists(f"no free address or name for {hostname!r} after {_CREATE_ATTEMPTS} attempts")

    async def _read_taken_addresses(self, *mine: str | None) -> None:
        """After the store refused one of ``mine`` as taken: mark as used the addresses of nodes created
        since the last read (another instance's, which its change feed has not brought yet) and
        whichever of ``mine`` a node holds; give back the rest of ``mine``.

        Reads only the new rows, not every node's addresses: two workers under load collide thousands
        of times, and a full read costs one row per node each time.
        """
        mine_given = [address for address in mine if address]
        used, highest = await self.db.nodes.addresses_after(self._addresses_read_to, mine_given)
        self._addresses_read_to = max(self._addresses_read_to, highest)  # another create may have read further
        self.allocator.release(*(address for address in mine_given if address not in used))
        self.allocator.load(used)

    async def backfill_addresses(self) -> list[tuple[Node, list[str]]]:
        """Bring every node's addresses in line with the configured prefixes (``nodes backfillips``).

        A node missing an address of a configured family gets a free one; an
        address of a family with no configured prefix is removed, as Headscale
        does. Nodes already in line are not written, so a second run changes
        nothing. Returns each changed node with what changed, in Headscale's
        words (``assigned IPv4 "100.64.0.3" to Node(3) "laptop"``).
        """
        families = self.allocator.families()
        changed: list[tuple[Node, list[str]]] = []
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            fields: dict[str, str | None] = {}
            notes: list[str] = []
            for version, current in ((4, node.ipv4), (6, node.ipv6)):
                name = f"ipv{version}"
                if version in families and not current:
                    fields[name] = None  # filled in by _store_new_addresses
                elif version not in families and current:
                    fields[name] = None
                    notes.append(f'removing IPv{version} "{current}" from Node({node.id}) "{node.hostname}"')
            if not fields:
                continue
            wanted: list[int] = [v for v in (4, 6) if v in families and f"ipv{v}" in fields]
            node, assigned = await self._store_new_addresses(node, fields, wanted)
            notes[:0] = [f'assigned IPv{v} "{a}" to Node({node.id}) "{node.hostname}"' for v, a in assigned]
            changed.append((node, notes))
        return changed

    async def _store_new_addresses(self, node: Node, fields: dict[str, str | None],
                                   wanted: list[int]) -> tuple[Node, list[tuple[int, str]]]:
        """Write ``fields`` plus a fresh address of each ``wanted`` family, retrying when another
        instance took one meanwhile (the store's unique constraint says so)."""
        for _ in range(_CREATE_ATTEMPTS):
            attempt = dict(fields)
            assigned = []
            try:
                for version in wanted:
                    address = self.allocator.allocate_family(version)
                    assigned.append((version, address))
                    attempt[f"ipv{version}"] = address
            except BaseException:
                self.allocator.release(*(a for _, a in assigned))
                raise
            try:
                updated = await self.update_node(node.id, **attempt)
            except AlreadyExists as e:
                if not str(e).startswith(_ADDRESS_TAKEN):
                    self.allocator.release(*(a for _, a in assigned))
                    raise
                self.log.info("address taken concurrently, trying the next: {reason}", reason=str(e))
                await self._read_taken_addresses(*(a for _, a in assigned))
                continue
            except BaseException:
                self.allocator.release(*(a for _, a in assigned))
                raise
            self.allocator.release(*(a for a in (node.ipv4, node.ipv6)
                                     if a and a not in (updated.ipv4, updated.ipv6)))
            return updated, assigned
        raise AlreadyExists(f"no free address for node {node.id} after {_CREATE_ATTEMPTS} attempts")

    # -- cluster: rows changed by another instance ---------------------------

    def cache_node(self, node: Node) -> Node | None:
        """Put a row read from the store into the cache (no store write); return the previous row."""
        previous = self.nodes.get(node.id)
        if previous is not None:
            self.allocator.release(previous.ipv4, previous.ipv6)
        self._index(node, previous)
        self.allocator.load([node.ipv4 or "", node.ipv6 or ""])
        return previous

    def uncache_node(self, node_id: int) -> Node | None:
        """Drop a node from the cache (deleted here or elsewhere) and free its addresses; return the old row."""
        node = self.nodes.pop(node_id, None)
        if node is None:
            return None
        self.runtime.drop(node_id)
        self._generation.pop(node_id, None)
        if self._by_node_key.get(node.node_key) == node_id:
            del self._by_node_key[node.node_key]
        if self._by_machine_key.get(node.machine_key) == node_id:
            del self._by_machine_key[node.machine_key]
        if self._names.get(node.given_name) == node_id:
            del self._names[node.given_name]
        self.allocator.release(node.ipv4, node.ipv6)
        return node

    async def update_node(self, node_id: int, **fields) -> Node:
        """Update stored fields and the cache; return the new ``Node``."""
        previous = self.get(node_id)
        start = self.now()
        node = await self.db.nodes.update(node_id, **fields)
        self._index(node, previous)
        self.counters.count_operation("update", self._seconds_since(start))
        return node

    async def delete_node(self, node_id: int) -> Node:
        """Delete from the store and the cache, free its addresses; return the old row."""
        node = self.get(node_id)
        start = self.now()
        try:
            await self.db.nodes.delete(node_id)
        except NotFound:
            pass
        self.uncache_node(node_id)
        self.counters.count_operation("delete", self._seconds_since(start))
        return node
