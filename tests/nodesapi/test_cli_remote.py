# -*- test-case-name: tests.nodesapi.test_cli_remote -*-
"""
The remote CLI: every command that manages the server works over ``/api/v1``
with an API key (``HEADSCALE_CLI_ADDRESS`` + ``HEADSCALE_CLI_API_KEY``), against
an admin API that checks keys, as the TCP listener's does.
"""

import io
import json
from urllib.parse import urlencode

from treq.testing import StubTreq
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.cli.completion import command_tree
from headscale_tw.cli.main import build_parser, main
from headscale_tw.web.admin_api import AdminAPI, mount
from tests.nodesapi._harness import NOW, PlaneHarness

__all__ = ["RemoteCommandTests"]

#: Commands that do not talk to the server.
LOCAL = {"serve", "version", "configtest", "generate private-key", "completion", "help"}

POLICY = '{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}]}'


class KeyedTransport:
    """A CLI transport into an API that checks keys, sending ``Authorization: Bearer`` as HTTPTransport does."""

    def __init__(self, testcase, treq, key):
        self.testcase = testcase
        self.treq = treq
        self.key = key
        self.paths = []

    def request(self, method, path, query=None, body=None):
        """Send one request; return ``(status, body bytes)``."""
        self.paths.append((method, path))
        url = "http://headscale.test" + path + ("?" + urlencode(query) if query else "")
        headers = {b"Authorization": [f"Bearer {self.key}".encode()]} if self.key else {}
        data = json.dumps(body).encode() if body is not None else None
        response = self.testcase.successResultOf(self.treq.request(method, url, data=data, headers=headers))
        return response.code, self.testcase.successResultOf(self.treq.content(response))


class RemoteCommandTests(unittest.TestCase):
    """Each server command, run against an API that requires an API key."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.node = self.h.register("web")
        api = AdminAPI(self.h.plane.admin, trust_all=False)
        root = Resource()
        mount(root, api)
        self.treq = StubTreq(root)
        self.key = self.h.run(self.h.plane.admin.apikeys.create())
        self.policy = self.mktemp()
        with open(self.policy, "w", encoding="utf-8") as f:
            f.write(POLICY)

    def cli(self, *argv, key=None, stdin=""):
        """Run the CLI over the keyed transport; return ``(exit code, stdout, stderr, transport)``."""
        transport = KeyedTransport(self, self.treq, self.key if key is None else key)
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), environ={}, stdin=io.StringIO(stdin), stdout=out, stderr=err, transport=transport,
                    now=lambda: NOW)
        self.h.let_deltas_out()
        return code, out.getvalue(), err.getvalue(), transport

    def commands(self):
        """Every server command with arguments that succeed, in an order where each one's target exists."""
        _, machine_auth = self.h.start_interactive("laptop")
        nid = str(self.node.id)
        return [
            ("health",),
            ("users", "create", "bob"),
            ("users", "list"),
            ("users", "rename", "-n", "bob", "-r", "carol"),
            ("preauthkeys", "create", "-u", "carol"),
            ("preauthkeys", "list"),
            ("preauthkeys", "expire", "-i", "2"),
            ("preauthkeys", "delete", "-i", "2"),
            ("users", "destroy", "-n", "carol", "--force"),
            ("apikeys", "create"),
            ("apikeys", "list"),
            ("apikeys", "expire", "-i", "2"),
            ("apikeys", "delete", "-i", "2"),
            ("nodes", "list"),
            ("nodes", "list-routes"),
            ("nodes", "rename", "-i", nid, "www"),
            ("nodes", "approve-routes", "-i", nid, "-r", "10.0.0.0/8"),
            ("policy", "set", "-f", self.policy),
            ("policy", "get"),
            ("policy", "check", "-f", self.policy),
            ("nodes", "tag", "-i", nid, "-t", ""),
            ("nodes", "expire", "-i", nid, "-d"),
            ("nodes", "backfillips", "--force"),
            ("debug", "create-node", "--name", "fake", "-u", "alice", "-k", "Z" * 24),
            ("auth", "register", "--auth-id", "Z" * 24, "-u", "alice"),
            ("nodes", "register", "-u", "alice", "-k", machine_auth),
            ("auth", "reject", "--auth-id", self.h.start_interactive("phone")[1]),
            ("auth", "approve", "--auth-id", "missing"),  # no SSH check is pending: the server's refusal
            ("nodes", "move", "-i", nid, "-u", "alice"),
            ("nodes", "delete", "-i", nid, "--force"),
            ("audit", "list", "--limit", "5"),
        ]

    def test_every_server_command(self):
        """Every command that is not local reaches the API with the key and succeeds (one is refused as expected)."""
        covered = set()
        for argv in self.commands():
            code, out, err, transport = self.cli(*argv)
            covered.add(" ".join(a for a in argv[:2] if not a.startswith("-")) if argv[0] != "health" else "health")
            self.assertTrue(transport.paths, f"{argv} sent no request")
            if argv[:2] == ("auth", "approve"):
                self.assertEqual(code, 1)
                self.assertIn("missing", err)
                continue
            if argv[:2] == ("nodes", "register"):
                self.assertIn("deprecated", err)
                err = ""
            self.assertEqual((code, err), (0, ""), argv)
        leaves = {c.key for c in command_tree(build_parser()) if not c.children and c.path}
        self.assertEqual(leaves - LOCAL - covered, set())

    def test_wrong_key_refused(self):
        """A wrong or missing key is refused with a one-line error, for new commands too."""
        for key in ("", "hskey-api-abcdefghijkl-" + "x" * 64):
            for argv in (("nodes", "list"), ("nodes", "backfillips", "--force"),
                         ("debug", "create-node", "--name", "n", "-u", "alice", "-k", "Y" * 24)):
                code, out, err, _ = self.cli(*argv, key=key or "-")
                self.assertEqual((code, out), (1, ""), argv)
                self.assertEqual(len(err.splitlines()), 1)
        self.assertIsNone(self.h.run(self.h.plane.registrar.get_pending("Y" * 24)))
