# -*- test-case-name: tests.policy.test_incremental -*-
"""
Recompiling a policy after a few nodes changed, without redoing the rest.

A compilation resolves every alias of every grant against the nodes. When
one node joins, only the aliases that can select it (its tags, its user, the
groups of that user, ``autogroup:member``/``tagged``) resolve differently,
and only the grants naming those aliases compile to different rules.

* :class:`TopologyIndex` groups the nodes the way aliases select them (by
  tag, by user, tagged/untagged, serving subnet routes) and is updated one
  node at a time; each update names the *dependency keys* it changed
  (``("tag", "tag:web")``, ``("user", 3)``, ``("member",)``, ``("tagged",)``,
  ``("routes",)``).
* A change of users' IdP groups alone (a sign-in) changes the keys
  ``("idpgroup", name)`` of the groups gained or lost
  (:func:`idp_group_changes`): only aliases and grants naming those groups
  are resolved again. Any other change of users starts over.
* :class:`DependencyMemo` caches a value (an alias's address set, a compiled
  grant) together with the versions of the keys it was computed from; it is
  reused while none of those keys changed.
* :class:`IncrementalCompiler` owns both for one :class:`PolicyEngine`: the
  caller tells it which nodes were put or removed and asks for a
  :class:`CompiledPolicy`; the result equals a fresh
  ``engine.compile(topology)`` (tests compare them), at a cost that follows
  the aliases and grants the change touched.

A :class:`CompiledPolicy` returned here shares the index with later
compilations: use the newest one only.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Callable, Optional

from .model import IDP_GROUP_PREFIX, Node, Topology, User
from .offered import OfferedRoutes

__all__ = ["TopologyIndex", "DependencyMemo", "IncrementalCompiler", "idp_group_key", "idp_group_changes"]

#: A dependency key: ("tag", name) | ("user", id) | ("idpgroup", name) | ("member",) | ("tagged",) | ("routes",).
Key = tuple


def idp_group_key(token: str) -> Key:
    """The dependency key of an ``idpgroup:<name>`` alias or group member."""
    return ("idpgroup", token[len(IDP_GROUP_PREFIX):])


def idp_group_changes(before: tuple[User, ...], after: tuple[User, ...]) -> Optional[set[Key]]:
    """
    The keys of the IdP groups whose members differ between ``before`` and
    ``after``, when the users differ in nothing else (same ids, names and
    emails, in the same order); None when they do.
    """
    if len(before) != len(after):
        return None
    keys: set[Key] = set()
    for old, new in zip(before, after):
        if (old.id, old.name, old.email) != (new.id, new.name, new.email):
            return None
        if old.idp_groups != new.idp_groups:
            keys.update(("idpgroup", g) for g in old.idp_groups ^ new.idp_groups)
    return keys


def node_keys(node: Node) -> set[Key]:
    """The dependency keys whose selection ``node`` belongs to."""
    keys: set[Key] = set()
    if node.is_tagged:
        keys.add(("tagged",))
        keys.update(("tag", t) for t in node.tags)
    else:
        keys.add(("member",))
        if node.user_id is not None:
            keys.add(("user", node.user_id))
    if node.subnet_routes:
        keys.add(("routes",))
    return keys


class TopologyIndex:
    """
    The nodes of a topology grouped as aliases select them.

    ``by_tag[tag]`` and ``by_user[user_id]`` (untagged nodes only) map node ids
    to nodes, as do ``untagged``, ``tagged`` and ``routed`` (nodes serving
    subnet routes); ``nodes`` holds every node.
    """

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[int, Node] = {}
        self.by_tag: dict[str, dict[int, Node]] = {}
        self.by_user: dict[int, dict[int, Node]] = {}
        self.untagged: dict[int, Node] = {}
        self.tagged: dict[int, Node] = {}
        self.routed: dict[int, Node] = {}
        for node in nodes:
            self._add(node)

    def _add(self, node: Node) -> None:
        nid = node.id
        self.nodes[nid] = node
        if node.is_tagged:
            self.tagged[nid] = node
            for t in node.tags:
                self.by_tag.setdefault(t, {})[nid] = node
        else:
            self.untagged[nid] = node
            if node.user_id is not None:
                self.by_user.setdefault(node.user_id, {})[nid] = node
        if node.subnet_routes:
            self.routed[nid] = node

    def _remove(self, node: Node) -> None:
        nid = node.id
        self.nodes.pop(nid, None)
        self.tagged.pop(nid, None)
        self.untagged.pop(nid, None)
        self.routed.pop(nid, None)
        for t in node.tags:
            members = self.by_tag.get(t)
            if members is not None:
                members.pop(nid, None)
                if not members:
                    del self.by_tag[t]
        if node.user_id is not None:
            members = self.by_user.get(node.user_id)
            if members is not None:
                members.pop(nid, None)
                if not members:
                    del self.by_user[node.user_id]

    def put(self, node: Node) -> set[Key]:
        """Add ``node`` or replace the node with its id; return the keys whose selection changed."""
        old = self.nodes.get(node.id)
        if old is node or old == node:
            return set()
        keys = node_keys(node)
        if old is not None:
            self._remove(old)
            keys |= node_keys(old)
        self._add(node)
        return keys

    def remove(self, node_id: int) -> set[Key]:
        """Drop the node with this id (if any); return the keys whose selection changed."""
        old = self.nodes.get(node_id)
        if old is None:
            return set()
        self._remove(old)
        return node_keys(old)


class DependencyMemo:
    """
    Values cached with the versions of the dependency keys they were computed from.

    :meth:`changed` bumps keys; :meth:`get` returns a cached value only while
    every key it depends on still has the version it had when stored.
    """

    _MISSING = object()

    def __init__(self) -> None:
        self.versions: dict[Key, int] = {}
        self._entries: dict[Hashable, tuple[tuple[tuple[Key, int], ...], Any]] = {}
        self.hits = 0
        self.misses = 0

    def changed(self, keys: Iterable[Key]) -> None:
        """Invalidate every value that depends on one of ``keys``."""
        versions = self.versions
        for k in keys:
            versions[k] = versions.get(k, 0) + 1

    def get(self, item: Hashable, compute: Callable[[], tuple[Iterable[Key], Any]]) -> Any:
        """The value for ``item``; ``compute()`` returns ``(keys, value)`` when it must be (re)computed."""
        entry = self._entries.get(item)
        versions = self.versions
        if entry is not None:
            for k, v in entry[0]:
                if versions.get(k, 0) != v:
                    break
            else:
                self.hits += 1
                return entry[1]
        self.misses += 1
        keys, value = compute()
        self._entries[item] = (tuple((k, versions.get(k, 0)) for k in set(keys)), value)
        return value


class IncrementalCompiler:
    """
    Compiles one engine's policy against a changing set of nodes (see the module docstring).

    Seed it with the users and nodes, then :meth:`put`/:meth:`remove` nodes
    and :meth:`set_users` as they change, and call :meth:`compile`.
    """

    def __init__(self, engine, users: Iterable[User] = (), nodes: Iterable[Node] = ()) -> None:
        self.engine = engine
        self.users: tuple[User, ...] = tuple(users)
        self.index = TopologyIndex(nodes)
        self.memo = DependencyMemo()
        #: Routers' route masks, carried from one compilation to the next while they hold.
        self.offered = OfferedRoutes()
        self._sorted = False
        self._max_id = -1
        self._order: tuple[Node, ...] = ()
        self._fresh = True
        self._changed_since_compile = True
        self.compiles = 0
        #: per grant position: its compiled form from the last compilation (None = compiles to nothing)
        self._grants: Optional[list] = None
        self._grants_by_key: dict[Key, set[int]] = {}
        self._changed_keys: set[Key] = set()
        self.grants_compiled = 0

    def set_users(self, users: Iterable[User]) -> None:
        """
        Replace the users. A change of IdP groups alone invalidates what names
        the groups gained or lost; any other change of users invalidates every
        cached resolution.
        """
        users = tuple(users)
        if users == self.users:
            return
        keys = idp_group_changes(self.users, users)
        self.users = users
        self._fresh = True
        self._changed_since_compile = True
        if keys is None:
            self.memo = DependencyMemo()
            self._grants = None
        else:
            self.memo.changed(keys)
            self._changed_keys |= keys

    def put(self, node: Node) -> None:
        """Add or replace a node."""
        known = node.id in self.index.nodes
        keys = self.index.put(node)
        if keys:
            self.memo.changed(keys)
            self._changed_keys |= keys
            self._fresh = True
            self._changed_since_compile = True
            if not known:
                if node.id < self._max_id:
                    self._sorted = False
                self._max_id = max(self._max_id, node.id)

    def remove(self, node_id: int) -> None:
        """Remove a node (no-op when unknown)."""
        keys = self.index.remove(node_id)
        self.offered.forget(node_id)
        if keys:
            self.memo.changed(keys)
            self._changed_keys |= keys
            self._fresh = True
            self._changed_since_compile = True

    def topology(self) -> Topology:
        """The current users and nodes (nodes sorted by id)."""
        if self._fresh:
            nodes = self.index.nodes
            if not self._sorted:
                ordered = {k: nodes[k] for k in sorted(nodes)}
                nodes.clear()
                nodes.update(ordered)
                self._sorted = True
                self._max_id = max(nodes, default=-1)
            self._order = tuple(nodes.values())
            self._fresh = False
        return Topology(users=self.users, nodes=self._order)

    @property
    def changed(self) -> bool:
        """Whether users or nodes changed since the last :meth:`compile` (a new one would differ)."""
        return self._changed_since_compile

    def compile(self) -> Any:
        """A :class:`~headscale_tw.policy.compile.CompiledPolicy` for the current nodes."""
        from .compile import CompiledPolicy

        self.compiles += 1
        cp = CompiledPolicy(self.engine, self.topology(), index=self.index, memo=self.memo,
                            grant_compiler=self._compile_grants, offered=self.offered)
        self._changed_keys = set()
        self._changed_since_compile = False
        return cp

    def _compile_grants(self, grants, resolver, compile_one) -> list:
        """
        Every grant's compiled form, recompiling only those naming a changed key.

        The first call (and the first after a change of users) compiles all and
        files each grant under its dependency keys.
        """
        if self._grants is None or len(self._grants) != len(grants):
            self._grants_by_key = {}
            out = []
            for i, grant in enumerate(grants):
                keys = grant_keys(grant, resolver.alias_keys)
                for k in keys:
                    self._grants_by_key.setdefault(k, set()).add(i)
                out.append(compile_one(i, grant))
            self.grants_compiled += len(grants)
            self._grants = out
            return out
        out = self._grants
        stale: set[int] = set()
        for k in self._changed_keys:
            stale |= self._grants_by_key.get(k, set())
        for i in stale:
            out[i] = compile_one(i, grants[i])
        self.grants_compiled += len(stale)
        return out


def grant_keys(grant, alias_keys: Callable[[Any], Iterable[Key]]) -> set[Key]:
    """The dependency keys of a grant: those of its aliases, plus routes if it names ``*``."""
    keys: set[Key] = set()
    for a in tuple(grant.src) + tuple(grant.dst):
        keys.update(alias_keys(a))
        if a.kind == "*":
            keys.add(("routes",))
    return keys
