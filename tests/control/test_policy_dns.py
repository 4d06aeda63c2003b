"""Tests for the DNSConfig sent to clients and the ControlPlane's reload (policy + DNS)."""

import json

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.config.model import Config, DNSConfig, ExtraRecord, NameserversConfig, PolicyConfig
from headscale_tw.control.mapper import dns_config, parse_extra_records
from headscale_tw.control.plane import ControlPlane
from headscale_tw.errors import InvalidInput
from headscale_tw.testing.db import open_test_database, resolve
from tests.control._harness import Stream


def config(**dns):
    return Config(server_url="https://hs.example.com", dns=DNSConfig(**dns))


class DNSConfigTests(unittest.TestCase):
    """config.dns maps to tailcfg.DNSConfig as docs/control.md (*Policy integration*, DNS) says."""

    def test_override_local(self):
        """Global nameservers become Resolvers when overriding local DNS; MagicDNS sets Proxied."""
        out = dns_config(config(base_domain="tail.example", nameservers=NameserversConfig(global_=("1.1.1.1",))))
        self.assertEqual(out["Resolvers"], [{"Addr": "1.1.1.1"}])
        self.assertNotIn("FallbackResolvers", out)
        self.assertTrue(out["Proxied"])
        self.assertEqual(out["Domains"], ["tail.example"])

    def test_fallback(self):
        """Without override_local_dns they become FallbackResolvers."""
        out = dns_config(config(override_local_dns=False, nameservers=NameserversConfig(global_=("9.9.9.9",))))
        self.assertEqual(out["FallbackResolvers"], [{"Addr": "9.9.9.9"}])
        self.assertNotIn("Resolvers", out)

    def test_split_search_extra(self):
        """Split DNS → Routes, Domains = base + search domains, extra records → ExtraRecords."""
        out = dns_config(
            config(
                magic_dns=False,
                base_domain="tail.example",
                search_domains=("corp.example.com",),
                nameservers=NameserversConfig(split=(("corp.example.com", ("10.0.0.53",)),)),
                extra_records=(ExtraRecord("grafana.tail.example", "A", "100.64.0.3"),),
            ),
            [{"Name": "x.tail.example", "Type": "AAAA", "Value": "fd7a:115c:a1e0::9"}],
        )
        self.assertEqual(out["Routes"], {"corp.example.com": [{"Addr": "10.0.0.53"}]})
        self.assertEqual(out["Domains"], ["tail.example", "corp.example.com"])
        self.assertNotIn("Proxied", out)
        self.assertEqual([r["Name"] for r in out["ExtraRecords"]], ["grafana.tail.example", "x.tail.example"])

    def test_extra_records_file_errors(self):
        """A malformed extra records file is refused, naming the problem."""
        self.assertRaises(InvalidInput, parse_extra_records, "{")
        e = self.assertRaises(InvalidInput, parse_extra_records, '[{"name": 1}]')
        self.assertIn("[0]", str(e))
        self.assertEqual(parse_extra_records('[{"name": "a.b", "type": "A", "value": "100.64.0.9"}]'),
                         [{"Name": "a.b", "Type": "A", "Value": "100.64.0.9"}])


class PlaneReloadTests(unittest.TestCase):
    """ControlPlane.reload re-reads the policy file and the extra records file and pushes deltas."""

    def setUp(self):
        self.files = {
            "policy.hujson": "{}",
            "records.json": json.dumps([{"name": "a.tail.example", "type": "A", "value": "100.64.0.50"}]),
        }
        cfg = Config(
            server_url="https://hs.example.com",
            dns=DNSConfig(base_domain="tail.example", extra_records_path="records.json"),
            policy=PolicyConfig(mode="file", path="policy.hujson"),
        )
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.plane = ControlPlane(cfg, open_test_database(self), self.clock, read_file=self.read)
        resolve(self.plane.start())
        self.addCleanup(self.plane.stop)
        user = resolve(self.plane.state.db.users.create("alice", email="alice@example.com"))
        self.plane.state.users[user.id] = user
        self.node = resolve(self.plane.state.create_node(
            machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64, hostname="a", user_id=user.id))
        self.plane.notifier.node_added(self.node.id)
        self.stream = Stream()
        self.plane.notifier.open_stream(self.node.id, self.stream.write, self.stream.finish)

    def read(self, path):
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file", path) from None

    def test_extra_records_in_first_map(self):
        """Records from extra_records_path are in the first DNSConfig."""
        records = self.stream.applier.fields["DNSConfig"]["ExtraRecords"]
        self.assertEqual(records, [{"Name": "a.tail.example", "Type": "A", "Value": "100.64.0.50"}])

    def test_reload_pushes_dns_and_policy(self):
        """A reload with new records and a deny-all policy sends DNSConfig and PacketFilter deltas."""
        self.files["records.json"] = "[]"
        self.files["policy.hujson"] = '{"acls": []}'
        resolve(self.plane.reload())
        self.assertNotIn("ExtraRecords", self.stream.applier.fields["DNSConfig"])
        self.assertEqual(self.stream.applier.packet_filter, [])

    def test_reload_unchanged_is_quiet(self):
        """A reload with nothing changed sends nothing."""
        before = len(self.stream.writes)
        resolve(self.plane.reload())
        self.assertEqual(len(self.stream.writes), before)

    def test_bad_records_keep_old(self):
        """A broken records file is logged and the previous records stay."""
        self.files["records.json"] = "{"
        self.assertFalse(self.plane.reload_dns())
        self.assertIn("ExtraRecords", self.stream.applier.fields["DNSConfig"])
