# -*- test-case-name: tests.nodesapi.test_cli_extra -*-
"""``headscale nodes backfillips`` and ``headscale debug create-node`` → ``/api/v1`` → control plane, in-process."""

import io
import json

import yaml
from twisted.trial import unittest

from headscale_tw.cli.main import main
from tests.nodesapi._harness import NOW, PlaneHarness, StubTransport

__all__ = ["BackfillCommandTests", "BackfillApiTests", "DebugCreateNodeTests"]

AUTH_ID = "Q" * 24


class _Base(unittest.TestCase):
    """A plane with two nodes, the second without an IPv6 address (as after adding a v6 prefix)."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.transport = StubTransport(self.h)
        self.a = self.h.register("web")
        self.b = self.h.register("db")
        state = self.h.plane.state
        self.h.run(state.update_node(self.b.id, ipv6=None))
        state.allocator.release(self.b.ipv6)

    def cli(self, *argv, stdin=""):
        """Run the CLI; return ``(exit code, stdout, stderr)``."""
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), environ={}, stdin=io.StringIO(stdin), stdout=out, stderr=err,
                    transport=self.transport, now=lambda: NOW)
        return code, out.getvalue(), err.getvalue()


class BackfillCommandTests(_Base):
    """nodes backfillips: confirmation, the change, its output, idempotence."""

    def test_prompt_declined(self):
        """Without --force the user is asked; "n" sends nothing and changes nothing."""
        code, out, err = self.cli("nodes", "backfillips", stdin="n\n")
        self.assertEqual((code, out), (0, ""))
        self.assertIn("Are you sure that you want to assign/remove IPs to/from nodes? [y/N]", err)
        self.assertEqual(self.transport.requests, [])
        self.assertIsNone(self.h.plane.state.get(self.b.id).ipv6)

    def test_prompt_accepted(self):
        """A "y" answer backfills; the human output says so and lists the change."""
        code, out, _ = self.cli("nodes", "backfillips", stdin="y\n")
        self.assertEqual(code, 0)
        new = self.h.plane.state.get(self.b.id).ipv6
        self.assertTrue(new.startswith("fd7a:115c:a1e0::"))
        self.assertNotEqual(new, self.a.ipv6)
        self.assertEqual(out, f'Node IPs backfilled successfully\nassigned IPv6 "{new}" to Node(2) "db"\n')

    def test_force_json_and_peers_told(self):
        """--force skips the prompt; -o json is Headscale's {"changes": [...]}; a peer sees the address."""
        stream = self.h.stream(self.a)
        code, out, _ = self.cli("nodes", "backfillips", "--force", "-o", "json")
        self.assertEqual(code, 0)
        new = self.h.plane.state.get(self.b.id).ipv6
        self.assertEqual(json.loads(out), {"changes": [f'assigned IPv6 "{new}" to Node(2) "db"']})
        self.assertEqual(self.transport.requests, [("POST", "/api/v1/node/backfillips", {"confirmed": "true"}, None)])
        self.assertIn(new + "/128", stream.applier.peers[self.b.id]["Addresses"])

    def test_second_run_changes_nothing(self):
        """Running it again reports no change: {} in JSON (Go's omitempty), changes: [] in YAML."""
        self.cli("nodes", "backfillips", "--force")
        code, out, _ = self.cli("nodes", "backfillips", "--force", "-o", "json")
        self.assertEqual((code, json.loads(out)), (0, {}))
        code, out, _ = self.cli("nodes", "backfillips", "--force", "-o", "yaml")
        self.assertEqual((code, yaml.safe_load(out)), (0, {"changes": []}))


class BackfillApiTests(_Base):
    """POST /api/v1/node/backfillips."""

    def test_not_confirmed(self):
        """Without confirmed=true nothing changes and the 400 says why."""
        for query in (None, {"confirmed": "false"}):
            status, body = self.h.request("POST", "/api/v1/node/backfillips", query=query)
            self.assertEqual(status, 400)
            self.assertIn("not confirmed, aborting", body["message"])
        self.assertIsNone(self.h.plane.state.get(self.b.id).ipv6)

    def test_bad_confirmed(self):
        """A confirmed value that is not a boolean is a 400 naming the parameter."""
        status, body = self.h.request("POST", "/api/v1/node/backfillips", query={"confirmed": "maybe"})
        self.assertEqual((status, body["message"]), (400, "confirmed: expected true or false"))

    def test_confirmed_in_body(self):
        """grpc-gateway also reads confirmed from a JSON body."""
        status, body = self.h.request("POST", "/api/v1/node/backfillips", body={"confirmed": True})
        self.assertEqual((status, len(body["changes"])), (200, 1))


class DebugCreateNodeTests(unittest.TestCase):
    """debug create-node, then auth register, as Headscale's integration tests use them."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.transport = StubTransport(self.h)

    cli = _Base.cli

    def test_create_then_register(self):
        """The made-up node is pending until auth register, then listed with its routes announced."""
        code, out, _ = self.cli("debug", "create-node", "--name", "fake", "-u", "alice", "-k", AUTH_ID,
                                "-r", "10.9.0.0/16,10.8.0.0/16", "-o", "json")
        self.assertEqual(code, 0)
        node = json.loads(out)
        self.assertEqual((node["name"], node["user"]["name"]), ("fake", "alice"))
        self.assertNotIn("id", node)  # id 0, left out as Go's omitempty does
        self.assertEqual(sorted(node["available_routes"]), ["10.8.0.0/16", "10.9.0.0/16"])
        self.assertEqual(self.h.plane.state.nodes, {})
        code, out, _ = self.cli("auth", "register", "--auth-id", AUTH_ID, "--user", "alice")
        self.assertEqual((code, out), (0, "Node fake registered\n"))
        code, out, _ = self.cli("nodes", "list-routes", "-o", "json")
        self.assertEqual(sorted(json.loads(out)[0]["available_routes"]), ["10.8.0.0/16", "10.9.0.0/16"])

    def test_human_output(self):
        """Without -o the CLI prints Headscale's "Node created"."""
        code, out, _ = self.cli("debug", "create-node", "--name", "fake", "--user", "alice", "--key", AUTH_ID)
        self.assertEqual((code, out), (0, "Node created\n"))

    def test_required_flags(self):
        """--name, --user and --key are required, as in Headscale."""
        code, _, err = self.cli("debug", "create-node", "--name", "fake", "-u", "alice")
        self.assertEqual(code, 1)
        self.assertIn("--key", err)

    def test_refusals(self):
        """A bad key, route or user is a one-line error naming it."""
        for argv, word in ((("-k", "nope"), "key: expected an auth id"),
                           (("-k", AUTH_ID, "-r", "10.0.0.0/99"), "10.0.0.0/99"),
                           (("-k", AUTH_ID, "-u", "carol"), 'user "carol" not found')):
            args = ["debug", "create-node", "--name", "fake", "-u", "alice", *argv]
            code, out, err = self.cli(*args)
            self.assertEqual((code, out), (1, ""))
            self.assertIn(word, err)
            self.assertEqual(err.count("\n"), 1)

    def test_api_shape(self):
        """POST /api/v1/debug/node answers {"node": Node} in grpc-gateway's JSON; junk fields are 400."""
        status, body = self.h.request("POST", "/api/v1/debug/node",
                                      body={"user": "alice", "key": AUTH_ID, "name": "fake", "routes": []})
        self.assertEqual(status, 200)
        self.assertEqual((body["node"]["id"], body["node"]["name"], body["node"]["ipAddresses"]), ("0", "fake", []))
        status, body = self.h.request("POST", "/api/v1/debug/node",
                                      body={"user": "alice", "key": AUTH_ID, "name": "x", "routes": "10.0.0.0/8"})
        self.assertEqual((status, body["message"]), (400, "routes: expected a list of strings"))
