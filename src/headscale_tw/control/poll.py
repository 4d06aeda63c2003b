# -*- test-case-name: tests.control.test_notifier -*-
"""
``/machine/map`` requests: parse a MapRequest, check it belongs to the Noise
peer, and apply what it reports (endpoints, disco key, Hostinfo, capability
version) to the node, telling peers only what changed.

Three kinds, as ``sendMapRequest`` in Tailscale's control/controlclient/direct.go
sends them: ``Stream`` (long poll, handled by
:class:`~headscale_tw.control.notifier.MapNotifier`), lite updates
(``OmitPeers`` without ``Stream``: answered 200 with no body, never touching
the stream) and one-shot maps (neither flag: one full message).
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from headscale_tw.control import limits
from headscale_tw.control._wire import check_hostinfo, parse_key, parse_request_head
from headscale_tw.control.framing import PLAIN, ZSTD
from headscale_tw.control.policy import TailnetPolicy
from headscale_tw.control.routes import parse_prefix
from headscale_tw.control.slices import SLICE, in_slices
from headscale_tw.control.state import ControlState
from headscale_tw.errors import InvalidInput, NotFound
from headscale_tw.interfaces import INodeNotifier, IPollService

__all__ = ["MapRequest", "parse_map_request", "PollService", "Unauthorized"]

_PATCHABLE_NETINFO = "PreferredDERP"


class Unauthorized(Exception):
    """The request's node key does not belong to the Noise peer's machine key."""


@attrs.frozen
class MapRequest:
    """The parts of ``tailcfg.MapRequest`` the server uses."""

    version: int
    node_key: str
    disco_key: str = ""
    stream: bool = False
    omit_peers: bool = False
    hostinfo: dict | None = attrs.field(default=None, hash=False)
    endpoints: tuple[str, ...] | None = None
    #: Frame encoding the client asked for: ``"zstd"`` or ``""`` (uncompressed JSON).
    compress: str = ""


def parse_map_request(body: object) -> MapRequest:
    """Validate a decoded JSON MapRequest; ``InvalidInput`` names the bad field."""
    version, node_key = parse_request_head(body, "map request")
    assert isinstance(body, dict)  # parse_request_head refuses anything else
    disco = body.get("DiscoKey") or ""
    if disco:
        disco = parse_key(disco, "discokey", "map request: DiscoKey")
    hostinfo = body.get("Hostinfo")
    if hostinfo is not None:
        check_hostinfo(hostinfo, "map request")
    endpoints = body.get("Endpoints")
    if endpoints is not None:
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise InvalidInput("map request: Endpoints must be a list of strings")
        limits.check_count(endpoints, limits.ENDPOINTS_MAX, "map request: Endpoints")
        for endpoint in endpoints:
            limits.check_length(endpoint, limits.ENDPOINT_MAX_LENGTH, "map request: an entry of Endpoints")
        endpoints = tuple(endpoints)
    compress = body.get("Compress") or ""
    if not isinstance(compress, str):
        raise InvalidInput("map request: Compress must be a string")
    # like Headscale: zstd when asked for, anything else gets uncompressed JSON
    compress = ZSTD if compress == ZSTD else PLAIN
    return MapRequest(
        version=version,
        node_key=node_key,
        disco_key=disco,
        stream=bool(body.get("Stream")),
        omit_peers=bool(body.get("OmitPeers")),
        hostinfo=hostinfo,
        endpoints=endpoints,
        compress=compress,
    )


def _without_netinfo(hostinfo: dict) -> dict:
    return {k: v for k, v in hostinfo.items() if k != "NetInfo"}


def _home_derp(hostinfo: dict | None) -> int:
    return ((hostinfo or {}).get("NetInfo") or {}).get(_PATCHABLE_NETINFO) or 0


def _parse_quietly(text: object) -> None:
    try:
        parse_prefix(text)
    except InvalidInput:
        pass  # skipped where the routes are read, as announced_routes does


@implementer(IPollService)
class PollService:
    """Applies MapRequests to nodes and notifies peers."""

    log = Logger()

    def __init__(self, state: ControlState, notifier: INodeNotifier, policy: TailnetPolicy,
                 clock: IReactorTime | None = None) -> None:
        self.state = state
        self.notifier = notifier
        self.policy = policy
        #: Cuts the parsing of a long route list into reactor turns (None: all at once).
        self.clock = clock
        self.parse_turns = 0

    def _requested_tags(self, node, hostinfo: dict) -> tuple[str, ...] | None:
        """New tags from a changed ``Hostinfo.RequestTags`` if ``tagOwners`` permit them, else None."""
        requested = hostinfo.get("RequestTags") or []
        previous = (node.hostinfo or {}).get("RequestTags") or []
        if not isinstance(requested, list) or not requested or requested == previous:
            return None
        tags = tuple(sorted({t for t in requested if isinstance(t, str)}))
        if tags == tuple(node.tags):
            return None
        refused = self.policy.may_own_tags(tags, node.user_id, node.tags)
        if refused:
            self.log.warn(
                "node {node_id} requested tags {tags} it may not own; ignored", node_id=node.id, tags=refused
            )
            return None
        return tags

    async def _parse_routes(self, hostinfo: dict, previous: dict | None) -> int:
        """Parse newly announced routes a slice per reactor turn, before anything uses them;
        return the turns yielded.

        Parsed prefixes are cached (:func:`~headscale_tw.control.routes.parse_prefix`),
        so the policy update that follows finds them parsed: the parsing of
        up to :data:`~headscale_tw.control.limits.ROUTES_MAX` prefixes (the
        largest single part of an announcement's work) does not hold the
        reactor in one turn.
        """
        routable = hostinfo.get("RoutableIPs")
        if not isinstance(routable, list) or len(routable) <= SLICE:
            return 0
        if routable == (previous or {}).get("RoutableIPs"):
            return 0
        turns = await in_slices(routable, _parse_quietly, self.clock)
        self.parse_turns += turns
        return turns

    def authenticate(self, machine_key: str, request: MapRequest):
        """The node for ``request.node_key``; ``Unauthorized`` unless it is the peer's machine."""
        node = self.state.by_node_key(request.node_key)
        if node is None:
            raise NotFound("node key not registered")
        if node.machine_key != machine_key:
            raise Unauthorized("node key does not belong to this machine key")
        return node

    async def apply(self, node, request: MapRequest):
        """Store what changed and send peers a patch or a full entry; return the node."""
        if request.hostinfo is not None and request.hostinfo != node.hostinfo:
            if await self._parse_routes(request.hostinfo, node.hostinfo):
                node = self.state.get(node.id)  # other requests ran between the slices: start from now
        fields: dict = {}
        patch: list[str] = []
        full = False
        if request.disco_key and request.disco_key != node.disco_key:
            fields["disco_key"] = request.disco_key
            patch.append("DiscoKey")
        if request.endpoints is not None and request.endpoints != node.endpoints:
            fields["endpoints"] = request.endpoints
            patch.append("Endpoints")
        if request.hostinfo is not None and request.hostinfo != node.hostinfo:
            fields["hostinfo"] = request.hostinfo
            if _home_derp(request.hostinfo) != _home_derp(node.hostinfo):
                patch.append("DERPRegion")
            if _without_netinfo(request.hostinfo) != _without_netinfo(node.hostinfo or {}):
                full = True
                tags = self._requested_tags(node, request.hostinfo)
                if tags is not None:
                    fields["tags"] = tags
                hostname = request.hostinfo.get("Hostname") or ""
                if hostname and hostname != node.hostname:
                    fields["hostname"] = hostname
                    if node.given_name_auto:
                        name = self.state.free_name(hostname, exclude=node.id)
                        if name != node.given_name:
                            fields["given_name"] = name
        if self.state.runtime.set_cap(node.id, request.version):
            patch.append("Cap")
        if fields:
            node = await self.state.update_node(node.id, **fields)
            if full and await self.policy.auto_approve(node.id):
                node = self.state.get(node.id)
        if full:
            # The node reported this itself: only a new name is news to its own session.
            self.notifier.node_changed(node.id, self_too="given_name" in fields or "tags" in fields)
        elif patch:
            self.notifier.node_patched(node.id, patch)
        return node
