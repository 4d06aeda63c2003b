"""
The whole service tree in-process: a protocol-level client registers and streams a map,
and every series on ``/metrics`` moves, as prometheus-client's own parser reads it.
"""

from __future__ import annotations

import json
import os

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.trial import unittest

from headscale_tw.config.model import Config, DerpConfig, LogConfig, NoiseConfig
from headscale_tw.keys import MachinePrivate
from headscale_tw.metrics import EXPORTED
from headscale_tw.service import _build_on_database
from headscale_tw.testing.db import ThreadlessReactor, open_test_database
from headscale_tw.testing.noise_client import NoiseClient

_ACCESS = "headscale_tw.web.access_log.AccessLog"


class _HTTPGet(Protocol):
    """Sends one HTTP/1.1 request and keeps what comes back."""

    def __init__(self, path: bytes, method: bytes = b"GET", headers: bytes = b"") -> None:
        self.line = b"%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n" % (method, path, headers)
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @property
    def body(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[2]


def _sample_values(text: str) -> dict:
    """``{(sample name, frozenset(labels)): value}`` from Prometheus text, parsed by prometheus-client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class MetricsScrapeTests(unittest.TestCase):
    """A client connecting moves the Headscale and operator series; each listener writes access-log lines."""

    def setUp(self):
        tmp = self.mktemp()
        os.makedirs(tmp)
        self.config = Config(server_url="http://headscale.test", unix_socket=os.path.join(tmp, "hs.sock"),
                             metrics_listen_addr="127.0.0.1:9090", trusted_proxies=("192.0.2.0/24",),
                             noise=NoiseConfig(private_key_path=os.path.join(tmp, "noise.key")),
                             derp=DerpConfig(urls=(), paths=()), log=LogConfig(level="debug"))
        self.clock = ThreadlessReactor()
        self.noise_key = MachinePrivate.generate()
        self.db = open_test_database(self, reactor=self.clock)
        self.components = self.successResultOf(Deferred.fromCoroutine(
            _build_on_database(self.config, self.clock, self.db, self.noise_key, None)))
        self.addCleanup(self.components.plane.stop)
        self.sites = {getattr(getattr(s, "factory", None), "access_log", None).listener: s.factory
                      for s in self.components.services if hasattr(getattr(s, "factory", None), "access_log")}
        self.events: list = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def _connect(self, site, client, address=None):
        address = address or IPv4Address("TCP", "192.0.2.7", 41641)
        _, _, pump = connectedServerAndClient(
            lambda: site.buildProtocol(address), lambda: client, clock=self.clock,
            serverTransportFactory=lambda protocol: FakeTransport(protocol, isServer=True, peerAddress=address))
        pump.flush()
        return pump

    def _get(self, listener: str, path: bytes, address=None, **kw) -> _HTTPGet:
        client = _HTTPGet(path, **kw)
        self._connect(self.sites[listener], client, address).flush()
        return client

    def scrape(self) -> dict:
        client = self._get("metrics", b"/metrics", IPv4Address("TCP", "127.0.0.1", 50000))
        self.assertIn(b"200 OK", client.received.split(b"\r\n")[0])
        return _sample_values(client.body.decode())

    def _register_and_stream(self):
        plane = self.components.plane
        user = self.successResultOf(Deferred.fromCoroutine(plane.admin.users.create("alice")))
        key = self.successResultOf(Deferred.fromCoroutine(plane.admin.preauthkeys.create(user.id, reusable=True)))
        client = NoiseClient(self.noise_key.public(), version=133)
        pump = self._connect(self.components.site, client)
        self.successResultOf(client.ready)
        node_key = "nodekey:" + os.urandom(32).hex()
        register = {"Version": 133, "NodeKey": node_key, "Auth": {"AuthKey": key.full_text},
                    "Expiry": "0001-01-01T00:00:00Z", "Hostinfo": {"Hostname": "one", "OS": "linux"}}
        d = client.request(b"POST", b"/machine/register", json.dumps(register).encode())
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, 200)
        self.clock.advance(self.config.tuning.batch_change_delay)  # the join's batched policy update
        lite = {"Version": 133, "NodeKey": node_key, "OmitPeers": True, "Stream": False,
                "Endpoints": ["192.0.2.7:41641"], "Hostinfo": {"Hostname": "one", "OS": "linux"}}
        d = client.request(b"POST", b"/machine/map", json.dumps(lite).encode())
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, 200)
        one_shot = {"Version": 133, "NodeKey": node_key, "Compress": "zstd"}  # neither Stream nor OmitPeers
        d = client.request(b"POST", b"/machine/map", json.dumps(one_shot).encode())
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, 200)
        stream = {"Version": 133, "NodeKey": node_key, "Stream": True, "Compress": "zstd",
                  "Hostinfo": {"Hostname": "one", "OS": "linux"}}
        streaming = client.request(b"POST", b"/machine/map", json.dumps(stream).encode())
        streaming.addErrback(lambda failure: failure.trap(ConnectionDone))  # the stream ends when the client leaves
        pump.flush()
        return client, pump

    def test_series_move_when_a_client_connects(self):
        """Registering and streaming moves the mapresponse, nodestore, node-state, HTTP and database series."""
        before = self.scrape()
        client, pump = self._register_and_stream()
        during = self.scrape()
        self.assertEqual(_value(during, "headscale_mapresponse_sent_total", status="ok", type="full"),
                         _value(before, "headscale_mapresponse_sent_total", status="ok", type="full") + 2)
        self.assertGreaterEqual(_value(during, "headscale_mapresponse_generated_total", response_type="full"), 1)
        types = {dict(labels)["response_type"] for name, labels in during
                 if name == "headscale_mapresponse_generated_total"}
        self.assertLessEqual(types, {"full", "self", "peers", "patch", "policy", "config"})
        self.assertEqual(_value(during, "headscale_mapresponse_endpoint_updates_total", status="ok"), 1)
        self.assertEqual(_value(during, "headscale_nodestore_operations_total", operation="put"), 1)
        self.assertGreaterEqual(_value(during, "headscale_nodestore_operations_total", operation="update"), 1)
        self.assertEqual(_value(during, "headscale_nodestore_operation_duration_seconds_count", operation="put"), 1)
        self.assertEqual(_value(during, "headscale_nodestore_nodes"), 1)
        self.assertGreater(_value(during, "headscale_nodestore_batch_size_count"),
                           _value(before, "headscale_nodestore_batch_size_count"))
        self.assertGreater(_value(during, "headscale_nodestore_peers_calculation_duration_seconds_count"), 0)
        self.assertEqual(_value(during, "headscale_nodestore_snapshot_build_duration_seconds_count"), 1)
        self.assertEqual(_value(during, "headscale_nodes_by_state", state="online"), 1)
        self.assertEqual(_value(before, "headscale_nodes_by_state", state="online"), 0)
        self.assertEqual(_value(during, "headscale_users"), 1)
        self.assertEqual(_value(during, "headscale_map_sessions"), 1)
        self.assertEqual(_value(during, "headscale_http_requests_total", listener="noise", route="/machine/register",
                                method="POST", status="200"), 1)
        self.assertEqual(_value(during, "headscale_http_requests_total", listener="control", route="/ts2021",
                                method="POST", status="101"), 1)
        self.assertEqual(_value(during, "headscale_http_requests_total", listener="metrics", route="/metrics",
                                method="GET", status="200"), 1)  # the first scrape
        self.assertGreater(_value(during, "headscale_db_query_duration_seconds_count"),
                           _value(before, "headscale_db_query_duration_seconds_count"))
        self.assertEqual(_value(during, "headscale_db_pool_connections_max"), 1)
        client.transport.loseConnection()
        pump.flush()
        after = self.scrape()
        self.assertEqual(_value(after, "headscale_mapresponse_ended_total", reason="done"), 1)
        self.assertEqual(_value(after, "headscale_map_sessions"), 0)
        self.assertEqual(_value(after, "headscale_http_requests_total", listener="noise", route="/machine/map",
                                method="POST", status="200"), 3)  # lite, one-shot, and the stream once it ended

    def test_old_client_refusal_counted(self):
        """A client below the minimum capability version is refused inside Noise, and that is counted too."""
        client = NoiseClient(self.noise_key.public(), version=100)
        pump = self._connect(self.components.site, client)
        d = client.request(b"POST", b"/machine/map", b"{}")
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, 403)
        self.assertEqual(_value(self.scrape(), "headscale_http_requests_total", listener="noise",
                                route="/machine/map", method="POST", status="403"), 1)

    def test_every_series_named(self):
        """Every series the server exports is listed in EXPORTED (which the dashboard test checks against)."""
        self._register_and_stream()
        samples = self.scrape()
        ours = {name for name, _ in samples if name.startswith("headscale_")}
        self.assertEqual(ours - EXPORTED, set())

    def test_access_log_on_every_listener(self):
        """Control, Noise, unix-socket and metrics requests each get a line with client, path, status and bytes."""
        self._register_and_stream()
        self._get("control", b"/api/v1/user?apikey=hskey-api-abcdefabcdef-" + b"S" * 40,
                  IPv4Address("TCP", "192.0.2.9", 40000), headers=b"X-Forwarded-For: 198.51.100.4\r\n")
        self._get("unix", b"/api/v1/user", UNIXAddress(None))
        self.scrape()
        lines = {}
        for event in self.events:
            if event.get("log_namespace") == _ACCESS:
                lines.setdefault(event["listener"], []).append(event)
        self.assertEqual(set(lines), {"control", "noise", "unix", "metrics"})
        api = [e for e in lines["control"] if e["route"] == "/api/v1/user"][0]
        self.assertEqual((api["client"], api["status"]), ("198.51.100.4", 401))  # through a trusted proxy
        self.assertEqual(api["path"], "/api/v1/user?apikey=***")
        self.assertEqual(api["log_level"].name, "info")
        unix = lines["unix"][0]
        self.assertEqual((unix["client"], unix["status"], unix["log_level"].name), ("local", 200, "info"))
        self.assertGreater(unix["bytes"], 0)
        register = [e for e in lines["noise"] if e["route"] == "/machine/register"][0]
        self.assertEqual((register["client"], register["log_level"].name), ("192.0.2.7", "debug"))
        self.assertEqual(lines["metrics"][0]["log_level"].name, "debug")
