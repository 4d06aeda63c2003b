# -*- test-case-name: tests.control.test_netmap -*-
"""
A client-side network-map applier, applying deltas as tailscaled's control/controlclient/map.go does.

Feed it the raw bytes of a streaming ``/machine/map`` response (LE32 length +
JSON frames, zstd-compressed unless the applier was made for ``PLAIN``); it decodes each message and applies it: the first
non-keep-alive message must carry ``Node``; later messages are deltas
(``PeersRemoved``, ``PeersChanged``, ``PeerSeenChange``, ``OnlineChange``,
``PeersChangedPatch``, absent = unchanged). Used by the control tests and
the load generator to check that a server's stream is coherent.
"""

from __future__ import annotations

from headscale_tw.control.framing import ZSTD, FrameDecoder

__all__ = ["NetmapApplier", "ProtocolViolation"]

_KEEP_IF_ABSENT = (
    "DERPMap",
    "DNSConfig",
    "SSHPolicy",
    "TKAInfo",
    "CollectServices",
    "Health",
    "DisplayMessages",
    "PacketFilter",
    "Debug",
    "ControlTime",
)

_PATCH_FIELDS = {
    "DERPRegion": "HomeDERP",
    "Cap": "Cap",
    "CapMap": "CapMap",
    "Endpoints": "Endpoints",
    "Key": "Key",
    "KeySignature": "KeySignature",
    "DiscoKey": "DiscoKey",
    "Online": "Online",
    "LastSeen": "LastSeen",
    "KeyExpiry": "KeyExpiry",
}


class ProtocolViolation(Exception):
    """The server sent something a real client would reject."""


class NetmapApplier:
    """The client's view of one map session."""

    def __init__(self, encoding: str = ZSTD) -> None:
        self._decoder = FrameDecoder(encoding)
        self.node: dict | None = None
        self.peers: dict[int, dict] = {}
        self.user_profiles: dict[int, dict] = {}
        self.fields: dict = {}
        self.domain = ""
        self.messages: list[dict] = []
        self.keepalives = 0
        self.deltas = 0

    def feed(self, data: bytes) -> list[dict]:
        """Decode and apply whatever complete messages ``data`` finishes."""
        messages = self._decoder.feed(data)
        for message in messages:
            self.apply(message)
        return messages

    def apply(self, message: dict) -> None:
        """Apply one decoded MapResponse."""
        if not isinstance(message, dict):
            raise ProtocolViolation("map message is not a JSON object")
        self.messages.append(message)
        if message.get("KeepAlive"):
            self.keepalives += 1
            return
        if self.node is None:
            if not message.get("Node"):
                raise ProtocolViolation("initial MapResponse lacked node")
        else:
            self.deltas += 1
        if message.get("Node"):
            self.node = message["Node"]
        for key in _KEEP_IF_ABSENT:
            if message.get(key) is not None:
                self.fields[key] = message[key]
        if message.get("Domain"):
            self.domain = message["Domain"]
        for profile in message.get("UserProfiles") or ():
            self.user_profiles[profile["ID"]] = profile
        peers = message.get("Peers")
        if peers:
            self._check_sorted(peers, "Peers")
            self.peers = {p["ID"]: p for p in peers}
        elif peers is not None and self.deltas == 0:
            self.peers = {}
        for node_id in message.get("PeersRemoved") or ():
            self.peers.pop(node_id, None)
        changed = message.get("PeersChanged") or ()
        self._check_sorted(changed, "PeersChanged")
        for peer in changed:
            self.peers[peer["ID"]] = peer
        for key, seen in (message.get("PeerSeenChange") or {}).items():
            peer = self.peers.get(int(key))
            if peer is not None:
                if seen:
                    peer["LastSeen"] = "now"
                else:
                    peer.pop("LastSeen", None)
        for key, online in (message.get("OnlineChange") or {}).items():
            peer = self.peers.get(int(key))
            if peer is not None:
                peer["Online"] = online
        for patch in message.get("PeersChangedPatch") or ():
            peer = self.peers.get(patch.get("NodeID"))
            if peer is None:
                continue
            for wire, field in _PATCH_FIELDS.items():
                if wire in patch:
                    peer[field] = patch[wire]
        self.check()

    @staticmethod
    def _check_sorted(peers, name: str) -> None:
        ids = [p.get("ID") for p in peers]
        if any(not isinstance(i, int) or i <= 0 for i in ids):
            raise ProtocolViolation(f"{name} has an entry without a positive ID")
        if ids != sorted(ids) or len(set(ids)) != len(ids):
            raise ProtocolViolation(f"{name} is not sorted by ID without duplicates")

    def check(self) -> None:
        """The invariants a client relies on."""
        node = self.node
        if node is None:
            raise ProtocolViolation("no map with the self node has arrived")
        for key in ("ID", "StableID", "Name", "Key", "Addresses"):
            if not node.get(key):
                raise ProtocolViolation(f"self node lacks {key}")
        if not node.get("MachineAuthorized"):
            raise ProtocolViolation("self node is not MachineAuthorized")
        if node["ID"] in self.peers:
            raise ProtocolViolation("self node appears among its peers")
        for peer in self.peers.values():
            if not peer.get("DiscoKey") and not peer.get("HomeDERP"):
                # tailscaled drops such peers from its WireGuard config; legal but noted
                continue

    @property
    def packet_filter(self):
        return self.fields.get("PacketFilter")

    @property
    def derp_map(self):
        return self.fields.get("DERPMap")

    @property
    def dns_config(self):
        return self.fields.get("DNSConfig")
