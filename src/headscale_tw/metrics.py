# -*- test-case-name: tests.test_metrics,tests.test_metrics_scrape -*-
"""
Prometheus metrics, read at scrape time.

The relay and the control plane keep plain integer counters and histograms
(:mod:`headscale_tw.counters`: no locks, no metric objects on the hot path);
:class:`ServerCollector` turns them into Prometheus families when
``/metrics`` is scraped. Each server instance gets its own
``CollectorRegistry`` (see :func:`make_registry`), so tests can build many.

Every series, its labels, its meaning and its Headscale counterpart are
listed in docs/metrics.md; :data:`EXPORTED` names them all (the Grafana
dashboard's test checks its expressions against it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from headscale_tw.control.routes import announced_routes, approved_routes, served_routes
from headscale_tw.counters import Histogram, HTTPCounters, LabelledHistograms, MapCounters

__all__ = ["ServerCollector", "make_registry", "EXPORTED"]

#: (attribute on DERPServer, metric name, help) for the relay's counters.
_DERP_COUNTERS = (
    ("accepts", "headscale_derp_accepts", "DERP connections accepted"),
    ("websocket_accepts", "headscale_derp_websocket_accepts", "DERP connections accepted over WebSocket"),
    ("websocket_protocol_errors", "headscale_derp_websocket_protocol_errors",
     "DERP WebSocket connections closed for a WebSocket protocol error"),
    ("clients_refused", "headscale_derp_clients_refused", "DERP clients refused (unknown node key)"),
    ("protocol_errors", "headscale_derp_protocol_errors", "DERP connections closed for a protocol error"),
    ("packets_received", "headscale_derp_packets_received", "Packets received from DERP clients"),
    ("bytes_received", "headscale_derp_bytes_received", "Bytes received from DERP clients"),
    ("packets_sent", "headscale_derp_packets_sent", "Packets sent to DERP clients"),
    ("bytes_sent", "headscale_derp_bytes_sent", "Bytes sent to DERP clients"),
    ("packets_dropped_queue_full", "headscale_derp_packets_dropped_queue_full",
     "Packets dropped because a client's send queue was full"),
    ("packets_dropped_unknown_dest", "headscale_derp_packets_dropped_unknown_dest",
     "Packets dropped because the destination was not connected"),
    ("packets_forwarded_out", "headscale_derp_packets_forwarded_out", "Packets forwarded to a mesh peer"),
    ("packets_forwarded_in", "headscale_derp_packets_forwarded_in", "Packets received from a mesh peer"),
)

_STUN_COUNTERS = (
    ("requests", "headscale_stun_requests", "STUN binding requests received"),
    ("responses", "headscale_stun_responses", "STUN binding responses sent"),
    ("malformed", "headscale_stun_malformed", "Malformed STUN datagrams ignored"),
)


class ServerCollector:
    """Collects node, session, map, HTTP, database, DERP and STUN figures from the live objects."""

    def __init__(self, plane=None, derp=None, stun=None, pool=None, http=None):
        self.plane = plane
        self.derp = derp
        self.stun = stun
        self.pool = pool
        self.http = http

    def collect(self):
        plane = self.plane
        if plane is not None:
            state, notifier = plane.state, plane.notifier
            yield _gauge("headscale_nodes", "Registered nodes", len(state.nodes))
            yield _gauge("headscale_users", "Users", len(state.users))
            yield _gauge("headscale_nodes_connected", "Nodes with at least one map stream", len(notifier.sessions))
            yield _gauge(
                "headscale_map_sessions", "Open map streams", sum(len(s) for s in notifier.sessions.values())
            )
            yield from _node_state_families(state, plane.now())
            yield from _map_families(notifier.map_counters)
            yield from _nodestore_families(state, notifier)
            yield _histogram("headscale_policy_compile_duration_seconds",
                             "Seconds per policy compilation (a new policy checked, or recompiled for changed nodes)",
                             plane.policy.compile_seconds)
            yield from _throttle_families(plane.throttles.all())
        if self.http is not None:
            yield from _http_families(self.http)
        if self.pool is not None:
            yield from _pool_families(self.pool)
        if self.derp is not None:
            yield _gauge("headscale_derp_clients", "Connected DERP clients", self.derp.client_count)
            yield _gauge("headscale_derp_connections", "Open DERP connections", self.derp.connection_count)
            for attr, name, text in _DERP_COUNTERS:
                yield _counter(name, text, getattr(self.derp, attr))
        if self.stun is not None:
            for attr, name, text in _STUN_COUNTERS:
                yield _counter(name, text, getattr(self.stun, attr))


def _throttle_families(throttles):
    """Brute-force counters by ``kind`` (preauth_key, api_key, noise_handshake)."""
    failures = CounterMetricFamily(
        "headscale_auth_failures", "Failed secrets (pre-auth keys, API keys, Noise handshakes) by kind",
        labels=["kind"])
    refused = CounterMetricFamily(
        "headscale_auth_throttled", "Attempts refused because their source address was throttled, by kind",
        labels=["kind"])
    tracked = GaugeMetricFamily(
        "headscale_auth_throttle_sources", "Source addresses with recent failures being tracked, by kind",
        labels=["kind"])
    for throttle in throttles:
        kind = [throttle.settings.kind]
        failures.add_metric(kind, throttle.failures)
        refused.add_metric(kind, throttle.refused)
        tracked.add_metric(kind, throttle.tracked)
    return failures, refused, tracked


def _node_state_families(state, now: datetime) -> Iterator[Metric]:
    """Nodes by state (a partition: online, offline, expired), ephemeral nodes, and route counts."""
    by_state = {"online": 0, "offline": 0, "expired": 0}
    ephemeral = 0
    routes = {"advertised": 0, "approved": 0, "serving": 0}
    runtime = state.runtime
    for node_id, node in state.nodes.items():
        if node.expiry is not None and node.expiry <= now:
            by_state["expired"] += 1
        else:
            facts = runtime.get(node_id)
            online = facts is not None and (facts.online or facts.elsewhere)
            by_state["online" if online else "offline"] += 1
        if node.ephemeral:
            ephemeral += 1
        if node.approved_routes or (node.hostinfo and node.hostinfo.get("RoutableIPs")):
            routes["advertised"] += len(announced_routes(node))
            routes["approved"] += len(approved_routes(node))
            routes["serving"] += len(served_routes(node))
    yield _labelled(GaugeMetricFamily, "headscale_nodes_by_state",
                    "Registered nodes by state: online (streaming here or on another instance), offline, "
                    "expired (key expiry passed)", ["state"], [((k,), v) for k, v in by_state.items()])
    yield _gauge("headscale_nodes_ephemeral", "Registered ephemeral nodes", ephemeral)
    yield _labelled(GaugeMetricFamily, "headscale_routes",
                    "Subnet and exit routes summed over nodes: advertised by the node, approved, "
                    "serving (advertised and approved)", ["state"], [((k,), v) for k, v in routes.items()])


def _map_families(counters: MapCounters) -> Iterator[Metric]:
    """Headscale's ``headscale_mapresponse_*`` counters."""
    yield _labelled(CounterMetricFamily, "headscale_mapresponse_sent_total",
                    "total count of mapresponses sent to clients", ["status", "type"], counters.sent.items())
    yield _labelled(CounterMetricFamily, "headscale_mapresponse_generated_total",
                    "total count of mapresponses generated, by response type", ["response_type"],
                    [((k,), v) for k, v in counters.generated.items()])
    yield _labelled(CounterMetricFamily, "headscale_mapresponse_endpoint_updates_total",
                    "total count of endpoint updates received", ["status"],
                    [((k,), v) for k, v in counters.endpoint_updates.items()])
    yield _labelled(CounterMetricFamily, "headscale_mapresponse_ended_total",
                    "total count of new mapsessions ended", ["reason"], [((k,), v) for k, v in counters.ended.items()])


def _nodestore_families(state, notifier) -> Iterator[Metric]:
    """Headscale's ``headscale_nodestore_*`` series, from the in-memory node state and the change batches."""
    counters = state.counters
    yield _labelled(CounterMetricFamily, "headscale_nodestore_operations_total",
                    "Total number of NodeStore operations", ["operation"],
                    [((k,), v) for k, v in counters.operations.items()])
    yield _histograms("headscale_nodestore_operation_duration_seconds", "Duration of NodeStore operations",
                      ["operation"], counters.operation_seconds)
    yield _histogram("headscale_nodestore_batch_size", "Size of NodeStore write batches", counters.batch_size)
    yield _histogram("headscale_nodestore_batch_duration_seconds", "Duration of NodeStore batch processing",
                     counters.batch_seconds)
    yield _histogram("headscale_nodestore_snapshot_build_duration_seconds",
                     "Duration of NodeStore snapshot building from nodes", counters.snapshot_seconds)
    yield _gauge("headscale_nodestore_nodes", "Number of nodes in the NodeStore", len(state.nodes))
    yield _histogram("headscale_nodestore_peers_calculation_duration_seconds",
                     "Duration of peers calculation in NodeStore", counters.peers_seconds)
    yield _gauge("headscale_nodestore_queue_depth", "Current depth of NodeStore write queue", notifier.held)


def _http_families(counters: HTTPCounters) -> Iterator[Metric]:
    yield _labelled(CounterMetricFamily, "headscale_http_requests_total",
                    "HTTP requests answered, by listener, route template, method and status",
                    ["listener", "route", "method", "status"], counters.requests.items())
    yield _histograms("headscale_http_request_duration_seconds",
                      "Seconds from a request's arrival to its response's end, by listener, route template "
                      "and method", ["listener", "route", "method"], counters.seconds)


def _pool_families(pool) -> Iterator[Metric]:
    stats = pool.stats()
    yield _gauge("headscale_db_pool_connections_max", "Connections the database pool may open", stats.max_connections)
    yield _gauge("headscale_db_pool_connections_open", "Connections the database pool holds open",
                 stats.open_connections)
    yield _gauge("headscale_db_pool_in_use", "Database interactions running on a connection", stats.in_use)
    yield _gauge("headscale_db_pool_waiting", "Database interactions waiting for a free connection", stats.waiting)
    yield _histogram("headscale_db_query_duration_seconds",
                     "Seconds per database interaction, waiting for a connection included", pool.query_seconds)


def _labelled(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, text: str, labels: list[str],
              values: Iterable[tuple[tuple, float]]) -> Metric:
    family = kind(name, text, labels=labels)
    for label_values, value in sorted(values):
        family.add_metric(list(label_values), value)
    return family


def _histogram(name: str, text: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=[])
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


def _histograms(name: str, text: str, labels: list[str], histograms: LabelledHistograms) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=labels)
    for label_values, histogram in sorted(histograms.items(), key=lambda item: item[0]):
        family.add_metric(list(label_values), histogram.cumulative(), histogram.sum)
    return family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def make_registry(plane=None, derp=None, stun=None, process: bool = True, pool=None, http=None) -> CollectorRegistry:
    """A registry with our collector (and the process/platform collectors when ``process``).

    ``pool`` is the :class:`~headscale_tw.storage.database.DatabasePool`,
    ``http`` the listeners' :class:`~headscale_tw.counters.HTTPCounters`.
    """
    registry = CollectorRegistry()
    registry.register(ServerCollector(plane, derp, stun, pool, http))
    if process:
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


#: Every series name this server exports itself (process/platform/GC collectors aside), as scraped.
EXPORTED = frozenset(
    [name + "_total" for _attr, name, _text in _DERP_COUNTERS + _STUN_COUNTERS]
    + [
        "headscale_nodes", "headscale_users", "headscale_nodes_connected", "headscale_map_sessions",
        "headscale_nodes_by_state", "headscale_nodes_ephemeral", "headscale_routes",
        "headscale_mapresponse_sent_total", "headscale_mapresponse_generated_total",
        "headscale_mapresponse_endpoint_updates_total", "headscale_mapresponse_ended_total",
        "headscale_nodestore_operations_total", "headscale_nodestore_nodes", "headscale_nodestore_queue_depth",
        "headscale_auth_failures_total", "headscale_auth_throttled_total", "headscale_auth_throttle_sources",
        "headscale_http_requests_total",
        "headscale_db_pool_connections_max", "headscale_db_pool_connections_open", "headscale_db_pool_in_use",
        "headscale_db_pool_waiting",
        "headscale_derp_clients", "headscale_derp_connections",
    ]
    + [
        base + suffix
        for base in (
            "headscale_policy_compile_duration_seconds", "headscale_nodestore_operation_duration_seconds",
            "headscale_nodestore_batch_size", "headscale_nodestore_batch_duration_seconds",
            "headscale_nodestore_snapshot_build_duration_seconds",
            "headscale_nodestore_peers_calculation_duration_seconds",
            "headscale_http_request_duration_seconds", "headscale_db_query_duration_seconds",
        )
        for suffix in ("_bucket", "_sum", "_count")
    ]
)
