"""Tests for headscale_tw.derp.derpmap."""

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.config.model import Config, DerpConfig, DerpServerConfig
from headscale_tw.derp.derpmap import (
    DERPMapError,
    DERPMapProvider,
    embedded_region,
    load_derp_map_file,
    normalise_derp_map,
    own_derp_url,
)

YAML_MAP = """
regions:
  900:
    regionid: 900
    regioncode: custom
    regionname: My Region
    nodes:
      - name: 900a
        regionid: 900
        hostname: myderp.example.com
        ipv4: 198.51.100.1
        stunport: 0
        stunonly: false
        derpport: 0
  999:
    regionid: 999
    regioncode: shadowed
    regionname: Overridden by embedded
    nodes:
      - hostname: old.example.com
"""

URL_MAP = {
    "Regions": {
        "1": {
            "RegionID": 1,
            "RegionCode": "nyc",
            "RegionName": "New York City",
            "Nodes": [{"Name": "1a", "RegionID": 1, "HostName": "derp1.example.net", "IPv6": "none"}],
        },
        "900": {"RegionID": 900, "RegionCode": "from-url", "Nodes": [{"HostName": "u.example.net"}]},
    }
}


def make_config(**derp_kwargs):
    server = DerpServerConfig(region_id=999, region_code="hs", region_name="Embedded",
                              stun_listen_addr="0.0.0.0:3478", ipv4="203.0.113.5")
    return Config(server_url="https://ctl.example.com", derp=DerpConfig(server=server, **derp_kwargs))


class _MapResource(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.body = json.dumps(URL_MAP).encode()
        self.code = 200
        self.hits = 0

    def render_GET(self, request):
        self.hits += 1
        request.setResponseCode(self.code)
        return self.body


class EmbeddedRegionTests(unittest.TestCase):
    """The region describing our own server."""

    def test_from_config(self):
        """Host and port come from server_url, STUN port from stun_listen_addr, IPv4 from config."""
        self.assertEqual(
            embedded_region(make_config()),
            {
                "RegionID": 999, "RegionCode": "hs", "RegionName": "Embedded",
                "Nodes": [{"Name": "999", "RegionID": 999, "HostName": "ctl.example.com",
                           "IPv4": "203.0.113.5", "STUNPort": 3478, "DERPPort": 443}],
            },
        )

    def test_explicit_port(self):
        """A port in server_url becomes DERPPort."""
        config = Config(server_url="https://ctl.example.com:8443")
        self.assertEqual(embedded_region(config)["Nodes"][0]["DERPPort"], 8443)


    def test_advertise_url(self):
        """derp.server.advertise_url, when set, gives the node's host and port instead of server_url."""
        server = DerpServerConfig(advertise_url="https://hs1.example.com:8443/derp")
        config = Config(server_url="https://ctl.example.com", derp=DerpConfig(server=server))
        node = embedded_region(config)["Nodes"][0]
        self.assertEqual((node["HostName"], node["DERPPort"]), ("hs1.example.com", 8443))
        self.assertEqual(own_derp_url(config), "https://hs1.example.com:8443/derp")
        self.assertEqual(own_derp_url(Config(server_url="https://ctl.example.com/")), "https://ctl.example.com/derp")

    def test_mesh_instances_are_the_nodes(self):
        """With two or more mesh instances the region is one node per instance, in the given order, from URLs alone."""
        region = embedded_region(make_config(), [("0123456789abcdef", "https://hs2.example.com/derp"),
                                                 ("fedcba9876543210", "http://10.0.0.3:8080/derp")])
        self.assertEqual(region["Nodes"], [
            {"Name": "999-01234567", "RegionID": 999, "HostName": "hs2.example.com", "STUNPort": 3478,
             "DERPPort": 443},
            {"Name": "999-fedcba98", "RegionID": 999, "HostName": "10.0.0.3", "STUNPort": 3478, "DERPPort": 8080},
        ])
        alone = embedded_region(make_config(), [("0123456789abcdef", "https://hs2.example.com/derp")])
        self.assertEqual(alone, embedded_region(make_config()))


class FileTests(unittest.TestCase):
    """DERP map files."""

    def test_yaml_lowercase_keys(self):
        """headscale-style lower-case YAML keys become Go field names."""
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write(YAML_MAP)
        m = load_derp_map_file(path)
        node = m["Regions"][900]["Nodes"][0]
        self.assertEqual(node["HostName"], "myderp.example.com")
        self.assertEqual(node["IPv4"], "198.51.100.1")
        self.assertEqual(m["Regions"][900]["RegionCode"], "custom")
        self.assertEqual(m["Regions"][999]["Nodes"][0]["Name"], "999a")

    def test_bad_file_named(self):
        """A malformed file gives an error naming the file and the problem."""
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write("regions:\n  abc: {}\n")
        e = self.assertRaises(DERPMapError, load_derp_map_file, path)
        self.assertIn(path, str(e))
        self.assertIn("not an integer", str(e))

    def test_missing_hostname(self):
        """A node without HostName is refused."""
        self.assertRaises(DERPMapError, normalise_derp_map, {"Regions": {"5": {"Nodes": [{"Name": "x"}]}}}, "t")

    def test_missing_file(self):
        """A missing file is a DERPMapError, not an OSError."""
        self.assertRaises(DERPMapError, load_derp_map_file, self.mktemp())


class ProviderTests(unittest.TestCase):
    """Merging URL, file and embedded sources and refreshing them."""

    def setUp(self):
        self.path = self.mktemp()
        with open(self.path, "w") as fp:
            fp.write(YAML_MAP)
        self.resource = _MapResource()
        self.clock = Clock()
        self.changes = []
        config = make_config(urls=("http://maps.example/derp.json",), paths=(self.path,), update_frequency=3600.0)
        self.provider = DERPMapProvider(config, self.clock, StubTreq(self.resource), on_change=self.changes.append)

    def test_merge_order(self):
        """URL regions come first, files override them, the embedded region overrides both."""
        self.provider.startService()
        self.addCleanup(self.provider.stopService)
        m = self.provider.derp_map
        self.assertEqual(sorted(m["Regions"]), [1, 900, 999])
        self.assertEqual(m["Regions"][900]["RegionCode"], "custom")
        self.assertEqual(m["Regions"][999]["RegionCode"], "hs")
        self.assertEqual(m["Regions"][1]["Nodes"][0]["IPv6"], "none")
        self.assertEqual(len(self.changes), 1)
        encoded = json.loads(json.dumps(m))
        self.assertIn("999", encoded["Regions"])

    def test_refresh_and_failure_keeps_old(self):
        """The URL is refetched every update_frequency; a failed fetch keeps the previous map."""
        self.provider.startService()
        self.addCleanup(self.provider.stopService)
        self.assertEqual(self.resource.hits, 1)
        self.resource.code = 500
        self.clock.advance(3600)
        self.assertEqual(self.resource.hits, 2)
        self.assertEqual(self.provider.refresh_failures, 1)
        self.assertIn(1, self.provider.derp_map["Regions"])
        self.flushLoggedErrors()
        self.resource.code = 200
        self.resource.body = json.dumps({"Regions": {"2": {"RegionID": 2, "Nodes": [{"HostName": "b"}]}}}).encode()
        self.clock.advance(3600)
        self.assertEqual(sorted(self.provider.derp_map["Regions"]), [2, 900, 999])

    def test_stop_cancels_timer(self):
        """stopService leaves no delayed calls."""
        self.provider.startService()
        self.provider.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_instance_nodes_pushed(self):
        """set_instance_nodes changes the embedded region's nodes and reports each new map once."""
        provider = DERPMapProvider(make_config(), self.clock, on_change=self.changes.append)
        provider.set_instance_nodes([("me", "https://ctl.example.com/derp")])
        self.assertEqual(self.changes, [])
        provider.set_instance_nodes([("me", "https://ctl.example.com/derp"), ("b", "https://b.example/derp")])
        provider.set_instance_nodes([("me", "https://ctl.example.com/derp"), ("b", "https://b.example/derp")])
        self.assertEqual([n["HostName"] for n in provider.derp_map["Regions"][999]["Nodes"]],
                         ["ctl.example.com", "b.example"])
        provider.set_instance_nodes([("me", "https://ctl.example.com/derp")])
        self.assertEqual([n["Name"] for n in provider.derp_map["Regions"][999]["Nodes"]], ["999"])
        self.assertEqual(len(self.changes), 2)

    def test_embedded_only(self):
        """With no URLs or files the map holds only the embedded region."""
        provider = DERPMapProvider(make_config(), self.clock)
        self.assertEqual(list(provider.derp_map["Regions"]), [999])
