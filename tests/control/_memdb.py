"""An in-memory IDatabase for the control tests (until the real SQLite fixture is used)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import attrs
from zope.interface import implementer

from headscale_tw.errors import AlreadyExists, NotFound
from headscale_tw.interfaces import IDatabase, INodeStore, IPreAuthKeyStore, IServerStateStore, IUserStore
from headscale_tw.storage.models import Node, PreAuthKey, User


@implementer(IUserStore)
class MemUsers:
    def __init__(self):
        self.rows: dict[int, User] = {}
        self.next = 1

    async def create(self, name, display_name="", email="", provider="", provider_identifier="", now=None):
        if any(u.name == name for u in self.rows.values()):
            raise AlreadyExists(name)
        user = User(id=self.next, name=name, display_name=display_name, email=email, created_at=now)
        self.rows[user.id] = user
        self.next += 1
        return user

    async def get(self, user_id):
        try:
            return self.rows[user_id]
        except KeyError:
            raise NotFound(f"user {user_id}") from None

    async def get_by_name(self, name):
        for user in self.rows.values():
            if user.name == name:
                return user
        raise NotFound(f"user {name!r} not found")

    async def list(self):
        return sorted(self.rows.values(), key=lambda u: u.id)

    async def rename(self, user_id, new_name, now=None):
        self.rows[user_id] = attrs.evolve(await self.get(user_id), name=new_name)
        return self.rows[user_id]

    async def delete(self, user_id):
        del self.rows[user_id]


@implementer(INodeStore)
class MemNodes:
    def __init__(self):
        self.rows: dict[int, Node] = {}
        self.next = 1
        self.writes = 0

    def _check_unique(self, node, exclude=None):
        for other in self.rows.values():
            if other.id == exclude:
                continue
            if (
                other.machine_key == node.machine_key
                or other.node_key == node.node_key
                or other.given_name == node.given_name
            ):
                raise AlreadyExists("duplicate node")

    async def create(self, node):
        node = attrs.evolve(node, id=self.next)
        self._check_unique(node)
        self.rows[node.id] = node
        self.next += 1
        self.writes += 1
        return node

    async def get(self, node_id):
        try:
            return self.rows[node_id]
        except KeyError:
            raise NotFound(f"node {node_id}") from None

    async def get_by_machine_key(self, machine_key):
        return next((n for n in self.rows.values() if n.machine_key == machine_key), None)

    async def get_by_node_key(self, node_key):
        return next((n for n in self.rows.values() if n.node_key == node_key), None)

    async def list(self, user_id=None):
        return [n for _, n in sorted(self.rows.items()) if user_id is None or n.user_id == user_id]

    async def update(self, node_id, **fields):
        node = attrs.evolve(await self.get(node_id), **fields)
        self._check_unique(node, exclude=node_id)
        self.rows[node_id] = node
        self.writes += 1
        return node

    async def delete(self, node_id):
        await self.get(node_id)
        del self.rows[node_id]

    async def allocated_ips(self):
        out = set()
        for node in self.rows.values():
            out.update(ip for ip in (node.ipv4, node.ipv6) if ip)
        return out


@implementer(IPreAuthKeyStore)
class MemKeys:
    def __init__(self):
        self.rows: dict[int, PreAuthKey] = {}
        self.next = 1

    async def create(self, user_id, prefix, key_hash, reusable, ephemeral, tags, expiration, now=None):
        key = PreAuthKey(
            id=self.next,
            prefix=prefix,
            key_hash=key_hash,
            user_id=user_id,
            reusable=reusable,
            ephemeral=ephemeral,
            tags=tuple(tags),
            expiration=expiration,
            created_at=now,
        )
        self.rows[key.id] = key
        self.next += 1
        return key

    async def get(self, key_id):
        return self.rows[key_id]

    async def get_by_prefix(self, prefix):
        return next((k for k in self.rows.values() if k.prefix == prefix), None)

    async def list(self, user_id=None):
        return list(self.rows.values())

    async def mark_used(self, key_id):
        self.rows[key_id] = attrs.evolve(self.rows[key_id], used=True)
        return self.rows[key_id]

    async def expire(self, key_id, now):
        self.rows[key_id] = attrs.evolve(self.rows[key_id], expiration=now)
        return self.rows[key_id]

    async def delete(self, key_id):
        del self.rows[key_id]


@implementer(IServerStateStore)
class MemServerState:
    def __init__(self):
        self.values = {}

    async def get(self, name):
        return self.values.get(name)

    async def get_or_create(self, name, factory):
        return self.values.setdefault(name, factory())


@implementer(IDatabase)
class MemDatabase:
    def __init__(self):
        self.users = MemUsers()
        self.nodes = MemNodes()
        self.preauthkeys = MemKeys()
        self.apikeys = None
        self.policies = None
        self.server_state = MemServerState()

    async def close(self):
        pass


async def make_key(db, user_id, text, **options):
    """Store a pre-auth key whose full text is ``text`` (prefix = text) for :func:`lookup_by_text`."""
    defaults = dict(reusable=False, ephemeral=False, tags=(), expiration=None)
    defaults.update(options)
    return await db.preauthkeys.create(user_id, text, hashlib.sha256(text.encode()).digest(), **defaults)


def lookup_by_text(db):
    """A preauth lookup for :class:`Registrar` matching keys made by :func:`make_key`."""

    async def lookup(text):
        row = await db.preauthkeys.get_by_prefix(text)
        if row is None or row.key_hash != hashlib.sha256(text.encode()).digest():
            return None
        return row

    return lookup


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)
