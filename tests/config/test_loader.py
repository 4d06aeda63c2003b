# -*- test-case-name: tests.config.test_loader -*-
"""Tests for headscale_tw.config.loader."""

import os
import textwrap

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from headscale_tw.config._schema import BY_NAME, ENV_NAMES
from headscale_tw.config.loader import (
    ConfigError,
    find_config_file,
    load_config,
    parse_config,
    parse_config_with_warnings,
)
from headscale_tw.config.model import Config, ExtraRecord

__all__ = [
    "DefaultsTests",
    "KeysTests",
    "AliasTests",
    "EnvironmentTests",
    "ValidationTests",
    "FileSearchTests",
    "ExampleConfigTests",
]

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "etc", "config-example.yaml")


def y(text):
    """Dedent inline YAML."""
    return textwrap.dedent(text)


class DefaultsTests(unittest.TestCase):
    """An empty document gives the embedded defaults."""

    def test_none(self):
        """parse_config(None) is Config()."""
        self.assertEqual(parse_config(None), Config())

    def test_empty_yaml(self):
        """Empty YAML text is Config() with no warnings."""
        config, warnings = parse_config_with_warnings("")
        self.assertEqual(config, Config())
        self.assertEqual(warnings, [])

    def test_null_leaf_keeps_default(self):
        """A key with no value keeps its default."""
        self.assertEqual(parse_config("listen_addr:\n").listen_addr, Config().listen_addr)

    def test_top_level_must_be_mapping(self):
        """A YAML list at the top level is rejected."""
        e = self.assertRaises(ConfigError, parse_config, "- a\n- b\n")
        self.assertIn("top level must be a mapping", str(e))

    def test_bad_yaml(self):
        """A YAML syntax error names the line."""
        e = self.assertRaises(ConfigError, parse_config, "a: [\nb: c\n")
        self.assertIn("invalid YAML", str(e))
        self.assertIn("line", str(e))


class KeysTests(unittest.TestCase):
    """Headscale's keys land on the right Config attributes with the right types."""

    def test_full(self):
        """A config using most sections parses to the expected values."""
        c = parse_config(y("""
            server_url: https://hs.example.org:443
            listen_addr: 0.0.0.0:8080
            metrics_listen_addr: ""
            noise:
              private_key_path: /data/noise.key
            prefixes:
              v4: 100.64.0.0/24
              v6: ""
              allocation: random
            database:
              type: postgres
              postgres:
                host: db.internal
                port: 5433
                name: hs
                user: hs
                pass: s3cret
                ssl: true
            derp:
              server:
                enabled: true
                region_id: 900
                stun_listen_addr: 0.0.0.0:3478
                ipv4: 198.51.100.1
              urls: []
              update_frequency: 1h30m
            dns:
              magic_dns: true
              base_domain: tailnet.example.net
              nameservers:
                global: [1.1.1.1, "https://dns.nextdns.io/abc"]
                split:
                  corp.example.com: [10.0.0.53]
              search_domains: [corp.example.com]
              extra_records:
                - {name: grafana.tailnet.example.net, type: A, value: 100.64.0.3}
            policy:
              mode: database
            unix_socket: /run/hs.sock
            unix_socket_permission: "0700"
            tls_cert_path: /tls/cert.pem
            tls_key_path: /tls/key.pem
            log:
              level: DEBUG
              format: json
            node:
              expiry: 180d
              ephemeral:
                inactivity_timeout: 10m
            trusted_proxies: [10.0.0.1/32]
            oidc:
              issuer: https://idp.example.com
              client_id: hs
              client_secret: x
              extra_params:
                domain_hint: example.com
              pkce:
                enabled: true
                method: plain
            """))
        self.assertEqual(c.server_url, "https://hs.example.org:443")
        self.assertEqual(c.metrics_listen_addr, "")
        self.assertEqual(c.noise.private_key_path, "/data/noise.key")
        self.assertEqual((c.prefixes.v4, c.prefixes.v6, c.prefixes.allocation), ("100.64.0.0/24", None, "random"))
        self.assertEqual(c.database.type, "postgres")
        self.assertEqual(c.database.postgres.password, "s3cret")
        self.assertEqual(c.database.postgres.port, 5433)
        self.assertEqual(c.database.postgres.ssl, "require")
        self.assertEqual(c.derp.server.region_id, 900)
        self.assertEqual(c.derp.server.ipv4, "198.51.100.1")
        self.assertEqual(c.derp.update_frequency, 5400.0)
        self.assertEqual(c.dns.nameservers.global_, ("1.1.1.1", "https://dns.nextdns.io/abc"))
        self.assertEqual(c.dns.nameservers.split, (("corp.example.com", ("10.0.0.53",)),))
        self.assertEqual(c.dns.extra_records, (ExtraRecord("grafana.tailnet.example.net", "A", "100.64.0.3"),))
        self.assertEqual(c.policy.mode, "database")
        self.assertEqual(c.unix_socket_permission, 0o700)
        self.assertTrue(c.tls.enabled)
        self.assertEqual((c.log.level, c.log.format), ("debug", "json"))
        self.assertEqual(c.node.expiry, 180 * 86400.0)
        self.assertEqual(c.node.ephemeral_inactivity_timeout, 600.0)
        self.assertEqual(c.trusted_proxies, ("10.0.0.1/32",))
        self.assertEqual(c.oidc.extra_params, (("domain_hint", "example.com"),))
        self.assertEqual((c.oidc.pkce_enabled, c.oidc.pkce_method), (True, "plain"))

    def test_octal_permission_forms(self):
        """unix_socket_permission accepts "0770", bare 0770, 770 and "0o770" alike."""
        for text in ('"0770"', "0770", "770", '"0o770"'):
            self.assertEqual(parse_config(f"unix_socket_permission: {text}\n").unix_socket_permission, 0o770, text)

    def test_sqlite3_alias(self):
        """database.type sqlite3 is normalised to sqlite."""
        self.assertEqual(parse_config({"database": {"type": "sqlite3"}}).database.type, "sqlite")

    def test_list_from_string(self):
        """A list key given one string is split on commas and spaces."""
        c = parse_config({"dns": {"search_domains": "a.example, b.example"}})
        self.assertEqual(c.dns.search_domains, ("a.example", "b.example"))

    def test_grpc_ignored_with_notice(self):
        """grpc_listen_addr is accepted and produces a notice."""
        _, warnings = parse_config_with_warnings({"grpc_listen_addr": "127.0.0.1:50443"})
        self.assertTrue(any("grpc_listen_addr" in w and "ignored" in w for w in warnings))

    def test_unknown_key_warns(self):
        """An unknown key is a warning naming its full path, not an error."""
        _, warnings = parse_config_with_warnings({"dns": {"magic_dsn": True}, "bogus": 1})
        self.assertIn("dns.magic_dsn: unknown key, ignored", warnings)
        self.assertIn("bogus: unknown key, ignored", warnings)

    def test_parse_config_collects_warnings(self):
        """parse_config appends warnings to the given list."""
        found = []
        parse_config({"bogus": 1}, warnings=found)
        self.assertEqual(found, ["bogus: unknown key, ignored"])


class AliasTests(unittest.TestCase):
    """Deprecated keys are mapped to their replacement with a warning."""

    def test_ephemeral_alias(self):
        """ephemeral_node_inactivity_timeout sets node.ephemeral.inactivity_timeout."""
        c, warnings = parse_config_with_warnings({"ephemeral_node_inactivity_timeout": "5m"})
        self.assertEqual(c.node.ephemeral_inactivity_timeout, 300.0)
        self.assertTrue(any("ephemeral_node_inactivity_timeout is deprecated" in w for w in warnings))

    def test_new_key_wins(self):
        """When both the old and new key are set, the new one wins and the old is reported."""
        c, warnings = parse_config_with_warnings(
            {"ephemeral_node_inactivity_timeout": "5m", "node": {"ephemeral": {"inactivity_timeout": "10m"}}}
        )
        self.assertEqual(c.node.ephemeral_inactivity_timeout, 600.0)
        self.assertTrue(any("ignored because node.ephemeral.inactivity_timeout" in w for w in warnings))

    def test_dns_config(self):
        """The old dns_config section maps onto dns.*."""
        c, warnings = parse_config_with_warnings(y("""
            dns_config:
              magic_dns: true
              base_domain: old.example
              nameservers: [9.9.9.9]
              restricted_nameservers:
                corp.example: [10.1.1.1]
              domains: [corp.example]
            """))
        self.assertEqual(c.dns.base_domain, "old.example")
        self.assertEqual(c.dns.nameservers.global_, ("9.9.9.9",))
        self.assertEqual(c.dns.nameservers.split, (("corp.example", ("10.1.1.1",)),))
        self.assertEqual(c.dns.search_domains, ("corp.example",))
        self.assertEqual(len([w for w in warnings if "dns_config" in w]), 5)

    def test_dns_nameservers_list(self):
        """dns.nameservers given as a list means dns.nameservers.global."""
        c, warnings = parse_config_with_warnings({"dns": {"nameservers": ["8.8.8.8"]}})
        self.assertEqual(c.dns.nameservers.global_, ("8.8.8.8",))
        self.assertTrue(any("deprecated" in w for w in warnings))

    def test_db_keys(self):
        """The pre-0.23 db_* keys map onto database.*."""
        c = parse_config({"db_type": "postgres", "db_host": "h", "db_port": 6000, "db_name": "n",
                          "db_user": "u", "db_pass": "p", "db_ssl": "verify-full"})
        pg = c.database.postgres
        self.assertEqual((c.database.type, pg.host, pg.port, pg.name, pg.user, pg.password, pg.ssl),
                         ("postgres", "h", 6000, "n", "u", "p", "verify-full"))
        self.assertEqual(parse_config({"db_path": "/x.db"}).database.sqlite.path, "/x.db")

    def test_acl_policy_path_and_log_level(self):
        """acl_policy_path and log_level map to policy.path and log.level."""
        c = parse_config({"acl_policy_path": "/p.hujson", "log_level": "warn"})
        self.assertEqual((c.policy.path, c.log.level), ("/p.hujson", "warn"))

    def test_ip_prefixes(self):
        """The old ip_prefixes list fills prefixes.v4 and prefixes.v6 by family."""
        c = parse_config({"ip_prefixes": ["fd7a:115c:a1e0::/64", "100.64.0.0/16"]})
        self.assertEqual((c.prefixes.v4, c.prefixes.v6), ("100.64.0.0/16", "fd7a:115c:a1e0::/64"))

    def test_removed_keys_error(self):
        """Keys Headscale removed are errors with advice."""
        e = self.assertRaises(ConfigError, parse_config, {"randomize_client_port": True})
        self.assertIn("randomize_client_port", str(e))
        self.assertIn("randomizeClientPort", str(e))
        e = self.assertRaises(ConfigError, parse_config, {"oidc": {"expiry": "1d"}})
        self.assertIn("oidc.expiry: was removed; use node.expiry", str(e))


class EnvironmentTests(unittest.TestCase):
    """HEADSCALE_* variables override file values, parsed by the key's type."""

    def test_nested_keys(self):
        """Nested keys are joined by underscores, including keys that contain underscores."""
        c = parse_config(
            {"server_url": "http://file:8080"},
            {
                "HEADSCALE_SERVER_URL": "https://env.example.com",
                "HEADSCALE_DATABASE_SQLITE_PATH": "/env/db.sqlite",
                "HEADSCALE_NODE_EPHEMERAL_INACTIVITY_TIMEOUT": "2h",
                "HEADSCALE_DERP_SERVER_ENABLED": "false",
                "HEADSCALE_DERP_SERVER_REGION_ID": "901",
                "HEADSCALE_DNS_NAMESERVERS_GLOBAL": "1.1.1.1 8.8.8.8",
                "HEADSCALE_UNIX_SOCKET_PERMISSION": "0700",
                "HEADSCALE_CLI_ADDRESS": "hs.example.com:443",
                "HEADSCALE_CLI_API_KEY": "hskey-api-x",
            },
        )
        self.assertEqual(c.server_url, "https://env.example.com")
        self.assertEqual(c.database.sqlite.path, "/env/db.sqlite")
        self.assertEqual(c.node.ephemeral_inactivity_timeout, 7200.0)
        self.assertFalse(c.derp.server.enabled)
        self.assertEqual(c.derp.server.region_id, 901)
        self.assertEqual(c.dns.nameservers.global_, ("1.1.1.1", "8.8.8.8"))
        self.assertEqual(c.unix_socket_permission, 0o700)
        self.assertEqual((c.cli.address, c.cli.api_key), ("hs.example.com:443", "hskey-api-x"))

    def test_structured_values(self):
        """Map and list keys take JSON/YAML text from the environment."""
        c = parse_config(None, {
            "HEADSCALE_DNS_NAMESERVERS_SPLIT": '{"corp.example": ["10.0.0.1"]}',
            "HEADSCALE_DNS_SEARCH_DOMAINS": '["a.example", "b.example"]',
        })
        self.assertEqual(c.dns.nameservers.split, (("corp.example", ("10.0.0.1",)),))
        self.assertEqual(c.dns.search_domains, ("a.example", "b.example"))

    def test_bad_env_value_names_variable(self):
        """A bad value from the environment names both key and variable."""
        e = self.assertRaises(ConfigError, parse_config, None, {"HEADSCALE_DERP_SERVER_ENABLED": "maybe"})
        self.assertIn("derp.server.enabled (from HEADSCALE_DERP_SERVER_ENABLED)", str(e))

    def test_unrelated_ignored(self):
        """HEADSCALE_CONFIG and unknown HEADSCALE_ variables are not config keys."""
        self.assertEqual(parse_config(None, {"HEADSCALE_CONFIG": "/x", "HEADSCALE_FOO": "1", "PATH": "/bin"}), Config())

    def test_env_names_unambiguous(self):
        """Every schema key has its own variable name."""
        for name in BY_NAME:
            self.assertEqual(ENV_NAMES[name.replace(".", "_").upper()], name)

    def test_alias_variable(self):
        """The variable of a deprecated key still works and maps to the new key."""
        c = parse_config(None, {"HEADSCALE_EPHEMERAL_NODE_INACTIVITY_TIMEOUT": "10m"})
        self.assertEqual(c.node.ephemeral_inactivity_timeout, 600.0)


class ValidationTests(unittest.TestCase):
    """Invalid values raise ConfigError naming the key and the problem."""

    def assertProblem(self, data, *fragments):
        """parse_config(data) raises and the message contains every fragment."""
        e = self.assertRaises(ConfigError, parse_config, data)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        return e

    def test_bad_prefix(self):
        """An invalid prefix is named."""
        self.assertProblem({"prefixes": {"v4": "100.64.0.0/33"}}, 'prefixes.v4: "100.64.0.0/33" is not a valid prefix')

    def test_wrong_family(self):
        """An IPv6 prefix under v4 is rejected."""
        self.assertProblem({"prefixes": {"v4": "fd7a:115c:a1e0::/48"}}, "prefixes.v4", "not an IPv4 prefix")

    def test_no_prefix(self):
        """Disabling both prefixes is an error."""
        self.assertProblem({"prefixes": {"v4": "", "v6": ""}}, "prefixes: no IPv4 or IPv6 prefix")

    def test_prefix_outside_range_warns(self):
        """A prefix outside 100.64.0.0/10 is accepted with a warning, as Headscale does."""
        c, warnings = parse_config_with_warnings({"prefixes": {"v4": "10.0.0.0/8"}})
        self.assertEqual(c.prefixes.v4, "10.0.0.0/8")
        self.assertTrue(any("outside the Tailscale range" in w for w in warnings))

    def test_prefix_host_bits(self):
        """Host bits are masked off with a warning."""
        c, warnings = parse_config_with_warnings({"prefixes": {"v4": "100.64.0.1/10"}})
        self.assertEqual(c.prefixes.v4, "100.64.0.0/10")
        self.assertTrue(warnings)

    def test_bad_server_url(self):
        """server_url must be an http(s) URL with a host."""
        self.assertProblem({"server_url": "hs.example.com"}, "server_url", "http:// or https://")
        self.assertProblem({"server_url": "https://"}, "server_url", "no host")
        self.assertProblem({"server_url": "https://h:99999"}, "server_url")

    def test_bad_listen_addr(self):
        """listen addresses must be host:port."""
        self.assertProblem({"listen_addr": "8080"}, "listen_addr", "missing")
        self.assertProblem({"listen_addr": "0.0.0.0:http"}, "listen_addr", "not a port number")
        self.assertProblem({"metrics_listen_addr": "::1:9090"}, "metrics_listen_addr", "brackets")

    def test_unknown_database_type(self):
        """An unknown database.type is named."""
        self.assertProblem({"database": {"type": "mysql"}}, 'database.type: "mysql" is not one of')

    def test_negative_duration(self):
        """Negative durations are rejected."""
        self.assertProblem({"node": {"expiry": "-1h"}}, "node.expiry", "negative")

    def test_wrong_types(self):
        """Values of the wrong type name the key and the expected type."""
        self.assertProblem({"listen_addr": [1, 2]}, "listen_addr: expected a string, got a list")
        self.assertProblem({"derp": {"server": {"region_id": "abc"}}}, "derp.server.region_id: expected a whole number")
        self.assertProblem({"dns": {"magic_dns": "perhaps"}}, "dns.magic_dns: expected true or false")
        self.assertProblem({"dns": "yes"}, "dns: expected a mapping")
        self.assertProblem({"unix_socket_permission": "rwx"}, "unix_socket_permission", "octal")

    def test_magic_dns_needs_base_domain(self):
        """magic_dns without base_domain is an error."""
        self.assertProblem({"dns": {"magic_dns": True, "base_domain": ""}}, "dns.base_domain: must be set")

    def test_server_url_in_base_domain(self):
        """server_url's host equal to or inside base_domain is rejected, as in Headscale."""
        self.assertProblem({"server_url": "https://example.com", "dns": {"base_domain": "example.com"}},
                           "dns.base_domain", "server_url host")
        self.assertProblem({"server_url": "https://hs.example.com", "dns": {"base_domain": "example.com"}},
                           "inside base_domain")
        parse_config({"server_url": "https://hs.example.com", "dns": {"base_domain": "ts.example.com"}})

    def test_ephemeral_minimum(self):
        """An inactivity timeout below Headscale's 65s minimum is accepted with a warning; zero is refused."""
        config, warnings = parse_config_with_warnings({"node": {"ephemeral": {"inactivity_timeout": "2s"}}})
        self.assertEqual(config.node.ephemeral_inactivity_timeout, 2.0)
        self.assertTrue(any("below Headscale's minimum" in w for w in warnings), warnings)
        self.assertProblem({"node": {"ephemeral": {"inactivity_timeout": "0"}}}, "node.ephemeral.inactivity_timeout",
                           "must be positive")

    def test_tls_pairs(self):
        """TLS cert and key go together, and exclude Let's Encrypt."""
        self.assertProblem({"tls_cert_path": "/c"}, "tls_key_path: must be set")
        self.assertProblem({"tls_cert_path": "/c", "tls_key_path": "/k", "tls_letsencrypt_hostname": "h"},
                           "not both")
        self.assertProblem({"tls_letsencrypt_challenge_type": "DNS-01"}, "tls_letsencrypt_challenge_type")

    def test_extra_records_exclusive(self):
        """extra_records and extra_records_path cannot both be set."""
        self.assertProblem({"dns": {"extra_records": [], "extra_records_path": "/r.json"}}, "mutually exclusive")

    def test_bad_extra_record(self):
        """An extra record missing a field is named by index."""
        self.assertProblem({"dns": {"extra_records": [{"name": "a", "type": "A"}]}}, "dns.extra_records", "record 0", "value")

    def test_trusted_proxies(self):
        """trusted_proxies must be prefixes and not the whole Internet."""
        self.assertProblem({"trusted_proxies": ["0.0.0.0/0"]}, "trusted_proxies[0]", "not allowed")
        self.assertProblem({"trusted_proxies": ["nope"]}, "trusted_proxies[0]")

    def test_oidc(self):
        """An OIDC issuer needs a client id and exactly one secret source."""
        self.assertProblem({"oidc": {"issuer": "https://idp"}}, "oidc.client_id: is required", "oidc.client_secret")
        self.assertProblem({"oidc": {"issuer": "https://idp", "client_id": "c", "client_secret": "s",
                                     "client_secret_path": "/s"}}, "mutually exclusive")

    def test_log(self):
        """Log level and format are checked."""
        self.assertProblem({"log": {"level": "loud"}}, 'log.level: "loud"')
        self.assertProblem({"log": {"format": "xml"}}, "log.format")

    def test_all_problems_reported(self):
        """Every problem is reported at once, one line each."""
        e = self.assertProblem({"listen_addr": "x", "log": {"level": "loud"}}, "listen_addr", "log.level")
        self.assertEqual(len(e.problems), 2)


class FileSearchTests(unittest.TestCase):
    """load_config finds the file in Headscale's places and reads it."""

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def write(self, name, text):
        """Write a file under the temporary directory and return its path."""
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_explicit_path(self):
        """An explicit path is read and recorded as source_path."""
        path = self.write("c.yaml", "listen_addr: 127.0.0.1:9999\n")
        c = load_config(path, environ={})
        self.assertEqual(c.listen_addr, "127.0.0.1:9999")
        self.assertEqual(c.source_path, os.path.abspath(path))

    def test_missing_explicit_path(self):
        """An explicit path that does not exist is an error."""
        e = self.assertRaises(ConfigError, load_config, os.path.join(self.dir, "nope.yaml"), {})
        self.assertIn("does not exist", str(e))

    def test_env_config(self):
        """HEADSCALE_CONFIG is used when no path is given."""
        path = self.write("e.yaml", "listen_addr: 127.0.0.1:7777\n")
        self.assertEqual(load_config(None, {"HEADSCALE_CONFIG": path}, search_paths=()).listen_addr, "127.0.0.1:7777")

    def test_search_order(self):
        """The first existing search path wins; ~ is the environment's HOME."""
        home_cfg = self.write("home/.headscale/config.yaml", "listen_addr: 127.0.0.1:1111\n")
        first = os.path.join(self.dir, "first.yaml")
        env = {"HOME": os.path.join(self.dir, "home")}
        paths = (first, "~/.headscale/config.yaml")
        self.assertEqual(find_config_file(None, env, paths), home_cfg)
        self.write("first.yaml", "listen_addr: 127.0.0.1:2222\n")
        self.assertEqual(load_config(None, env, search_paths=paths).listen_addr, "127.0.0.1:2222")

    def test_nothing_found(self):
        """With no file anywhere the embedded defaults are used."""
        self.assertEqual(load_config(None, {}, search_paths=(os.path.join(self.dir, "x.yaml"),)), Config())

    def test_error_names_file(self):
        """Problems in a file are prefixed with its path."""
        path = self.write("bad.yaml", "prefixes:\n  v4: nope\n")
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertIn(path, str(e))
        self.assertIn("prefixes.v4", str(e))

    def test_warnings_logged(self):
        """Warnings are logged through twisted.logger."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path = self.write("w.yaml", "bogus_key: 1\n")
        load_config(path, {})
        warned = [e for e in events if e.get("log_level") == LogLevel.warn and "bogus_key" in e.get("note", "")]
        self.assertEqual(len(warned), 1)


class ExampleConfigTests(unittest.TestCase):
    """etc/config-example.yaml parses cleanly and shows the embedded defaults."""

    def test_example_parses(self):
        """The shipped example parses without problems or warnings."""
        with open(EXAMPLE) as f:
            config, warnings = parse_config_with_warnings(f.read())
        self.assertEqual(warnings, [])
        self.assertEqual(config, Config())

    def test_example_mentions_every_key(self):
        """Every supported key appears in the example."""
        with open(EXAMPLE) as f:
            text = f.read()
        for name in BY_NAME:
            leaf = name.rsplit(".", 1)[-1]
            self.assertIn(leaf + ":", text, name)


class TuningTests(unittest.TestCase):
    """Headscale's tuning section: batch_change_delay applies, the rest is ignored with a notice."""

    def test_batch_change_delay(self):
        """tuning.batch_change_delay is a duration; other tuning keys only warn."""
        config, warnings = parse_config_with_warnings(
            {"tuning": {"batch_change_delay": "800ms", "node_mapsession_buffered_chan_size": 30}})
        self.assertEqual(config.tuning.batch_change_delay, 0.8)
        self.assertTrue(any("node_mapsession_buffered_chan_size is accepted but ignored" in w for w in warnings))
        self.assertEqual(parse_config({}).tuning.batch_change_delay, 0.005)
        self.assertEqual(parse_config({}, environ={"HEADSCALE_TUNING_BATCH_CHANGE_DELAY": "0"}).tuning.batch_change_delay,
                         0.0)
