# -*- test-case-name: tests.derp.test_derpmap -*-
"""
Building the DERP map sent to clients (``tailcfg.DERPMap`` JSON shape).

Sources, merged by region ID with later ones winning (as headscale does):

1. every URL in ``derp.urls`` (JSON, fetched with treq), in order;
2. every file in ``derp.paths`` (YAML or JSON), in order;
3. the embedded region from ``derp.server`` when the DERP server is enabled
   and ``automatically_add_embedded_derp_region`` is true: this instance's node,
   or, in a DERP mesh on a shared database, one node per live instance
   (:meth:`DERPMapProvider.set_instance_nodes`).

Files and URLs may spell keys in any case (headscale's YAML uses ``regionid``,
``hostname``, ...); they are normalised to the Go field names the client
expects (``RegionID``, ``HostName``, ...). Region IDs are integers here; JSON
encoding turns them into the decimal string keys of the wire format.

:class:`DERPMapProvider` refreshes URLs (and re-reads files) every
``update_frequency`` seconds; a source that fails keeps its previous map.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import yaml
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from headscale_tw.config.model import Config

from .stun import parse_listen_addr

__all__ = [
    "DERPMapError",
    "embedded_region",
    "own_derp_url",
    "normalise_derp_map",
    "load_derp_map_file",
    "fetch_derp_map",
    "merge_derp_maps",
    "DERPMapProvider",
]

_REGION_FIELDS = {
    k.lower(): k
    for k in ("RegionID", "RegionCode", "RegionName", "Latitude", "Longitude", "Avoid", "NoMeasureNoHome", "Nodes")
}
_NODE_FIELDS = {
    k.lower(): k
    for k in (
        "Name", "RegionID", "HostName", "CertName", "IPv4", "IPv6", "STUNPort", "STUNOnly",
        "DERPPort", "InsecureForTests", "STUNTestIP", "CanPort80",
    )
}
_INT_FIELDS = {"RegionID", "STUNPort", "DERPPort"}
_BOOL_FIELDS = {"Avoid", "NoMeasureNoHome", "STUNOnly", "InsecureForTests", "CanPort80"}


class DERPMapError(ValueError):
    """A DERP map source is malformed; the message names the source and the problem."""


def own_derp_url(config: Config) -> str:
    """This instance's DERP URL: ``derp.server.advertise_url``, else ``server_url`` + ``/derp``."""
    advertised = config.derp.server.advertise_url
    if advertised:
        return advertised
    return config.server_url.rstrip("/") + "/derp"


def _url_node(url: str, name: str, region_id: int, stun_port: int) -> dict[str, Any]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise DERPMapError(f"DERP URL {url!r} has no host name")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"Name": name, "RegionID": region_id, "HostName": parts.hostname, "STUNPort": stun_port,
            "DERPPort": port}


def embedded_region(config: Config, instances: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The region describing our embedded DERP server, from ``config``.

    ``instances`` are the live instances of a DERP mesh on a shared database,
    ``(instance id, DERP URL)``, this one included, in the order every instance
    uses. With two or more, the region has one node per instance, in that order,
    each built from its URL alone (``Name`` ``<region>-<id[:8]>``, ``HostName``,
    ``DERPPort``; ``STUNPort`` from our ``stun_listen_addr``), so that every
    instance sends the same map. Otherwise the one node is this instance: host
    and port from ``derp.server.advertise_url`` (else ``server_url``), and
    ``IPv4``/``IPv6`` from the config.
    """
    derp = config.derp.server
    _, stun_port = parse_listen_addr(derp.stun_listen_addr)
    region: dict[str, Any] = {
        "RegionID": derp.region_id,
        "RegionCode": derp.region_code,
        "RegionName": derp.region_name,
    }
    if len(instances) >= 2:
        region["Nodes"] = [_url_node(url, f"{derp.region_id}-{ident[:8]}", derp.region_id, stun_port)
                           for ident, url in instances]
        return region
    url = urlsplit(own_derp_url(config))
    if not url.hostname:
        raise DERPMapError(f"server_url {config.server_url!r} has no host name")
    port = url.port or (443 if url.scheme == "https" else 80)
    node: dict[str, Any] = {
        "Name": str(derp.region_id),
        "RegionID": derp.region_id,
        "HostName": url.hostname,
    }
    if derp.ipv4:
        node["IPv4"] = derp.ipv4
    if derp.ipv6:
        node["IPv6"] = derp.ipv6
    node["STUNPort"] = stun_port
    node["DERPPort"] = port
    region["Nodes"] = [node]
    return region


def _fields(obj: Mapping, names: dict[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = names.get(str(key).lower())
        if name is None:
            continue  # unknown fields are ignored, like Go's decoder
        if name in _INT_FIELDS and (not isinstance(value, int) or isinstance(value, bool)):
            raise DERPMapError(f"{where}: {name} must be an integer, got {value!r}")
        if name in _BOOL_FIELDS and not isinstance(value, bool):
            raise DERPMapError(f"{where}: {name} must be true or false, got {value!r}")
        out[name] = value
    return out


def normalise_derp_map(raw: Any, source: str) -> dict[str, Any]:
    """Validate a decoded DERP map and return it with Go field names and integer region IDs."""
    if not isinstance(raw, Mapping):
        raise DERPMapError(f"{source}: a DERP map must be an object with 'Regions'")
    lowered = {str(k).lower(): v for k, v in raw.items()}
    regions_raw = lowered.get("regions") or {}
    if not isinstance(regions_raw, Mapping):
        raise DERPMapError(f"{source}: Regions must be a mapping of region ID to region")
    regions: dict[int, dict[str, Any]] = {}
    for rid, region in regions_raw.items():
        if region is None:
            continue
        try:
            region_id = int(rid)
        except (TypeError, ValueError):
            raise DERPMapError(f"{source}: region key {rid!r} is not an integer") from None
        where = f"{source}: region {region_id}"
        if region_id <= 0:
            raise DERPMapError(f"{where}: region IDs must be positive")
        if not isinstance(region, Mapping):
            raise DERPMapError(f"{where}: must be an object")
        out = _fields(region, _REGION_FIELDS, where)
        out.setdefault("RegionID", region_id)
        if out["RegionID"] != region_id:
            raise DERPMapError(f"{where}: RegionID {out['RegionID']} differs from its key")
        nodes = out.get("Nodes") or []
        if not isinstance(nodes, list):
            raise DERPMapError(f"{where}: Nodes must be a list")
        out["Nodes"] = []
        for i, node in enumerate(nodes):
            if not isinstance(node, Mapping):
                raise DERPMapError(f"{where}: node {i} must be an object")
            n = _fields(node, _NODE_FIELDS, f"{where} node {i}")
            if not n.get("HostName") and not n.get("STUNOnly"):
                raise DERPMapError(f"{where} node {i}: HostName is required")
            n.setdefault("RegionID", region_id)
            n.setdefault("Name", f"{region_id}{chr(ord('a') + i) if i < 26 else i}")
            out["Nodes"].append(n)
        regions[region_id] = out
    result: dict[str, Any] = {"Regions": regions}
    if "homeparams" in lowered and lowered["homeparams"] is not None:
        result["HomeParams"] = lowered["homeparams"]
    if lowered.get("omitdefaultregions"):
        result["omitDefaultRegions"] = True
    return result


def load_derp_map_file(path: str) -> dict[str, Any]:
    """Read a DERP map from a YAML or JSON file."""
    try:
        with open(path, encoding="utf-8") as fp:
            raw = yaml.safe_load(fp)
    except OSError as e:
        raise DERPMapError(f"{path}: cannot read DERP map file: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise DERPMapError(f"{path}: not valid YAML/JSON: {e}") from None
    return normalise_derp_map(raw, path)


async def fetch_derp_map(http: Any, url: str, clock: IReactorTime, timeout: float = 30.0) -> dict[str, Any]:
    """Fetch a JSON DERP map from ``url`` with ``http`` (``treq`` or a ``StubTreq``)."""
    try:
        response = await http.get(url).addTimeout(timeout, clock)
        if response.code != 200:
            raise DERPMapError(f"{url}: HTTP status {response.code}")
        body = await http.content(response).addTimeout(timeout, clock)
    except DERPMapError:
        raise
    except defer.TimeoutError:
        raise DERPMapError(f"{url}: no answer within {timeout:g} s") from None
    except Exception as e:
        raise DERPMapError(f"{url}: fetch failed: {e}") from None
    try:
        raw = json.loads(body)
    except ValueError:
        raise DERPMapError(f"{url}: body is not JSON") from None
    return normalise_derp_map(raw, url)


def merge_derp_maps(*maps: Mapping[str, Any]) -> dict[str, Any]:
    """Merge maps by region ID; later maps override earlier ones."""
    result: dict[str, Any] = {"Regions": {}}
    for m in maps:
        result["Regions"].update(m.get("Regions", {}))
        if "HomeParams" in m:
            result["HomeParams"] = m["HomeParams"]
        if m.get("omitDefaultRegions"):
            result["omitDefaultRegions"] = True
    return result


class DERPMapProvider(Service):
    """Keeps the current DERP map, refreshing URLs and files periodically.

    :param http: ``treq`` (or a ``StubTreq`` in tests); needed only with ``derp.urls``.
    :param on_change: called with the new map whenever it changes.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        http: Any = None,
        on_change: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self.config = config
        self.clock = clock
        self.http = http
        self.on_change = on_change
        self._url_maps: dict[str, dict[str, Any]] = {}
        self._path_maps: dict[str, dict[str, Any]] = {}
        self._instances: tuple[tuple[str, str], ...] = ()
        self._loop: LoopingCall | None = None
        self.refresh_failures = 0
        self.derp_map: dict[str, Any] = self._build()

    def _build(self) -> dict[str, Any]:
        derp = self.config.derp
        sources = [self._url_maps[u] for u in derp.urls if u in self._url_maps]
        sources += [self._path_maps[p] for p in derp.paths if p in self._path_maps]
        if derp.server.enabled and derp.server.automatically_add_embedded_derp_region:
            region = embedded_region(self.config, self._instances)
            sources.append({"Regions": {region["RegionID"]: region}})
        return merge_derp_maps(*sources)

    def set_instance_nodes(self, instances: Sequence[tuple[str, str]]) -> None:
        """The live instances of the DERP mesh, ``(instance id, DERP URL)`` in order, this one included,
        as the nodes of our region (see :func:`embedded_region`).

        Clients get the new map when it differs (``on_change``).
        """
        self._instances = tuple(instances)
        self._publish()

    async def refresh(self) -> dict[str, Any]:
        """Re-read files and re-fetch URLs; a failing source keeps its previous map."""
        for path in self.config.derp.paths:
            try:
                self._path_maps[path] = load_derp_map_file(path)
            except DERPMapError as e:
                self.refresh_failures += 1
                self.log.error("DERP map file kept at its previous version: {error}", error=str(e))
        for url in self.config.derp.urls:
            if self.http is None:
                raise DERPMapError("derp.urls is set but no HTTP client was given")
            try:
                self._url_maps[url] = await fetch_derp_map(self.http, url, self.clock)
            except DERPMapError as e:
                self.refresh_failures += 1
                self.log.error("DERP map URL kept at its previous version: {error}", error=str(e))
        self._publish()
        return self.derp_map

    def _publish(self) -> None:
        new = self._build()
        if new != self.derp_map:
            self.derp_map = new
            if self.on_change is not None:
                self.on_change(new)

    def _refresh_logged(self) -> defer.Deferred:
        d = defer.Deferred.fromCoroutine(self.refresh())
        d.addErrback(lambda failure: self.log.failure("DERP map refresh failed", failure))
        return d

    def startService(self) -> None:
        super().startService()
        derp = self.config.derp
        if derp.auto_update_enabled and derp.update_frequency > 0 and (derp.urls or derp.paths):
            self._loop = LoopingCall(self._refresh_logged)
            self._loop.clock = self.clock
            self._loop.start(derp.update_frequency, now=True)
        else:
            self._refresh_logged()

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
