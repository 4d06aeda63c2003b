# -*- test-case-name: tests.cli.test_audit -*-
"""Tests for ``headscale audit list``: CLI → admin API → audit log, in-process."""

import io
import json
from datetime import timedelta

import yaml
from twisted.trial import unittest

from headscale_tw.cli.main import main
from tests.nodesapi._harness import NOW, PlaneHarness, StubTransport


class AuditListTests(unittest.TestCase):
    """``audit list`` shows the events the CLI's own actions left, with filters and formats."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.transport = StubTransport(self.h)
        self.assertEqual(self.cli("users", "create", "bob")[0], 0)
        self.h.clock.advance(3600)
        self.assertEqual(self.cli("users", "create", "carol")[0], 0)

    def cli(self, *argv):
        """Run the CLI at the harness's time; return ``(exit code, stdout, stderr)``."""
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), environ={}, stdin=io.StringIO(), stdout=out, stderr=err, transport=self.transport,
                    now=self.h.plane.now)
        return code, out.getvalue(), err.getvalue()

    def test_json(self):
        """``-o json`` prints the events, newest first, as the API gives them."""
        code, out, _ = self.cli("audit", "list", "-o", "json")
        self.assertEqual(code, 0)
        events = json.loads(out)
        self.assertEqual([(e["action"], e["targetName"], e["actorKind"]) for e in events],
                         [("user.create", "carol", "unix_socket"), ("user.create", "bob", "unix_socket")])

    def test_yaml_and_table(self):
        """``-o yaml`` holds the same events; the default table has one line per event."""
        code, out, _ = self.cli("audit", "list", "-o", "yaml")
        self.assertEqual([e["targetName"] for e in yaml.safe_load(out)], ["carol", "bob"])
        code, out, _ = self.cli("audit", "list")
        self.assertEqual(code, 0)
        self.assertEqual(len(out.strip().splitlines()), 3)
        self.assertIn("user:", out)

    def test_filters_reach_the_server(self):
        """--since as a duration ago, --target, --actor, --action and --limit become query parameters."""
        code, out, _ = self.cli("audit", "list", "--since", "30m", "-o", "json")
        self.assertEqual([e["targetName"] for e in json.loads(out)], ["carol"])
        code, out, _ = self.cli("audit", "list", "--target", "bob", "--actor", "unix_socket", "--action", "user",
                                "--limit", "5", "-o", "json")
        self.assertEqual([e["targetName"] for e in json.loads(out)], ["bob"])
        _, _, query, _ = self.transport.requests[-1]
        self.assertEqual(query, {"target": "bob", "actor": "unix_socket", "action": "user", "limit": "5"})
        until = (NOW + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        code, out, _ = self.cli("audit", "list", "--until", until, "-o", "json")
        self.assertEqual([e["targetName"] for e in json.loads(out)], ["bob"])

    def test_bad_options(self):
        """A bad --since or --limit fails with one line naming the option."""
        code, _, err = self.cli("audit", "list", "--since", "last week")
        self.assertEqual(code, 1)
        self.assertIn("--since", err)
        code, _, err = self.cli("audit", "list", "--limit", "0")
        self.assertEqual((code, "--limit" in err), (1, True))

    def test_empty(self):
        """No matching event prints a sentence, not an empty table."""
        code, out, _ = self.cli("audit", "list", "--actor", "nobody")
        self.assertEqual((code, out.strip()), (0, "No audit events"))
