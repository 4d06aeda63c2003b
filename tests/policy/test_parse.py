# -*- test-case-name: tests.policy.test_parse -*-
"""Tests for :mod:`headscale_tw.policy.parse`."""

__all__ = ["ParsePolicyTests", "PortsTests", "DurationTests"]

import ipaddress
import json

from twisted.trial import unittest

from headscale_tw.policy.model import PolicyError
from headscale_tw.policy.parse import parse_go_duration, parse_policy, parse_ports


class ParsePolicyTests(unittest.TestCase):
    """Policies are parsed into the model or rejected with a located message."""

    def test_no_policy(self) -> None:
        """None and blank text mean "no policy"."""
        self.assertIsNone(parse_policy(None))
        self.assertIsNone(parse_policy("  \n"))

    def test_full_policy(self) -> None:
        """A HuJSON policy using every section parses."""
        pol = parse_policy("""{
          // comment
          "groups": {"group:eng": ["alice@example.com", "bob@"]},
          "hosts": {"db": "100.64.0.9", "lan": "10.0.0.0/8"},
          "tagOwners": {"tag:srv": ["group:eng"], "tag:web": ["tag:srv"]},
          "acls": [{"action": "accept", "src": ["group:eng"], "proto": "tcp",
                    "dst": ["tag:srv:22,80-81", "db:*", "[fd7a::1]:443"]}],
          "grants": [{"src": ["*"], "dst": ["lan"], "ip": ["udp:53", "*"], "via": ["tag:srv"]}],
          "ssh": [{"action": "check", "src": ["group:eng"], "dst": ["autogroup:self"],
                   "users": ["autogroup:nonroot", "root"], "checkPeriod": "1h30m"}],
          "nodeAttrs": [{"target": ["*"], "attr": ["funnel"]}],
          "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:srv"]}, "exitNode": ["bob@"]},
          "randomizeClientPort": true,
        }""")
        self.assertEqual(pol.groups["group:eng"], ("alice@example.com", "bob@"))
        self.assertEqual(pol.hosts["lan"], ipaddress.ip_network("10.0.0.0/8"))
        acl = pol.acls[0]
        self.assertEqual(acl.proto, "tcp")
        self.assertEqual(acl.dst[0].ports, ((22, 22), (80, 81)))
        self.assertEqual(acl.dst[2].alias.kind, "prefix")
        self.assertEqual(pol.grants[0].via, ("tag:srv",))
        self.assertEqual(pol.ssh[0].check_period, 5400.0)
        self.assertTrue(pol.randomize_client_port)

    def _rejects(self, text: str, fragment: str) -> None:
        e = self.assertRaises(PolicyError, parse_policy, text)
        self.assertIn(fragment, str(e))

    def test_undefined_group_named_with_place(self) -> None:
        """An undefined group is reported with its location."""
        self._rejects('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]},'
                      '{"action": "accept", "src": ["*"], "dst": ["*:*"]},'
                      '{"action": "accept", "src": ["*"], "dst": ["group:eng:22"]}]}',
                      'acls[2].dst[0]: group "group:eng" is not defined')

    def test_unknown_field(self) -> None:
        """Unknown fields are rejected."""
        self._rejects('{"acl": []}', "unknown field 'acl'")
        self._rejects('{"acls": [{"action": "accept", "src": [], "dst": [], "x": 1}]}', "acls[0]")

    def test_hash_keys_ignored_in_acls(self) -> None:
        """Keys starting with # inside an ACL are ignored."""
        pol = parse_policy('{"acls": [{"#note": "x", "action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
        self.assertEqual(len(pol.acls), 1)

    def test_self_as_source(self) -> None:
        """autogroup:self is not allowed as a source."""
        self._rejects('{"acls": [{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}]}',
                      "not valid on the src side")

    def test_self_with_tag_source(self) -> None:
        """autogroup:self destinations need user or group sources."""
        self._rejects('{"tagOwners": {"tag:a": []}, "acls": [{"action": "accept",'
                      ' "src": ["tag:a"], "dst": ["autogroup:self:*"]}]}', "autogroup:self can only")

    def test_deny_action(self) -> None:
        """Only the accept action exists."""
        self._rejects('{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}', "not supported")

    def test_missing_port(self) -> None:
        """An ACL destination must carry ports."""
        self._rejects('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*"]}]}', "colon")

    def test_proto_wildcard(self) -> None:
        """proto "*" is rejected."""
        self._rejects('{"acls": [{"action": "accept", "proto": "*", "src": ["*"], "dst": ["*:*"]}]}', "proto")

    def test_ports_with_portless_protocol(self) -> None:
        """Protocols without ports only accept "*"."""
        self._rejects('{"acls": [{"action": "accept", "proto": "icmp", "src": ["*"], "dst": ["*:22"]}]}',
                      "does not support specific ports")

    def test_recursive_group(self) -> None:
        """Groups may not contain groups."""
        self._rejects('{"groups": {"group:a": ["group:b"], "group:b": []}}', "recursive")

    def test_tag_owner_undefined_tag(self) -> None:
        """A tag owned by an undefined tag is rejected."""
        self._rejects('{"tagOwners": {"tag:a": ["tag:b"]}}', "undefined tag")

    def test_ssh_users_required(self) -> None:
        """SSH rules need users."""
        self._rejects('{"ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"]}]}',
                      "users must be specified")

    def test_ssh_check_period_limits(self) -> None:
        """checkPeriod is capped at 168h and needs action check."""
        base = '{"ssh": [{"action": "%s", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"], "checkPeriod": "%s"}]}'
        self._rejects(base % ("check", "169h"), "above the max")
        self._rejects(base % ("accept", "1h"), "only valid with action")

    def test_grant_needs_ip_or_app(self) -> None:
        """A grant without ip and app is rejected."""
        self._rejects('{"grants": [{"src": ["*"], "dst": ["*"]}]}', "ip and app")

    def test_grant_tailscale_cap(self) -> None:
        """Grants cannot hand out tailscale.com capabilities outside the allowlist."""
        self._rejects('{"grants": [{"src": ["*"], "dst": ["*"], "app": {"tailscale.com/cap/x": [{}]}}]}',
                      "tailscale.com domain")

    def test_syntax_error_position(self) -> None:
        """HuJSON syntax errors carry line:column."""
        self._rejects('{\n "acls": [,]\n}', "2:11")


class PortsTests(unittest.TestCase):
    """Port lists parse into inclusive ranges."""

    def test_forms(self) -> None:
        """Single ports, lists, ranges and * are understood."""
        self.assertEqual(parse_ports("*"), ((0, 65535),))
        self.assertEqual(parse_ports("22,80-81"), ((22, 22), (80, 81)))

    def test_errors(self) -> None:
        """Port 0, inverted ranges and junk are rejected."""
        for bad in ("0", "10-5", "x", "70000", "1-2-3"):
            self.assertRaises(PolicyError, parse_ports, bad)


class DurationTests(unittest.TestCase):
    """Go duration strings are understood."""

    def test_values(self) -> None:
        """Compound and fractional durations convert to seconds."""
        self.assertEqual(parse_go_duration("1h30m"), 5400.0)
        self.assertEqual(parse_go_duration("1.5s"), 1.5)
        self.assertEqual(parse_go_duration("0"), 0.0)
        self.assertRaises(ValueError, parse_go_duration, "abc")
        self.assertRaises(ValueError, parse_go_duration, "")


class IdPGroupParseTests(unittest.TestCase):
    """``idpgroup:<name>`` aliases: where they may appear and which are refused."""

    def test_accepted_everywhere_a_user_is(self) -> None:
        """ACL, grant, SSH source, tagOwners, autoApprovers, group members and nodeAttrs take IdP groups."""
        pol = parse_policy("""{
          "groups": {"group:admins": ["alice@", "idpgroup:/platform/admins"]},
          "tagOwners": {"tag:srv": ["idpgroup:ops"]},
          "acls": [{"action": "accept", "src": ["idpgroup:eng@example.com"], "dst": ["idpgroup:ops:22,443"]},
                   {"action": "accept", "src": ["idpgroup:ops"], "dst": ["autogroup:self:*"]}],
          "grants": [{"src": ["idpgroup:Domain Users"], "dst": ["tag:srv"], "ip": ["*"]}],
          "ssh": [{"action": "accept", "src": ["idpgroup:ops"], "dst": ["autogroup:self"], "users": ["root"]}],
          "nodeAttrs": [{"target": ["idpgroup:ops"], "attr": ["funnel"]}],
          "autoApprovers": {"routes": {"10.0.0.0/8": ["idpgroup:ops"]}, "exitNode": ["idpgroup:ops"]},
        }""")
        src, dst = pol.acls[0].src[0], pol.acls[0].dst[0]
        self.assertEqual((src.kind, src.name), ("idpgroup", "idpgroup:eng@example.com"))
        self.assertEqual((dst.alias.kind, dst.alias.name, dst.ports), ("idpgroup", "idpgroup:ops", ((22, 22), (443, 443))))
        self.assertEqual(pol.grants[0].src[0].name, "idpgroup:Domain Users")
        self.assertEqual(pol.groups["group:admins"], ("alice@", "idpgroup:/platform/admins"))
        self.assertEqual(pol.tag_owners["tag:srv"], ("idpgroup:ops",))
        self.assertEqual(pol.ssh[0].src[0].kind, "idpgroup")
        self.assertEqual(pol.auto_approvers.exit_node[0].kind, "idpgroup")

    def test_malformed_refused(self) -> None:
        """An empty, overlong or control-character name and look-alike prefixes are refused, naming the place."""
        def acl(src: str) -> str:
            return json.dumps({"acls": [{"action": "accept", "src": [src], "dst": ["*:*"]}]})

        for src, fragment in (
            ("idpgroup:", "acls[0].src[0]: 'idpgroup:': an IdP group needs a name after 'idpgroup:'"),
            ("idpgroup:" + "x" * 257, "an IdP group name is at most 256 characters"),
            ("idpgroup:a\tb", "cannot contain control characters"),
            ("idpgroups:eng", "invalid alias 'idpgroups:eng': an IdP group is written idpgroup:<name>"),
            ("IdPGroup:eng", "an IdP group is written idpgroup:<name>"),
            ("idp-group:eng", "an IdP group is written idpgroup:<name>"),
            ("idpgroup", "an IdP group is written idpgroup:<name>"),
        ):
            e = self.assertRaises(PolicyError, parse_policy, acl(src))
            self.assertIn(fragment, str(e), src)
        e = self.assertRaises(PolicyError, parse_policy, json.dumps({"groups": {"group:a": ["idpgroup:"]}}))
        self.assertIn("groups['group:a']: 'idpgroup:': an IdP group needs a name", str(e))
        e = self.assertRaises(PolicyError, parse_policy, json.dumps({"tagOwners": {"tag:a": ["idpgroup:"]}}))
        self.assertIn("tagOwners['tag:a']", str(e))

    def test_user_destination_needs_that_user_alone(self) -> None:
        """As with ``group:``, an IdP group in an SSH source cannot reach one user's devices."""
        e = self.assertRaises(PolicyError, parse_policy, json.dumps({"ssh": [
            {"action": "accept", "src": ["idpgroup:ops", "alice@"], "dst": ["alice@"], "users": ["root"]}]}))
        self.assertIn("user destination requires source to contain only that same user", str(e))
