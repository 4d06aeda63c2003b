"""The load generator's simulated nodes put the official client's requests on the wire."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from headscale_tw.bench import wire
from headscale_tw.bench.simnode import SimNode
from tests.bench._server import InProcessServer

DATA = os.path.join(os.path.dirname(__file__), "data")
HOST = b"127.0.0.1:8080"


def capture(name: str) -> dict:
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


def shape(value):
    """Keys in order and value types, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return ["list", shape(value[0]) if value else None]
    return type(value).__name__


def header_names(headers: dict) -> set[str]:
    return {name.lower() for name in headers}


class WireTests(unittest.TestCase):
    """A simulated node's whole login, recorded by the server, matches tailscaled 1.96.4's captures."""

    def setUp(self):
        self.server = InProcessServer(self)
        self.node = SimNode(0, self.server, HOST, self.server.auth_key, verify=True, now=self.server.clock.seconds)
        self.server.run(self.node.up())
        self.server.settle()
        self.seen = self.server.seen

    def bodies(self, uri: str) -> list[dict]:
        return [json.loads(r["body"]) for r in self.seen if r["uri"] == uri]

    def test_request_order(self):
        """Same requests in the same order: /key, /ts2021, register, lite, stream, lite with endpoints."""
        expected = [(r["kind"], r["method"], r["uri"]) for r in capture("request-sequence.json")["requests"]]
        got = [(r["kind"], r["method"], r["uri"]) for r in self.seen]
        self.assertEqual(got[:4], expected[:4])
        self.assertEqual(set(got[4:]), set(expected[4:]))
        maps = self.bodies("/machine/map")
        self.assertEqual([("Stream" in b, "OmitPeers" in b, "Endpoints" in b) for b in maps],
                         [(False, True, False), (True, False, False), (False, True, True)])

    def test_request_headers(self):
        """Every request carries the same header names as the capture; no Content-Type anywhere."""
        sequence = capture("request-sequence.json")["requests"]
        by_uri = {r["uri"]: header_names(r["headers"]) for r in sequence}
        for request in self.seen:
            self.assertEqual(header_names(request["headers"]), by_uri[request["uri"]], request["uri"])
            self.assertNotIn("content-type", request["headers"])

    def test_header_values(self):
        """Ts-Lb is the node key, Accept-Encoding gzip, Go's user agents, Content-Length exact."""
        for request in self.seen:
            headers = request["headers"]
            if request["kind"] == "http1":
                self.assertEqual(headers["user-agent"], ["Go-http-client/1.1"])
                continue
            self.assertEqual(headers["ts-lb"], [self.node.node_key])
            self.assertEqual(headers["accept-encoding"], ["gzip"])
            self.assertEqual(headers["user-agent"], ["Go-http-client/2.0"])
            self.assertEqual(headers["content-length"], [str(len(request["body"]))])
        upgrade = self.seen[1]["headers"]
        self.assertEqual(upgrade["upgrade"], ["tailscale-control-protocol"])
        self.assertEqual(upgrade["connection"], ["upgrade"])
        self.assertEqual(upgrade["content-length"], ["0"])

    def test_register_body(self):
        """The RegisterRequest has the captured keys, in order, with the captured types."""
        (body,) = self.bodies("/machine/register")
        self.assertEqual(shape(body), shape(capture("register-request.json")["body"]))
        self.assertEqual(body["NodeKey"], self.node.node_key)
        self.assertEqual(body["Auth"], {"AuthKey": self.server.auth_key})

    def test_map_bodies(self):
        """Lite, streaming and endpoint MapRequests have the captured keys, order and types."""
        lite, stream, endpoints = self.bodies("/machine/map")
        self.assertEqual(shape(lite), shape(capture("map-request-lite.json")["body"]))
        self.assertEqual(shape(stream), shape(capture("map-request-stream.json")["body"]))
        self.assertEqual(shape(endpoints), shape(capture("map-request-lite-endpoints.json")["body"]))
        self.assertEqual(len(endpoints["Endpoints"]), len(endpoints["EndpointTypes"]))

    def test_key_request_bytes(self):
        """GET /key is sent with only Host and User-Agent, as Go does."""
        self.assertEqual(
            wire.key_request(HOST),
            b"GET /key?v=133 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Go-http-client/1.1\r\n\r\n",
        )

    def test_node_gets_coherent_map(self):
        """The simulated node's stream decodes into a coherent netmap holding itself."""
        self.assertIsNotNone(self.node.applier.node)
        self.assertEqual(self.node.applier.node["Key"], self.node.node_key)
        self.assertEqual(len(self.node.frames), 1)


class StreamTests(unittest.TestCase):
    """Simulated nodes see each other's deltas; logout of an ephemeral node removes it."""

    def test_peers_and_delta_timing(self):
        """Three nodes each end with the other two as peers, and record when deltas arrived."""
        server = InProcessServer(self)
        nodes = [SimNode(i, server, HOST, server.auth_key, verify=True, now=server.clock.seconds) for i in range(3)]
        for node in nodes:
            server.run(node.up())
        server.settle()
        ids = {node.applier.node["ID"] for node in nodes}
        for node in nodes:
            self.assertEqual(set(node.applier.peers), ids - {node.applier.node["ID"]})
        before = len(nodes[1].frames)
        server.run(nodes[0].lite(["198.51.100.1:41641"]))
        server.settle()
        self.assertEqual(len(nodes[1].frames), before + 1)
        self.assertEqual(nodes[1].applier.peers[nodes[0].applier.node["ID"]]["Endpoints"], ["198.51.100.1:41641"])

    def test_stream_watches_its_unsent_bytes(self):
        """A map stream over Noise + HTTP/2 is wired to its stream's unsent-byte count and abort."""
        server = InProcessServer(self)
        node = SimNode(0, server, HOST, server.auth_key, verify=True, now=server.clock.seconds)
        server.run(node.up())
        server.settle()
        (session,) = server.plane.notifier.sessions[node.applier.node["ID"]]
        self.assertEqual(session._unsent(), 0)  # the client read everything
        self.assertIsNotNone(session._abort)

    def test_hostinfo_request_tags(self):
        """A node asking for a tag adds only RequestTags, after GoVersion as Go orders it."""
        info = wire.hostinfo("h", "0" * 64, ["tag:g0"])
        keys = list(info)
        self.assertEqual(keys[keys.index("GoVersion") + 1], "RequestTags")
        self.assertEqual(set(keys) - set(wire.hostinfo("h", "0" * 64)), {"RequestTags"})
