# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics, read at scrape time.

The relay and the control plane keep plain integer counters (no locks, no
metric objects on the hot path); :class:`ServerCollector` turns them into
Prometheus families when ``/metrics`` is scraped. Each server instance gets its
own ``CollectorRegistry`` (see :func:`make_registry`), so tests can build many.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["ServerCollector", "make_registry"]

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
    """Collects node, session, DERP and STUN figures from the live objects."""

    def __init__(self, plane=None, derp=None, stun=None):
        self.plane = plane
        self.derp = derp
        self.stun = stun

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
            yield from _throttle_families(plane.throttles.all())
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


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def make_registry(plane=None, derp=None, stun=None, process: bool = True) -> CollectorRegistry:
    """A registry with our collector (and the process/platform collectors when ``process``)."""
    registry = CollectorRegistry()
    registry.register(ServerCollector(plane, derp, stun))
    if process:
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry
