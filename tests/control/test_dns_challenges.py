"""Tests for headscale_tw.control.dns_challenges, /machine/set-dns and the netmap's HTTPS offer."""

from __future__ import annotations

import json

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.control.dns_challenges import MAX_VALUE
from headscale_tw.control.mapper import HTTPS_CAPABILITY
from headscale_tw.dnsprovider.interface import IDNSProvider
from headscale_tw.testing.dnsprovider import FakeDNSProvider
from headscale_tw.web.control_api import MAX_SET_DNS_BODY, MachineResource
from headscale_tw.web.plane_resources import machine_resource
from tests.control._harness import Harness, key
from tests.control.test_control_api import _render, _Request

VALUE = "x" * 43  # an ACME DNS-01 value: base64url of a SHA-256


class _SetDNSCase(unittest.TestCase):
    def setUp(self):
        self.provider = FakeDNSProvider()
        self.h = Harness(self, dns_provider=self.provider)
        self.alpha, _ = self.h.register("alpha")
        self.bravo, _ = self.h.register("bravo")
        self.root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity,
                                    dns_challenges=self.h.dns_challenges)

    def set_dns(self, node=None, machine_key=None, **fields):
        node = node or self.alpha
        body = {"Version": 133, "NodeKey": node.node_key, "Type": "TXT",
                "Name": f"_acme-challenge.{node.given_name}.tail.example", "Value": VALUE}
        body.update(fields)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.post(raw, machine_key or node.machine_key)

    def post(self, raw: bytes, machine_key: str):
        return _render(self.root, _Request(b"/machine/set-dns", raw, (machine_key, 133)))


class SetDNSTests(_SetDNSCase):
    """set-dns publishes only the caller's own challenge record, with bounded input."""

    def test_fake_provides_interface(self):
        """The in-memory provider provides IDNSProvider as the real one does."""
        self.assertTrue(verifyObject(IDNSProvider, self.provider))

    def test_own_name_published(self):
        """A node's own _acme-challenge TXT is published, then answered with {}."""
        request = self.set_dns()
        self.assertEqual((request.responseCode, request.body()), (200, b"{}"))
        self.assertEqual(self.provider.records, {"_acme-challenge.alpha.tail.example": VALUE})

    def test_trailing_dot_and_case(self):
        """The name may carry a final dot and any letter case, as DNS names do."""
        request = self.set_dns(Name="_ACME-challenge.Alpha.tail.example.")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(list(self.provider.records), ["_acme-challenge.alpha.tail.example"])

    def test_other_names_refused(self):
        """Another node's name, a bare name or another zone get 403 and reach no DNS server."""
        for name in ("_acme-challenge.bravo.tail.example", "alpha.tail.example",
                     "_acme-challenge.alpha.other.example", "_acme-challenge.x.alpha.tail.example"):
            request = self.set_dns(Name=name)
            self.assertEqual(request.responseCode, 403, name)
            self.assertIn(b"only set its own challenge record _acme-challenge.alpha.tail.example", request.body())
        self.assertEqual(self.provider.calls, [])

    def test_other_machine_refused(self):
        """A node key that belongs to another machine gets 401; an unknown one 404."""
        self.assertEqual(self.set_dns(machine_key=self.bravo.machine_key).responseCode, 401)
        self.assertEqual(self.set_dns(NodeKey=key("nodekey")).responseCode, 404)
        self.assertEqual(self.provider.calls, [])

    def test_bad_fields(self):
        """Wrong type, missing or oversized fields get 400 naming the field and the limit."""
        cases = [({"Type": "A"}, b"Type: only TXT"),
                 ({"Value": ""}, b"Value: must be a non-empty string"),
                 ({"Value": "v" * (MAX_VALUE + 1)}, b"Value: 256 characters is more than the limit of 255"),
                 ({"Value": "has space"}, b"Value: must be printable ASCII"),
                 ({"Value": 'q"uote'}, b"Value: must be printable ASCII"),
                 ({"Name": "a" * 254}, b"Name: 254 characters is more than the limit of 253"),
                 ({"Name": 7}, b"Name: must be a non-empty string"),
                 ({"NodeKey": "bad"}, b"NodeKey")]
        for fields, message in cases:
            request = self.set_dns(**fields)
            self.assertEqual(request.responseCode, 400, fields)
            self.assertIn(message, request.body())
        self.assertEqual(self.provider.calls, [])

    def test_body_size_bounded(self):
        """A body over the set-dns limit is refused with 400 before it is parsed."""
        raw = json.dumps({"NodeKey": self.alpha.node_key, "Pad": "p" * MAX_SET_DNS_BODY}).encode()
        request = self.post(raw, self.alpha.machine_key)
        self.assertEqual(request.responseCode, 400)
        self.assertIn(f"larger than {MAX_SET_DNS_BODY} bytes".encode(), request.body())

    def test_one_update_per_node_at_a_time(self):
        """While a node's update runs its next one gets 409; other nodes are served; then it may retry."""
        self.provider.hold = True
        first = self.set_dns()
        self.assertEqual(first.written, [])
        second = self.set_dns(Value="y" * 43)
        self.assertEqual(second.responseCode, 409)
        self.assertIn(b"already running", second.body())
        other = self.set_dns(node=self.bravo)
        self.assertEqual(other.written, [])
        self.provider.held[0].callback(None)
        self.assertEqual((first.responseCode, first.body()), (200, b"{}"))
        self.provider.held[1].callback(None)
        self.assertEqual(other.responseCode, 200)
        self.provider.hold = False
        self.assertEqual(self.set_dns(Value="z" * 43).responseCode, 200)
        self.assertEqual(len(self.provider.calls), 3)

    def test_provider_failure(self):
        """A DNS update the provider could not make answers 502 with its reason; nothing is kept running."""
        self.provider.failure = "the DNS server 192.0.2.53:53 refused the update: REFUSED"
        request = self.set_dns()
        self.assertEqual(request.responseCode, 502)
        self.assertIn(b"REFUSED", request.body())
        self.provider.failure = None
        self.assertEqual(self.set_dns().responseCode, 200)

    def test_transient_failure_retried_with_backoff(self):
        """A transient failure is tried again after 1 s and 2 s on the clock; the third try publishes."""
        self.provider.failure = "the DNS server 192.0.2.53:53 did not answer within 10s"
        self.provider.transient = True
        self.provider.failures_left = 2
        request = self.set_dns()
        self.assertEqual(len(self.provider.calls), 1)
        self.h.clock.advance(0.9)
        self.assertEqual(len(self.provider.calls), 1)
        self.h.clock.advance(0.1)
        self.assertEqual(len(self.provider.calls), 2)
        self.h.clock.advance(1.9)
        self.assertEqual(len(self.provider.calls), 2)
        self.h.clock.advance(0.1)
        self.assertEqual(len(self.provider.calls), 3)
        self.assertEqual((request.responseCode, request.body()), (200, b"{}"))
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_transient_failure_gives_up_after_three_retries(self):
        """A failure that persists is tried four times in about 7 s, then answered 502 with its reason."""
        self.provider.failure = "the DNS server 192.0.2.53:53 did not answer within 10s"
        self.provider.transient = True
        request = self.set_dns()
        for _ in range(3):
            self.h.clock.advance(4.0)
        self.assertEqual(len(self.provider.calls), 4)
        self.assertEqual(request.responseCode, 502)
        self.assertIn(b"did not answer", request.body())

    def test_refusal_not_retried(self):
        """A refusal (a rejected TSIG key) is answered at once, without a retry."""
        self.provider.failure = "the DNS server 192.0.2.53:53 rejected the TSIG key hs.: BADSIG"
        request = self.set_dns()
        self.assertEqual(len(self.provider.calls), 1)
        self.assertEqual(request.responseCode, 502)
        self.assertIn(b"TSIG", request.body())
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_client_gone_while_publishing(self):
        """A client that goes away before the record is published gets nothing written."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.provider.hold = True
        request = self.set_dns()
        request.processingFailed(Failure(ConnectionDone()))
        self.provider.held[0].callback(None)
        self.assertEqual(request.written, [])
        self.assertEqual(self.provider.records, {"_acme-challenge.alpha.tail.example": VALUE})


class UnconfiguredTests(unittest.TestCase):
    """Without a DNS provider nothing offers or publishes certificates."""

    def setUp(self):
        self.h = Harness(self)
        self.alpha, _ = self.h.register("alpha")

    def test_set_dns_refused(self):
        """set-dns answers 403 saying certificates are not available and naming the setting."""
        root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity,
                               dns_challenges=self.h.dns_challenges)
        body = {"Version": 133, "NodeKey": self.alpha.node_key, "Type": "TXT",
                "Name": "_acme-challenge.alpha.tail.example", "Value": VALUE}
        request = _render(root, _Request(b"/machine/set-dns", json.dumps(body).encode(),
                                         (self.alpha.machine_key, 133)))
        self.assertEqual(request.responseCode, 403)
        self.assertIn(b"certificates are not available", request.body())
        self.assertIn(b"dns.acme_provider", request.body())

    def test_netmap_offers_nothing(self):
        """The self node has no https capability and DNSConfig no CertDomains."""
        stream = self.h.stream(self.alpha)
        self.assertNotIn(HTTPS_CAPABILITY, stream.applier.node["CapMap"])
        self.assertNotIn("CertDomains", stream.applier.dns_config)

    def test_no_magic_dns_no_offer(self):
        """A provider without MagicDNS offers nothing either: there is no name to certify."""
        from headscale_tw.config.model import Config, DNSConfig

        config = Config(server_url="https://hs.example.com",
                        dns=DNSConfig(magic_dns=False, base_domain="tail.example"))
        h = Harness(self, config=config, dns_provider=FakeDNSProvider())
        self.assertFalse(h.mapper.https)
        node, _ = h.register("alpha")
        self.assertNotIn("CertDomains", h.stream(node).applier.dns_config)


class HTTPSOfferTests(unittest.TestCase):
    """With a DNS provider each node is offered a certificate for its own MagicDNS name."""

    def setUp(self):
        self.h = Harness(self, dns_provider=FakeDNSProvider())
        self.alpha, _ = self.h.register("alpha")
        self.bravo, _ = self.h.register("bravo")

    def test_full_map(self):
        """The self node has the https capability and DNSConfig.CertDomains is exactly its own name."""
        a, b = self.h.stream(self.alpha), self.h.stream(self.bravo)
        self.assertEqual(a.applier.node["CapMap"][HTTPS_CAPABILITY], [])
        self.assertEqual(a.applier.dns_config["CertDomains"], ["alpha.tail.example"])
        self.assertEqual(b.applier.dns_config["CertDomains"], ["bravo.tail.example"])
        self.assertEqual(a.applier.dns_config["Domains"], ["tail.example"])
        for peer in a.applier.peers.values():
            self.assertNotIn(HTTPS_CAPABILITY, peer.get("CapMap") or {})

    def test_rename_updates_cert_domain(self):
        """After a rename the node's next message carries its new name in CertDomains."""
        a = self.h.stream(self.alpha)
        self.h.run(self.h.admin.rename(self.alpha.id, "apple"))
        self.h.notifier.flush()
        self.assertEqual(a.applier.node["Name"], "apple.tail.example.")
        self.assertEqual(a.applier.dns_config["CertDomains"], ["apple.tail.example"])

    def test_dns_reload_keeps_own_names(self):
        """A changed DNSConfig is sent to each node with its own CertDomains, one message per node."""
        a, b = self.h.stream(self.alpha), self.h.stream(self.bravo)
        before = self.h.notifier.frames_built
        self.h.notifier.send_each(self.h.mapper.dns_message)
        self.assertEqual(self.h.notifier.frames_built - before, 2)
        self.assertEqual(a.applier.dns_config["CertDomains"], ["alpha.tail.example"])
        self.assertEqual(b.applier.dns_config["CertDomains"], ["bravo.tail.example"])


class PlaneDNSReloadTests(unittest.TestCase):
    """The ControlPlane wires the provider: a reloaded DNSConfig keeps each node's own CertDomains."""

    def test_reload_sends_each_node_its_name(self):
        """New extra records reach each streaming node in a DNSConfig naming only that node."""
        from twisted.internet.task import Clock

        from headscale_tw.config.model import Config, DNSConfig
        from headscale_tw.control.plane import ControlPlane
        from headscale_tw.testing.db import open_test_database, resolve
        from tests.control._harness import Stream

        files = {"records.json": "[]"}
        config = Config(server_url="https://hs.example.com",
                        dns=DNSConfig(base_domain="tail.example", extra_records_path="records.json"))
        clock = Clock()
        clock.advance(1_800_000_000)
        plane = ControlPlane(config, open_test_database(self), clock, read_file=files.__getitem__,
                             dns_provider=FakeDNSProvider())
        resolve(plane.start())
        self.addCleanup(plane.stop)
        user = resolve(plane.state.db.users.create("alice"))
        plane.state.users[user.id] = user
        streams = {}
        for i, name in enumerate(("alpha", "bravo")):
            node = resolve(plane.state.create_node(machine_key="mkey:" + str(i) * 64,
                                                   node_key="nodekey:" + str(i + 4) * 64,
                                                   hostname=name, user_id=user.id))
            plane.notifier.node_added(node.id)
            streams[name] = Stream()
            plane.notifier.open_stream(node.id, streams[name].write, streams[name].finish)
        files["records.json"] = json.dumps([{"name": "x.tail.example", "type": "A", "value": "100.64.0.9"}])
        self.assertTrue(plane.reload_dns())
        for name, stream in streams.items():
            dns = stream.applier.dns_config
            self.assertEqual(dns["CertDomains"], [f"{name}.tail.example"])
            self.assertEqual(dns["ExtraRecords"][0]["Name"], "x.tail.example")
        self.assertIs(machine_resource(plane).children_by_name[b"set-dns"].challenges, plane.dns_challenges)
