# -*- test-case-name: tests.control.test_notifier -*-
"""
Node operations for the admin API and CLI.

Every change goes through :class:`ControlState` (store first, then cache)
and is announced to peers through the notifier.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from headscale_tw.control.names import validate_given_name
from headscale_tw.control.notifier import MapNotifier
from headscale_tw.control.registration import Registrar
from headscale_tw.control.state import ControlState
from headscale_tw.errors import AlreadyExists, InvalidInput
from headscale_tw.storage.models import Node

__all__ = ["NodeAdmin"]


class NodeAdmin:
    """List, expire, rename, delete, tag and register nodes."""

    def __init__(self, state: ControlState, notifier: MapNotifier, registrar: Registrar) -> None:
        self.state = state
        self.notifier = notifier
        self.registrar = registrar

    def list(self, user_id: int | None = None) -> list[Node]:
        """Every node (of one user if given), ordered by id."""
        return [n for _, n in sorted(self.state.nodes.items()) if user_id is None or n.user_id == user_id]

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
        return node

    async def delete(self, node_id: int) -> Node:
        """Delete the node, free its addresses; peers get ``PeersRemoved``."""
        node = await self.state.delete_node(node_id)
        self.notifier.node_removed(node_id)
        return node

    async def set_tags(self, node_id: int, tags: Iterable[str]) -> Node:
        """Replace the node's ACL tags (each ``tag:<name>``)."""
        tags = tuple(sorted(set(tags)))
        for tag in tags:
            if not isinstance(tag, str) or not tag.startswith("tag:") or len(tag) <= 4:
                raise InvalidInput(f"invalid tag {tag!r}: tags look like tag:<name>")
        self.state.get(node_id)
        node = await self.state.update_node(node_id, tags=tags)
        self.notifier.node_changed(node_id)
        return node

    async def register(self, auth_id: str, user_name: str) -> Node:
        """``headscale auth register --auth-id <id> --user <name>``."""
        return await self.registrar.complete(auth_id, user_name)
