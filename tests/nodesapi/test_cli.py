# -*- test-case-name: tests.nodesapi.test_cli -*-
"""End-to-end tests: ``headscale nodes|auth|policy`` → admin API → control plane → SQLite, in-process."""

import io
import json
import os

import yaml
from twisted.trial import unittest

from headscale_tw.cli.main import main
from headscale_tw.testing.db import resolve
from tests.nodesapi._harness import NOW, PlaneHarness, StubTransport

__all__ = ["NodeCommandTests", "RouteCommandTests", "RegisterCommandTests", "PolicyCommandTests", "FilePolicyCommandTests",
           "OutputTests"]

POLICY = ('{"tagOwners": {"tag:web": ["alice@"]},'
          ' "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web:80"]}]}')


class _CLITestCase(unittest.TestCase):
    """A plane with two registered nodes and a CLI runner."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.transport = StubTransport(self.h)
        self.a = self.h.register("web")
        self.b = self.h.register("db")

    def cli(self, *argv, stdin=""):
        """Run the CLI; return ``(exit code, stdout, stderr)``."""
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), environ={}, stdin=io.StringIO(stdin), stdout=out, stderr=err,
                    transport=self.transport, now=lambda: NOW)
        return code, out.getvalue(), err.getvalue()

    def write(self, text):
        """A temporary file holding ``text``; return its path."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class NodeCommandTests(_CLITestCase):
    """nodes list / expire / rename / delete / tag / move."""

    def test_list_table(self):
        """The default output is Headscale's node table."""
        self.h.stream(self.a)
        code, out, _ = self.cli("nodes", "list")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual([c.strip() for c in lines[0].split(" | ")],
                         ["ID", "Hostname", "Name", "MachineKey", "NodeKey", "User", "Tags", "IP addresses",
                          "Ephemeral", "Last seen", "Expiration", "Connected", "Expired"])
        first = [c.strip() for c in lines[1].split(" | ")]
        self.assertEqual(first[:3], ["1", "web", "web"])
        self.assertRegex(first[3], r"^\[[A-Za-z0-9+/]{5}\]$")
        self.assertEqual(first[5:7], ["alice", ""])
        self.assertEqual(first[7], "100.64.0.1")
        self.assertEqual(first[8:], ["false", "", "N/A", "online", "no"])
        self.assertEqual(lines[2].split(" | ")[7].strip(), "fd7a:115c:a1e0::1")  # second address, next line

    def test_list_by_user(self):
        """-u filters by user; an unknown user is a one-line error and exit 1."""
        bob = self.h.add_user("bob")
        self.h.register("laptop", key=self.h.auth_key(bob.id))
        code, out, _ = self.cli("nodes", "list", "-u", "bob", "-o", "json")
        self.assertEqual([n["name"] for n in json.loads(out)], ["laptop"])
        code, out, err = self.cli("nodes", "list", "-u", "carol")
        self.assertEqual((code, out, err), (1, "", 'Error: user "carol" not found\n'))

    def test_rename(self):
        """rename sets the name, peers see it; a bad name is a one-line error naming the rule."""
        sb = self.h.stream(self.b)
        code, out, _ = self.cli("nodes", "rename", "-i", str(self.a.id), "www")
        self.assertEqual((code, out), (0, "Node renamed\n"))
        self.assertEqual(sb.applier.peers[self.a.id]["Name"], "www.tail.example.")
        code, out, err = self.cli("nodes", "rename", "-i", str(self.a.id), "Bad_Name")
        self.assertEqual(code, 1)
        self.assertIn("lower-case letters", err)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertEqual(self.h.plane.state.get(self.a.id).given_name, "www")

    def test_unknown_node(self):
        """An unknown id: ``Error: node 7 not found``, exit 1."""
        for argv in (("nodes", "rename", "-i", "7", "x"), ("nodes", "expire", "-i", "7"),
                     ("nodes", "delete", "-i", "7", "--force"), ("nodes", "tag", "-i", "7", "-t", "tag:a")):
            self.assertEqual(self.cli(*argv), (1, "", "Error: node 7 not found\n"), argv)

    def test_identifier_required(self):
        """Commands on one node need -i."""
        code, _, err = self.cli("nodes", "expire")
        self.assertEqual(code, 1)
        self.assertIn("-i/--identifier", err)

    def test_expire(self):
        """expire: now, at a time, or disabled."""
        code, out, _ = self.cli("nodes", "expire", "-i", str(self.a.id))
        self.assertEqual((code, out), (0, "Node expired\n"))
        self.assertEqual(self.h.plane.state.get(self.a.id).expiry, NOW)
        code, out, _ = self.cli("nodes", "expire", "-i", str(self.a.id), "-e", "2030-01-01T00:00:00Z")
        self.assertEqual((code, out), (0, "Node expiration updated\n"))
        self.assertEqual(self.h.plane.state.get(self.a.id).expiry.year, 2030)
        code, out, _ = self.cli("nodes", "expire", "-i", str(self.a.id), "--disable")
        self.assertEqual((code, out), (0, "Node expiry disabled\n"))
        self.assertIsNone(self.h.plane.state.get(self.a.id).expiry)
        code, _, err = self.cli("nodes", "expire", "-i", str(self.a.id), "-e", "soon")
        self.assertEqual(code, 1)
        self.assertIn("parsing expiry time", err)

    def test_delete_confirm(self):
        """delete asks first; "n" keeps the node, "y" deletes it, --force skips the question."""
        code, out, err = self.cli("nodes", "delete", "-i", str(self.a.id), stdin="n\n")
        self.assertEqual((code, out), (0, "Node not deleted\n"))
        self.assertIn("Do you want to remove the node web?", err)
        self.assertIn(self.a.id, self.h.plane.state.nodes)
        code, out, _ = self.cli("nodes", "delete", "-i", str(self.a.id), stdin="y\n")
        self.assertEqual((code, out), (0, "Node deleted\n"))
        self.assertNotIn(self.a.id, self.h.plane.state.nodes)
        code, out, _ = self.cli("nodes", "delete", "-i", str(self.b.id), "--force", "-o", "json")
        self.assertEqual((code, json.loads(out)), (0, {"Result": "Node deleted"}))
        self.assertEqual(resolve(self.h.db.nodes.list()), [])

    def test_tag(self):
        """tag takes repeated or comma-separated tags; a bad tag changes nothing."""
        code, out, _ = self.cli("nodes", "tag", "-i", str(self.a.id), "-t", "tag:web,tag:prod", "-t", "tag:eu")
        self.assertEqual((code, out), (0, "Node updated\n"))
        self.assertEqual(self.h.plane.state.get(self.a.id).tags, ("tag:eu", "tag:prod", "tag:web"))
        code, _, err = self.cli("nodes", "tag", "-i", str(self.a.id), "-t", "web")
        self.assertEqual(code, 1)
        self.assertIn("tag:", err)
        self.assertEqual(self.h.plane.state.get(self.a.id).tags, ("tag:eu", "tag:prod", "tag:web"))

    def test_move(self):
        """move gives the node to another user."""
        bob = self.h.add_user("bob")
        code, out, _ = self.cli("nodes", "move", "-i", str(self.a.id), "-u", "bob")
        self.assertEqual((code, out), (0, "Node moved to another user\n"))
        self.assertEqual(self.h.plane.state.get(self.a.id).user_id, bob.id)


class RouteCommandTests(_CLITestCase):
    """nodes approve-routes / list-routes."""

    def setUp(self):
        super().setUp()
        self.r = self.h.register("router", RoutableIPs=["10.1.0.0/16", "192.168.1.0/24"])
        self.h.stream(self.r)

    def test_list_routes(self):
        """list-routes shows only nodes with routes, with Headscale's columns."""
        self.cli("nodes", "approve-routes", "-i", str(self.r.id), "-r", "10.1.0.0/16")
        code, out, _ = self.cli("nodes", "list-routes")
        self.assertEqual(code, 0)
        lines = [[c.strip() for c in line.split("|")] for line in out.splitlines()]
        self.assertEqual(lines[0], ["ID", "Hostname", "Approved", "Available", "Serving (Primary)"])
        self.assertEqual(lines[1], [str(self.r.id), "router", "10.1.0.0/16", "10.1.0.0/16", "10.1.0.0/16"])
        self.assertEqual(lines[2], ["", "", "", "192.168.1.0/24", ""])
        self.assertEqual(len(lines), 3)

    def test_list_routes_one_node(self):
        """-i limits the listing; a node without routes lists nothing (null)."""
        code, out, _ = self.cli("nodes", "list-routes", "-i", str(self.r.id), "-o", "json")
        self.assertEqual([n["id"] for n in json.loads(out)], [self.r.id])
        code, out, _ = self.cli("nodes", "list-routes", "-i", str(self.a.id), "-o", "json")
        self.assertEqual(out, "null\n")

    def test_approve_and_clear(self):
        """approve-routes sets the list; -r "" clears it; a bad prefix is an error."""
        code, out, _ = self.cli("nodes", "approve-routes", "-i", str(self.r.id), "-r", "10.1.0.0/16,192.168.1.0/24")
        self.assertEqual((code, out), (0, "Node updated\n"))
        self.assertEqual(self.h.plane.state.get(self.r.id).approved_routes, ("10.1.0.0/16", "192.168.1.0/24"))
        code, _, err = self.cli("nodes", "approve-routes", "-i", str(self.r.id), "-r", "10.1.0.0/33")
        self.assertEqual(code, 1)
        self.assertIn("10.1.0.0/33", err)
        self.assertEqual(self.h.plane.state.get(self.r.id).approved_routes, ("10.1.0.0/16", "192.168.1.0/24"))
        code, out, _ = self.cli("nodes", "approve-routes", "-i", str(self.r.id), "-r", "")
        self.assertEqual((code, out), (0, "Node updated\n"))
        self.assertEqual(self.h.plane.state.get(self.r.id).approved_routes, ())


class RegisterCommandTests(_CLITestCase):
    """auth register and the deprecated nodes register."""

    def test_auth_register(self):
        """auth register --auth-id --user completes the pending login."""
        machine_key, auth_id = self.h.start_interactive("laptop")
        code, out, _ = self.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        self.assertEqual((code, out), (0, "Node laptop registered\n"))
        self.assertEqual(self.h.plane.state.by_machine_key(machine_key).register_method, "cli")

    def test_nodes_register_deprecated(self):
        """nodes register -u -k still works and warns on stderr."""
        _, auth_id = self.h.start_interactive("laptop")
        code, out, err = self.cli("nodes", "register", "-u", "alice", "-k", auth_id)
        self.assertEqual((code, out), (0, "Node laptop registered\n"))
        self.assertIn("deprecated", err)

    def test_unknown_auth_id(self):
        """An unknown auth id is a one-line error."""
        code, out, err = self.cli("auth", "register", "--auth-id", "nope", "--user", "alice")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith('Error: no pending registration with auth id "nope"'))

    def test_auth_reject(self):
        """auth reject --auth-id refuses the pending login."""
        _, auth_id = self.h.start_interactive("laptop")
        code, out, _ = self.cli("auth", "reject", "--auth-id", auth_id)
        self.assertEqual((code, out), (0, "Auth request rejected\n"))
        self.assertEqual(self.h.run(self.h.db.auth_requests.get(auth_id)).state, "rejected")

    def test_auth_approve_registration(self):
        """auth approve of a node registration is a one-line error pointing at auth register."""
        _, auth_id = self.h.start_interactive("laptop")
        code, out, err = self.cli("auth", "approve", "--auth-id", auth_id)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("auth register", err)


class PolicyCommandTests(_CLITestCase):
    """policy get / set / check."""

    def test_set_get(self):
        """set stores and applies the file; get prints it as is."""
        code, out, _ = self.cli("policy", "set", "-f", self.write(POLICY))
        self.assertEqual((code, out), (0, "Policy updated.\n"))
        self.assertEqual(self.h.plane.policy.get_policy(), POLICY)
        self.assertEqual(self.cli("policy", "get"), (0, POLICY + "\n", ""))

    def test_set_rejected(self):
        """A rejected policy is a one-line error with the reason; the old one stays."""
        self.cli("policy", "set", "-f", self.write(POLICY))
        code, out, err = self.cli("policy", "set", "-f", self.write("{\n  \"acls\": [\n"))
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("Error: parsing HuJSON"), err)
        self.assertEqual(self.h.plane.policy.get_policy(), POLICY)

    def test_missing_file(self):
        """An unreadable file is reported without contacting the server."""
        code, _, err = self.cli("policy", "set", "-f", os.path.join(self.mktemp(), "nope.hujson"))
        self.assertEqual(code, 1)
        self.assertIn("reading policy file", err)
        self.assertEqual(self.transport.requests, [])

    def test_check(self):
        """check validates against the server's users and nodes without applying."""
        self.assertEqual(self.cli("policy", "check", "-f", self.write(POLICY)), (0, "Policy is valid\n", ""))
        self.assertEqual(self.h.plane.policy.get_policy(), "")
        code, _, err = self.cli("policy", "check", "-f", self.write("{"))
        self.assertEqual(code, 1)
        self.assertIn("HuJSON", err)

    def test_get_none(self):
        """With no policy, get says so and exits 1."""
        code, _, err = self.cli("policy", "get")
        self.assertEqual(code, 1)
        self.assertIn("all traffic is allowed", err)


class FilePolicyCommandTests(unittest.TestCase):
    """policy set against a server in file mode."""

    def test_set_refused(self):
        """The error says the policy comes from a file."""
        h = PlaneHarness(self, policy_mode="file", policy_path="/etc/hs/acl.hujson",
                         files={"/etc/hs/acl.hujson": POLICY})
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("{}")
        err = io.StringIO()
        code = main(["policy", "set", "-f", path], environ={}, stdin=io.StringIO(), stdout=io.StringIO(),
                    stderr=err, transport=StubTransport(h), now=lambda: NOW)
        self.assertEqual(code, 1)
        self.assertIn("policy.mode 'file'", err.getvalue())
        self.assertEqual(h.plane.policy.get_policy(), POLICY)


class OutputTests(_CLITestCase):
    """-o json / json-line / yaml print Headscale's Go shapes of Node."""

    def test_json(self):
        """JSON: snake_case, numeric ids and enum, timestamps as seconds/nanos, empty fields omitted."""
        code, out, _ = self.cli("nodes", "list", "-o", "json")
        nodes = json.loads(out)
        self.assertEqual(len(nodes), 2)
        node = nodes[0]
        self.assertEqual(node["id"], self.a.id)
        self.assertEqual(node["register_method"], 1)
        self.assertEqual(node["given_name"], "web")
        self.assertEqual(node["ip_addresses"], ["100.64.0.1", "fd7a:115c:a1e0::1"])
        self.assertEqual(node["created_at"], {"seconds": 1_800_000_000})
        self.assertEqual(node["user"]["name"], "alice")
        self.assertTrue(node["pre_auth_key"]["reusable"])
        for absent in ("online", "tags", "expiry", "approved_routes", "disco_key"):
            self.assertNotIn(absent, node)
        self.assertIn("\n\t", out)

    def test_json_line_single(self):
        """json-line prints one Node on one line."""
        code, out, _ = self.cli("nodes", "rename", "-i", str(self.a.id), "www", "-o", "json-line")
        self.assertEqual(out.count("\n"), 1)
        self.assertEqual(json.loads(out)["given_name"], "www")

    def test_yaml(self):
        """YAML: lower-cased Go field names, every field present."""
        code, out, _ = self.cli("nodes", "list", "-o", "yaml")
        node = yaml.safe_load(out)[0]
        self.assertEqual(node["givenname"], "web")
        self.assertEqual(node["registermethod"], 1)
        self.assertIs(node["online"], False)
        self.assertEqual(node["tags"], [])
        self.assertIsNone(node["expiry"])

    def test_error_json(self):
        """With -o json an error is {"error": ...} on stderr."""
        code, out, err = self.cli("nodes", "rename", "-i", "9", "x", "-o", "json")
        self.assertEqual((code, out, json.loads(err)), (1, "", {"error": "node 9 not found"}))
