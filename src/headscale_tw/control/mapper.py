# -*- test-case-name: tests.control.test_mapper -*-
"""
Builds MapResponse messages (JSON bytes) from :class:`ControlState`.

* The **first message** of a session is complete: ``Node`` (self, with its
  ``CapMap``), ``DERPMap``, ``Peers`` (sorted by ID), ``DNSConfig``,
  ``Domain``, ``PacketFilter``, ``UserProfiles``, ``CollectServices:false``,
  ``ControlTime`` and ``Debug.DisableLogTail``.
* When nodes may get certificates (``https``: a DNS provider is configured
  and MagicDNS is on) the self ``CapMap`` has ``https`` and each node's
  ``DNSConfig.CertDomains`` holds its own MagicDNS name, which is what
  ``tailscale cert`` checks; that ``DNSConfig`` is then per node, also in
  self-node deltas (a rename changes it).
* Each node's **peer entry** (a ``tailcfg.Node`` as peers see it) is
  serialized once per generation of that node and per ``AllowedIPs`` /
  ``PrimaryRoutes`` variant (viewers the policy lets use different routes
  of a router see different variants; most nodes have one), and the bytes
  are reused in every full map and delta (``serializations`` counts the work).
* Per-node policy results (filter, peers, SSH policy, caps) come from the
  :class:`~headscale_tw.control.policy.TailnetPolicy`.
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
from operator import itemgetter
from urllib.parse import urlsplit

from headscale_tw.control._wire import format_time
from headscale_tw.control.framing import encode_json
from headscale_tw.control.names import cert_domain, fqdn
from headscale_tw.control.policy import ALLOW_ALL_FILTER, TailnetPolicy, Variant
from headscale_tw.control.state import TAGGED_DEVICES_USER_ID, ControlState
from headscale_tw.errors import InvalidInput

_first = itemgetter(0)

__all__ = [
    "Mapper",
    "embedded_derp_map",
    "dns_config",
    "parse_extra_records",
    "ALLOW_ALL_FILTER",
    "SELF_CAPABILITIES",
    "HTTPS_CAPABILITY",
]

# Node attributes every node gets about itself (presence = enabled).
SELF_CAPABILITIES = {
    "https://tailscale.com/cap/is-admin": [],
    "https://tailscale.com/cap/file-sharing": [],
    "https://tailscale.com/cap/ssh": [],
    "disable-captive-portal-detection": [],
    "default-auto-update": [False],
}

#: tailcfg.CapabilityHTTPS: the node may get HTTPS certificates (``tailscale serve --https``).
HTTPS_CAPABILITY = "https"


def _server_host_port(server_url: str) -> tuple[str, int]:
    parts = urlsplit(server_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port


def embedded_derp_map(config) -> dict:
    """The default DERP map: the embedded server's region (see :mod:`headscale_tw.derp.derpmap`).

    The service passes the live map from ``DERPMapProvider``; this default serves
    tests and callers that build a ``Mapper`` on its own.
    """
    from headscale_tw.derp.derpmap import embedded_region

    region = embedded_region(config)
    return {"Regions": {str(region["RegionID"]): region}}


def parse_extra_records(text: str, where: str = "dns.extra_records_path") -> list[dict]:
    """``ExtraRecords`` from the JSON file format (a list of ``{"name","type","value"}``)."""
    import json

    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"{where}: not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: must be a JSON list of records")
    out = []
    for i, record in enumerate(data):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("name", "value")):
            raise InvalidInput(f"{where}[{i}]: needs string fields name and value")
        rtype = record.get("type", "A")
        if not isinstance(rtype, str):
            raise InvalidInput(f"{where}[{i}].type: must be a string")
        out.append({"Name": record["name"], "Type": rtype, "Value": record["value"]})
    return out


def dns_config(config, extra_records: list[dict] | None = None) -> dict:
    """
    ``tailcfg.DNSConfig`` from ``config.dns`` (docs/control.md, *Policy integration*, DNS):
    ``magic_dns`` → ``Proxied``; global nameservers → ``Resolvers`` when
    ``override_local_dns`` else ``FallbackResolvers``; split nameservers →
    ``Routes``; ``Domains`` = base domain + search domains; ``extra_records``
    plus ``extra_records`` read from ``extra_records_path`` → ``ExtraRecords``.
    """
    dns = config.dns
    out: dict = {}
    resolvers = [{"Addr": addr} for addr in dns.nameservers.global_]
    if resolvers:
        out["Resolvers" if dns.override_local_dns else "FallbackResolvers"] = resolvers
    if dns.nameservers.split:
        out["Routes"] = {domain: [{"Addr": a} for a in addrs] for domain, addrs in dns.nameservers.split}
    domains = []
    if dns.base_domain:
        domains.append(dns.base_domain.strip("."))
    domains.extend(d.strip(".") for d in dns.search_domains if d.strip(".") not in domains)
    if domains:
        out["Domains"] = domains
    if dns.magic_dns:
        out["Proxied"] = True
    records = [{"Name": r.name, "Type": r.type, "Value": r.value} for r in dns.extra_records]
    records.extend(extra_records or ())
    if records:
        out["ExtraRecords"] = records
    return out


class Mapper:
    """Serializes nodes and maps.

    ``derp_map()`` returns the DERPMap dict; ``policy`` is the
    :class:`TailnetPolicy` giving each node's filter, peers and routes
    (the builder passes the one the notifier uses). ``https`` offers nodes
    certificates for their MagicDNS names (only when MagicDNS is on).
    """

    def __init__(
        self,
        state: ControlState,
        config,
        policy: TailnetPolicy,
        derp_map: Callable[[], dict] | None = None,
        https: bool = False,
    ) -> None:
        self.state = state
        self.config = config
        self.derp_map = derp_map or (lambda: embedded_derp_map(config))
        self.policy = policy
        self.base_domain = config.dns.base_domain if config.dns.magic_dns else ""
        self.domain = _server_host_port(config.server_url)[0]
        self.https = https and bool(self.base_domain)
        self._dns_bytes = encode_json(dns_config(config))
        self._cache: dict[int, tuple[int, dict[Variant, bytes]]] = {}
        self.serializations: collections.Counter[int] = collections.Counter()
        #: ``PeersChanged`` lists (with their profiles) built by :meth:`delta`; a work counter.
        self.peer_lists_built = 0

    # -- nodes -------------------------------------------------------------

    def wire_user_id(self, node) -> int:
        """``Node.User`` on the wire: the owner, or the tagged-devices pseudo-user."""
        return node.user_id if node.user_id is not None and not node.tags else TAGGED_DEVICES_USER_ID

    def set_dns(self, dns: dict) -> bytes | None:
        """Replace the DNSConfig; return the delta message if it changed, else None."""
        data = encode_json(dns)
        if data == self._dns_bytes:
            return None
        self._dns_bytes = data
        return b'{"DNSConfig":' + data + b"}"

    def self_capabilities(self, policy_caps=()) -> dict:
        """Our default self ``CapMap`` plus the policy's node attributes (presence = enabled)."""
        caps = dict(SELF_CAPABILITIES)
        if self.https:
            caps[HTTPS_CAPABILITY] = []
        for cap in policy_caps:
            caps.setdefault(cap, [])
        return caps

    def node_dict(self, node, self_view: bool = False, variant: Variant | None = None) -> dict:
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
        caps: tuple[str, ...] = ()
        if self_view:
            allowed, primary, caps = self.policy.self_view(node.id)
        elif variant is not None:
            allowed, primary = variant
        else:
            allowed, primary = tuple(addresses), ()
        out["AllowedIPs"] = list(allowed) if allowed else list(addresses)
        if primary:
            out["PrimaryRoutes"] = list(primary)
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
            out["CapMap"] = self.self_capabilities(caps)
        return out

    def peer_entry(self, node_id: int, variant: Variant | None = None) -> bytes:
        """The serialized peer view of a node (as ``variant`` routes it), cached per generation."""
        if variant is None:
            variant = self.policy.variant(-1, node_id)
        generation = self.state.generation(node_id)
        cached = self._cache.get(node_id)
        if cached is None or cached[0] != generation:
            cached = (generation, {})
            self._cache[node_id] = cached
        data = cached[1].get(variant)
        if data is None:
            data = encode_json(self.node_dict(self.state.get(node_id), variant=variant))
            self.serializations[node_id] += 1
            cached[1][variant] = data
        return data

    def entry_for(self, viewer_id: int, node_id: int) -> bytes:
        """``node_id``'s entry as ``viewer_id`` sees it."""
        return self.peer_entry(node_id, self.policy.variant(viewer_id, node_id))

    def forget(self, node_id: int) -> None:
        """Drop a deleted node's cached entry."""
        self._cache.pop(node_id, None)

    def dns_for(self, node_id: int) -> bytes:
        """The ``DNSConfig`` as ``node_id`` gets it: the shared one, plus its ``CertDomains`` under ``https``."""
        if not self.https:
            return self._dns_bytes
        name = cert_domain(self.state.get(node_id).given_name, self.base_domain)
        cert_domains = b'"CertDomains":' + encode_json([name])
        if self._dns_bytes == b"{}":
            return b"{" + cert_domains + b"}"
        return self._dns_bytes[:-1] + b"," + cert_domains + b"}"

    def dns_message(self, node_id: int) -> bytes:
        """A delta carrying ``node_id``'s ``DNSConfig`` (after :meth:`set_dns` under ``https``)."""
        return b'{"DNSConfig":' + self.dns_for(node_id) + b"}"

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
        policy = self.policy
        peer_ids = policy.peer_ids(node_id)
        peers = b",".join(self.peer_entry(pid, policy.variant(node_id, pid)) for pid in peer_ids)
        ssh = policy.ssh_bytes(node_id)
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
                self.dns_for(node_id),
                b',"Domain":',
                encode_json(self.domain),
                b',"CollectServices":false,"PacketFilter":',
                policy.filter_bytes(node_id),
                b',"SSHPolicy":' + ssh if ssh is not None else b"",
                b',"UserProfiles":',
                profiles,
                b',"ControlTime":',
                encode_json(format_time(now.replace(microsecond=0))),
                b',"Debug":{"DisableLogTail":true}}',
            ]
        )

    def peers_changed(self, node_ids: Iterable[int], viewer_id: int = -1) -> bytes:
        """``PeersChanged`` (full entries as ``viewer_id`` sees them) plus the owners' ``UserProfiles``."""
        ids = sorted(node_ids)
        entries = b",".join(self.entry_for(viewer_id, i) for i in ids)
        profiles = self._profiles(self.state.nodes[i] for i in ids)
        return b'{"PeersChanged":[' + entries + b'],"UserProfiles":' + profiles + b"}"

    def delta(
        self,
        viewer_id: int,
        changed: Iterable[int] = (),
        removed: Iterable[int] = (),
        packet_filter: bytes | None = None,
        ssh: bytes | None = None,
        self_node: bool = False,
        patches: Iterable[dict] = (),
        online: Iterable[tuple[int, bool]] = (),
        shared: dict | None = None,
        variants: Iterable[tuple[int, Variant]] | None = None,
    ) -> bytes:
        """
        One message combining what changed for ``viewer_id`` (absent parts = unchanged):
        also ``PeersChangedPatch`` entries and ``OnlineChange`` (with ``PeerSeenChange``
        for peers gone offline) as :meth:`peers_patched` / :meth:`online_changed` write them.

        ``shared`` is a memo the caller keeps while the state does not change
        (one flush): the ``PeersChanged`` list and its ``UserProfiles`` are
        built once per set of entries (peer, variant, generation) there, and
        reused by every other message carrying the same ones.

        ``variants`` gives the changed peers with the variant the caller
        already looked up for each (``policy.variant(viewer_id, peer)``, same
        state); ``changed`` is ignored then, and no peer is looked up again.
        """
        parts = []
        profile_nodes = []
        if self_node:
            parts.append(b'"Node":' + self.self_entry(viewer_id))
            if self.https:  # the node's name, so its CertDomains, may have changed
                parts.append(b'"DNSConfig":' + self.dns_for(viewer_id))
            profile_nodes.append(self.state.nodes[viewer_id])
        generation = self.state.generation
        if variants is not None:
            key = tuple((i, v, generation(i)) for i, v in sorted(variants, key=_first))
        else:
            variant = self.policy.variant
            key = tuple((i, variant(viewer_id, i), generation(i)) for i in sorted(changed))
        ids = [i for i, _, _ in key]
        profiles = None
        if ids:
            built = None if shared is None else shared.get(key)
            if built is None:
                entries = b'"PeersChanged":[' + b",".join(self.peer_entry(i, v) for i, v, _ in key) + b"]"
                built = (entries, self._profiles(self.state.nodes[i] for i in ids))
                self.peer_lists_built += 1
                if shared is not None:
                    shared[key] = built
            parts.append(built[0])
            if self_node:
                profile_nodes.extend(self.state.nodes[i] for i in ids)
            else:
                profiles = built[1]
        gone = sorted(removed)
        if gone:
            parts.append(b'"PeersRemoved":' + encode_json(gone))
        if packet_filter is not None:
            parts.append(b'"PacketFilter":' + packet_filter)
        if ssh is not None:
            parts.append(b'"SSHPolicy":' + ssh)
        patches = sorted(patches, key=lambda p: p["NodeID"])
        if patches:
            parts.append(b'"PeersChangedPatch":' + encode_json(patches))
        online = sorted(online)
        if online:
            parts.append(b'"OnlineChange":' + encode_json({str(k): up for k, up in online}))
            seen = {str(k): True for k, up in online if not up}
            if seen:
                parts.append(b'"PeerSeenChange":' + encode_json(seen))
        if profile_nodes:
            profiles = self._profiles(profile_nodes)
        if profiles is not None:
            parts.append(b'"UserProfiles":' + profiles)
        return b"{" + b",".join(parts) + b"}"

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
