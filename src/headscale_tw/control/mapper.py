# -*- test-case-name: tests.control.test_mapper -*-
"""
Builds MapResponse messages (JSON bytes) from :class:`ControlState`.

* The **first message** of a session is complete: ``Node`` (self, with its
  ``CapMap``), ``DERPMap``, ``Peers`` (sorted by ID), ``DNSConfig``,
  ``Domain``, ``PacketFilter``, ``UserProfiles``, ``CollectServices:false``,
  ``ControlTime`` and ``Debug.DisableLogTail``.
* Each node's **peer entry** (a ``tailcfg.Node`` as peers see it) is
  serialized once per generation of that node and the bytes are reused in
  every full map and delta (``serializations`` counts the work).
* **Deltas** are small messages (``PeersChanged``, ``PeersRemoved``,
  ``PeersChangedPatch``, ``OnlineChange``/``PeerSeenChange``, self ``Node``)
  built once and shared by every session that needs them.

Messages are assembled from pre-encoded byte pieces so a full map for one
node costs one join over cached entries, not a re-encoding of every peer.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from datetime import datetime
from urllib.parse import urlsplit

from headscale_tw.control._wire import format_time
from headscale_tw.control.framing import encode_json
from headscale_tw.control.names import fqdn
from headscale_tw.control.state import TAGGED_DEVICES_USER_ID, ControlState

__all__ = ["Mapper", "embedded_derp_map", "dns_config", "ALLOW_ALL_FILTER", "SELF_CAPABILITIES"]

ALLOW_ALL_FILTER = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]

# Node attributes every node gets about itself (presence = enabled).
SELF_CAPABILITIES = {
    "https://tailscale.com/cap/is-admin": [],
    "https://tailscale.com/cap/file-sharing": [],
    "https://tailscale.com/cap/ssh": [],
    "disable-captive-portal-detection": [],
    "default-auto-update": [False],
}


def _server_host_port(server_url: str) -> tuple[str, int]:
    parts = urlsplit(server_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port


def embedded_derp_map(config) -> dict:
    """The default DERP map: one region for the embedded DERP server at ``server_url``."""
    derp = config.derp.server
    host, port = _server_host_port(config.server_url)
    stun_port = 3478
    if derp.stun_listen_addr:
        try:
            stun_port = int(derp.stun_listen_addr.rpartition(":")[2])
        except ValueError:
            pass
    node = {
        "Name": str(derp.region_id),
        "RegionID": derp.region_id,
        "HostName": host,
        "STUNPort": stun_port,
        "DERPPort": port,
    }
    if derp.ipv4:
        node["IPv4"] = derp.ipv4
    if derp.ipv6:
        node["IPv6"] = derp.ipv6
    region = {
        "RegionID": derp.region_id,
        "RegionCode": derp.region_code,
        "RegionName": derp.region_name,
        "Nodes": [node],
    }
    return {"Regions": {str(derp.region_id): region}}


def dns_config(config) -> dict:
    """``tailcfg.DNSConfig`` from ``config.dns`` (Headscale's mapping)."""
    dns = config.dns
    out: dict = {}
    resolvers = [{"Addr": addr} for addr in dns.nameservers.global_]
    if resolvers:
        out["Resolvers" if dns.override_local_dns else "FallbackResolvers"] = resolvers
    if dns.nameservers.split:
        out["Routes"] = {domain: [{"Addr": a} for a in addrs] for domain, addrs in dns.nameservers.split}
    domains = []
    if dns.magic_dns and dns.base_domain:
        domains.append(dns.base_domain.strip("."))
    domains.extend(d.strip(".") for d in dns.search_domains)
    if domains:
        out["Domains"] = domains
    if dns.magic_dns:
        out["Proxied"] = True
    if dns.extra_records:
        out["ExtraRecords"] = [{"Name": r.name, "Type": r.type, "Value": r.value} for r in dns.extra_records]
    return out


class Mapper:
    """Serializes nodes and maps.

    ``derp_map`` and ``packet_filter`` are providers: ``derp_map()`` returns the
    DERPMap dict, ``packet_filter(node)`` a list of FilterRules (allow-all by default).
    """

    def __init__(
        self,
        state: ControlState,
        config,
        derp_map: Callable[[], dict] | None = None,
        packet_filter: Callable[[object], list] | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.derp_map = derp_map or (lambda: embedded_derp_map(config))
        self.packet_filter = packet_filter or (lambda node: ALLOW_ALL_FILTER)
        self.base_domain = config.dns.base_domain if config.dns.magic_dns else ""
        self.domain = _server_host_port(config.server_url)[0]
        self._dns_bytes = encode_json(dns_config(config))
        self._cache: dict[int, tuple[int, bytes]] = {}
        self.serializations: collections.Counter[int] = collections.Counter()

    # -- nodes -------------------------------------------------------------

    def wire_user_id(self, node) -> int:
        """``Node.User`` on the wire: the owner, or the tagged-devices pseudo-user."""
        return node.user_id if node.user_id is not None and not node.tags else TAGGED_DEVICES_USER_ID

    def node_dict(self, node, self_view: bool = False) -> dict:
        """The ``tailcfg.Node`` for ``node`` as a dict."""
        runtime = self.state.runtime.get(node.id)
        now = self.state.now()
        addresses = []
        if node.ipv4:
            addresses.append(f"{node.ipv4}/32")
        if node.ipv6:
            addresses.append(f"{node.ipv6}/128")
        hostinfo = node.hostinfo or {}
        net_info = hostinfo.get("NetInfo") or {}
        home_derp = net_info.get("PreferredDERP") or 0
        out: dict = {
            "ID": node.id,
            "StableID": f"n{node.id}",
            "Name": fqdn(node.given_name, self.base_domain),
            "User": self.wire_user_id(node),
            "Key": node.node_key,
            "KeyExpiry": format_time(node.expiry),
            "Machine": node.machine_key,
        }
        if node.disco_key:
            out["DiscoKey"] = node.disco_key
        out["Addresses"] = addresses
        out["AllowedIPs"] = list(addresses)
        out["Endpoints"] = list(node.endpoints)
        out["HomeDERP"] = home_derp
        out["Hostinfo"] = hostinfo
        out["Created"] = format_time(node.created_at)
        if runtime is not None and runtime.cap:
            out["Cap"] = runtime.cap
        if node.tags:
            out["Tags"] = list(node.tags)
        online = runtime.online if runtime is not None else None
        if online is not None:
            out["Online"] = online
        if not online and node.last_seen is not None:
            out["LastSeen"] = format_time(node.last_seen)
        out["MachineAuthorized"] = True
        if node.expiry is not None and node.expiry <= now:
            out["Expired"] = True
        if self_view:
            out["CapMap"] = SELF_CAPABILITIES
        return out

    def peer_entry(self, node_id: int) -> bytes:
        """The serialized peer view of a node, cached until its generation changes."""
        generation = self.state.generation(node_id)
        cached = self._cache.get(node_id)
        if cached is not None and cached[0] == generation:
            return cached[1]
        data = encode_json(self.node_dict(self.state.get(node_id)))
        self.serializations[node_id] += 1
        self._cache[node_id] = (generation, data)
        return data

    def forget(self, node_id: int) -> None:
        """Drop a deleted node's cached entry."""
        self._cache.pop(node_id, None)

    def self_entry(self, node_id: int) -> bytes:
        return encode_json(self.node_dict(self.state.get(node_id), self_view=True))

    def user_profile(self, node) -> dict:
        if node.user_id is None or node.tags:
            return {"ID": TAGGED_DEVICES_USER_ID, "LoginName": "tagged-devices", "DisplayName": "Tagged Devices"}
        user = self.state.users.get(node.user_id)
        if user is None:
            return {"ID": node.user_id, "LoginName": str(node.user_id), "DisplayName": str(node.user_id)}
        profile = {
            "ID": user.id,
            "LoginName": user.email or user.name,
            "DisplayName": user.display_name or user.name,
        }
        if user.profile_pic_url:
            profile["ProfilePicURL"] = user.profile_pic_url
        return profile

    def _profiles(self, nodes: Iterable) -> bytes:
        seen: dict[int, dict] = {}
        for node in nodes:
            profile = self.user_profile(node)
            seen.setdefault(profile["ID"], profile)
        return encode_json([seen[k] for k in sorted(seen)])

    # -- messages ----------------------------------------------------------

    def full_map(self, node_id: int, now: datetime | None = None) -> bytes:
        """The complete first message for ``node_id``'s session."""
        node = self.state.get(node_id)
        peer_ids = sorted(self.state.peer_ids(node_id))
        peers = b",".join(self.peer_entry(pid) for pid in peer_ids)
        profiles = self._profiles([node] + [self.state.nodes[pid] for pid in peer_ids])
        now = now or self.state.now()
        return b"".join(
            [
                b'{"Node":',
                self.self_entry(node_id),
                b',"DERPMap":',
                encode_json(self.derp_map()),
                b',"Peers":[',
                peers,
                b'],"DNSConfig":',
                self._dns_bytes,
                b',"Domain":',
                encode_json(self.domain),
                b',"CollectServices":false,"PacketFilter":',
                encode_json(self.packet_filter(node)),
                b',"UserProfiles":',
                profiles,
                b',"ControlTime":',
                encode_json(format_time(now.replace(microsecond=0))),
                b',"Debug":{"DisableLogTail":true}}',
            ]
        )

    def peers_changed(self, node_ids: Iterable[int]) -> bytes:
        """``PeersChanged`` (full entries) plus the owners' ``UserProfiles``."""
        ids = sorted(node_ids)
        entries = b",".join(self.peer_entry(i) for i in ids)
        profiles = self._profiles(self.state.nodes[i] for i in ids)
        return b'{"PeersChanged":[' + entries + b'],"UserProfiles":' + profiles + b"}"

    def peers_removed(self, node_ids: Iterable[int]) -> bytes:
        return encode_json({"PeersRemoved": sorted(node_ids)})

    def peers_patched(self, patches: list[dict]) -> bytes:
        """``PeersChangedPatch``; each patch has ``NodeID`` plus changed fields."""
        return encode_json({"PeersChangedPatch": sorted(patches, key=lambda p: p["NodeID"])})

    def online_changed(self, node_id: int, online: bool) -> bytes:
        message: dict = {"OnlineChange": {str(node_id): online}}
        if not online:
            message["PeerSeenChange"] = {str(node_id): True}
        return encode_json(message)

    def self_update(self, node_id: int) -> bytes:
        """A delta carrying only the (changed) self ``Node``."""
        node = self.state.get(node_id)
        return b'{"Node":' + self.self_entry(node_id) + b',"UserProfiles":' + self._profiles([node]) + b"}"

    def patch_for(self, node, fields: Iterable[str]) -> dict:
        """A ``PeersChangedPatch`` entry for the named fields of ``node``."""
        patch: dict = {"NodeID": node.id}
        for name in fields:
            if name == "Endpoints":
                patch["Endpoints"] = list(node.endpoints)
            elif name == "DERPRegion":
                patch["DERPRegion"] = ((node.hostinfo or {}).get("NetInfo") or {}).get("PreferredDERP") or 0
            elif name == "DiscoKey":
                patch["DiscoKey"] = node.disco_key
            elif name == "Key":
                patch["Key"] = node.node_key
            elif name == "KeyExpiry":
                patch["KeyExpiry"] = format_time(node.expiry)
            elif name == "Cap":
                patch["Cap"] = self.state.runtime[node.id].cap
        return patch
