# -*- test-case-name: tests.cli.test_main -*-
"""Tests for headscale_tw.cli.main: parsing, output, and CLI → admin API → SQLite."""

import io
import json
import os
from datetime import datetime, timezone

import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from headscale_tw import secrets
from headscale_tw.cli import main as cli_main
from headscale_tw.cli._client import HTTPTransport, UnixSocketTransport, transport_from_config
from headscale_tw.cli.main import main
from headscale_tw.config.loader import parse_config
from headscale_tw.storage.models import Node
from headscale_tw.testing.db import resolve
from tests.cli._harness import START, AdminHarness, StubTransport

__all__ = ["FakeTransport", "ParsingTests", "LocalCommandTests", "EndToEndTests", "TransportChoiceTests", "ServeTests"]

NOW = datetime.fromtimestamp(START, timezone.utc)


class FakeTransport:
    """Records requests and answers from a list of canned ``(status, json)`` replies."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.requests = []

    def request(self, method, path, query=None, body=None):
        """Record and answer the next canned reply."""
        self.requests.append((method, path, dict(query or {}), body))
        status, data = self.replies.pop(0) if self.replies else (200, {})
        return status, json.dumps(data).encode()


def run(argv, transport=None, stdin="", environ=None):
    """Run the CLI; return ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, environ=environ if environ is not None else {}, stdin=io.StringIO(stdin), stdout=out,
                stderr=err, transport=transport, now=lambda: NOW)
    return code, out.getvalue(), err.getvalue()


USER = {"id": "1", "name": "alice", "createdAt": "2023-11-14T22:13:20Z", "displayName": "", "email": "",
        "providerId": "", "provider": "", "profilePicUrl": ""}


class ParsingTests(unittest.TestCase):
    """Arguments become the right API requests (against a fake transport)."""

    def test_users_create(self):
        """users create NAME posts the user and prints "User created"."""
        t = FakeTransport((200, {"user": USER}))
        code, out, _ = run(["users", "create", "alice", "-e", "a@x"], t)
        self.assertEqual((code, out), (0, "User created\n"))
        self.assertEqual(t.requests, [("POST", "/api/v1/user", {}, {"name": "alice", "email": "a@x"})])

    def test_global_flags_anywhere(self):
        """-o may come before or after the command."""
        for argv in (["-o", "json", "users", "list"], ["users", "list", "-o", "json"], ["users", "-o", "json", "list"]):
            code, out, _ = run(argv, FakeTransport((200, {"users": [USER]})))
            self.assertEqual(json.loads(out)[0]["name"], "alice", argv)

    def test_list_json_empty_is_null(self):
        """An empty list prints null, as Headscale's Go CLI does."""
        code, out, _ = run(["users", "list", "-o", "json"], FakeTransport((200, {"users": []})))
        self.assertEqual(out, "null\n")

    def test_users_list_table(self):
        """The default output is a table with Headscale's columns."""
        code, out, _ = run(["users", "list"], FakeTransport((200, {"users": [USER]})))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(" | ")[0:3], ["ID", "Name", "Username"])
        self.assertIn("alice", lines[1])
        self.assertIn("2023-11-14 22:13:20", lines[1])

    def test_users_list_yaml(self):
        """-o yaml prints Go yaml.v3-style keys."""
        code, out, _ = run(["users", "list", "-o", "yaml"], FakeTransport((200, {"users": [USER]})))
        self.assertEqual(yaml.safe_load(out)[0]["createdat"], {"seconds": 1700000000, "nanos": 0})

    def test_preauthkeys_create_arguments(self):
        """--user NAME is resolved to an id; flags, tags and expiration go into the body."""
        t = FakeTransport((200, {"users": [USER]}), (200, {"preAuthKey": {"id": "1", "key": "hskey-auth-k"}}))
        code, out, _ = run(["preauthkeys", "create", "--user", "alice", "--reusable", "--ephemeral",
                            "--expiration", "2h", "--tags", "tag:a,tag:b", "--tags", "tag:c"], t)
        self.assertEqual((code, out), (0, "hskey-auth-k\n"))
        self.assertEqual(t.requests[0], ("GET", "/api/v1/user", {"name": "alice"}, None))
        self.assertEqual(t.requests[1][3], {"reusable": True, "ephemeral": True, "aclTags": ["tag:a", "tag:b", "tag:c"],
                                            "user": "1", "expiration": "2023-11-15T00:13:20Z"})

    def test_preauthkeys_create_user_id(self):
        """A numeric --user is looked up by id."""
        t = FakeTransport((200, {"users": [USER]}), (200, {"preAuthKey": {"key": "k"}}))
        run(["preauthkeys", "create", "-u", "1"], t)
        self.assertEqual(t.requests[0][2], {"id": "1"})

    def test_bad_expiration(self):
        """A malformed --expiration is a one-line error before any request."""
        t = FakeTransport()
        code, _, err = run(["apikeys", "create", "--expiration", "soon"], t)
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("Error: --expiration:"))
        self.assertEqual(t.requests, [])

    def test_apikeys_expire_needs_identifier(self):
        """apikeys expire needs exactly one of --id and --prefix."""
        self.assertIn("either --id or --prefix", run(["apikeys", "expire"], FakeTransport())[2])
        self.assertIn("only one of", run(["apikeys", "expire", "-i", "1", "-p", "x"], FakeTransport())[2])

    def test_server_error_message(self):
        """The server's message becomes the one-line error."""
        code, out, err = run(["users", "create", "alice"],
                             FakeTransport((409, {"code": 6, "message": "a user named 'alice' already exists"})))
        self.assertEqual((code, out, err), (1, "", "Error: a user named 'alice' already exists\n"))

    def test_non_json_error(self):
        """A non-JSON error body still gives a readable error."""
        class Raw:
            def request(self, *a, **k):
                return 502, b"Bad Gateway"
        code, _, err = run(["users", "list"], Raw())
        self.assertEqual(err, "Error: server answered HTTP 502: Bad Gateway\n")

    def test_usage_errors(self):
        """Unknown commands and missing arguments exit 1 with one line."""
        code, _, err = run(["users", "frobnicate"], FakeTransport())
        self.assertEqual(code, 1)
        self.assertEqual(len(err.splitlines()), 1)
        code, _, err = run(["users", "rename", "alice"], FakeTransport())
        self.assertIn("--new-name", err)

    def test_group_without_command_shows_help(self):
        """A command group alone prints its help and exits 2."""
        code, out, _ = run(["preauthkeys"])
        self.assertEqual(code, 2)
        self.assertIn("create", out)

    def test_destroy_prompts(self):
        """destroy asks for confirmation; "n" leaves the user alone."""
        t = FakeTransport((200, {"users": [USER]}))
        code, out, err = run(["users", "destroy", "--name", "alice"], t, stdin="n\n")
        self.assertEqual((code, out), (0, "User not destroyed\n"))
        self.assertIn('remove the user "alice" (1)', err)
        self.assertEqual([r[0] for r in t.requests], ["GET"])

    def test_destroy_force(self):
        """--force skips the prompt."""
        t = FakeTransport((200, {"users": [USER]}), (200, {}))
        code, out, _ = run(["users", "destroy", "alice", "--force"], t)
        self.assertEqual((code, out), (0, "User destroyed\n"))
        self.assertEqual(t.requests[1][:2], ("DELETE", "/api/v1/user/1"))


class LocalCommandTests(unittest.TestCase):
    """Commands that need no server."""

    def test_generate_private_key(self):
        """generate private-key prints privkey: and 64 hex digits, fresh each time."""
        first = run(["generate", "private-key"])[1].strip()
        second = run(["gen", "private-key"])[1].strip()
        self.assertRegex(first, r"^privkey:[0-9a-f]{64}$")
        self.assertNotEqual(first, second)
        self.assertRegex(json.loads(run(["generate", "private-key", "-o", "json"])[1])["private_key"], "^privkey:")

    def test_version(self):
        """version prints our package version and the Headscale release whose API we match; -o json is /version's document."""
        from headscale_tw import __version__
        from headscale_tw.version import HEADSCALE_VERSION, version_info

        human = run(["version"])[1]
        self.assertIn(__version__, human)
        self.assertIn(HEADSCALE_VERSION, human)
        document = json.loads(run(["version", "-o", "json"])[1])
        self.assertEqual(document["version"], HEADSCALE_VERSION)
        self.assertEqual(document["headscale_tw"], __version__)
        self.assertEqual({k: v for k, v in document.items() if k != "headscale_tw"}, version_info())

    def test_configtest(self):
        """configtest prints OK for a valid file and the problem with exit 1 otherwise."""
        import socket

        ports = []
        for _ in range(3):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        folder = os.path.abspath(self.mktemp())
        good = self.mktemp()
        with open(good, "w") as f:
            f.write(f"listen_addr: 127.0.0.1:{ports[0]}\nmetrics_listen_addr: 127.0.0.1:{ports[1]}\n"
                    f"derp:\n  server:\n    stun_listen_addr: 127.0.0.1:{ports[2]}\n"
                    f"unix_socket: {folder}/hs.sock\nnoise:\n  private_key_path: {folder}/noise.key\n"
                    f"database:\n  sqlite:\n    path: {folder}/db.sqlite\n")
        code, out, err = run(["configtest", "-c", good])
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith("OK"))
        self.assertFalse(os.path.exists(folder))  # configtest creates nothing
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("prefixes:\n  v4: 100.64.0.0/33\n")
        code, out, err = run(["configtest", "-c", bad])
        self.assertEqual((code, out), (1, ""))
        self.assertIn('prefixes.v4: "100.64.0.0/33" is not a valid prefix', err)
        self.assertEqual(len(err.splitlines()), 1)

    def test_configtest_missing_file(self):
        """An explicit config file that does not exist fails."""
        code, _, err = run(["configtest", "-c", os.path.join(self.mktemp(), "none.yaml")])
        self.assertEqual(code, 1)
        self.assertIn("does not exist", err)


class EndToEndTests(unittest.TestCase):
    """CLI → admin API (Klein, in-process) → SQLite."""

    def setUp(self):
        self.h = AdminHarness(self)
        self.t = StubTransport(self.h)

    def cli(self, *argv, stdin=""):
        """Run the CLI against the harness."""
        return run(list(argv), self.t, stdin=stdin)

    def test_user_then_reusable_key(self):
        """The key is printed once, and the database holds only its hash."""
        self.assertEqual(self.cli("users", "create", "alice")[0], 0)
        code, out, _ = self.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
        self.assertEqual(code, 0)
        printed = json.loads(out)
        self.assertEqual((printed["reusable"], printed["user"]["name"], printed["id"]), (True, "alice", 1))
        self.assertEqual(printed["expiration"]["seconds"], int(START) + 3600)
        kind, prefix, secret = secrets.parse_key(printed["key"])
        (row,) = resolve(self.h.db.preauthkeys.list())
        self.assertEqual(row.prefix, prefix)
        self.assertNotIn(secret.encode(), row.key_hash)
        self.assertEqual(len(row.key_hash), 32)
        code, out, _ = self.cli("preauthkeys", "list", "-o", "json")
        self.assertNotIn(secret, out)
        self.assertEqual(json.loads(out)[0]["key"], f"hskey-auth-{prefix}-***")

    def test_unknown_user(self):
        """A key for an unknown user fails clearly and stores nothing."""
        code, out, err = self.cli("preauthkeys", "create", "--user", "bob")
        self.assertEqual((code, out, err), (1, "", 'Error: user "bob" not found\n'))
        self.assertEqual(resolve(self.h.db.preauthkeys.list()), [])

    def test_duplicate_user(self):
        """Creating a user twice fails and leaves one user."""
        self.cli("users", "create", "alice")
        code, _, err = self.cli("users", "create", "alice")
        self.assertEqual(code, 1)
        self.assertIn("alice", err)
        self.assertIn("already exists", err)
        self.assertEqual(len(resolve(self.h.db.users.list())), 1)

    def test_expired_key(self):
        """Expiring a key twice fails the second time and changes nothing."""
        self.cli("users", "create", "alice")
        self.cli("preauthkeys", "create", "-u", "alice")
        self.assertEqual(self.cli("preauthkeys", "expire", "--id", "1"), (0, "Key expired\n", ""))
        before = resolve(self.h.db.preauthkeys.get(1))
        self.h.clock.advance(10)
        code, _, err = self.cli("preauthkeys", "expire", "1")
        self.assertEqual((code, err), (1, "Error: pre-auth key 1 is already expired\n"))
        self.assertEqual(resolve(self.h.db.preauthkeys.get(1)), before)

    def test_expired_api_key_is_refused(self):
        """A remote CLI with an expired API key gets a clear error."""
        code, key, _ = self.cli("apikeys", "create", "-e", "1h")
        key = key.strip()
        self.cli("apikeys", "expire", "--prefix", secrets.parse_key(key)[1])
        self.h.api.trust_all = False
        code, _, err = run(["users", "list"], StubTransport(self.h, token=key))
        self.assertEqual((code, err), (1, "Error: API key expired\n"))

    def test_rename_and_destroy(self):
        """Users can be renamed and destroyed with --force; a user with nodes is refused."""
        self.cli("users", "create", "alice")
        self.assertEqual(self.cli("users", "rename", "-n", "alice", "-r", "alicia")[1], "User renamed\n")
        resolve(self.h.db.nodes.create(Node(id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64,
                                            hostname="laptop", given_name="laptop", user_id=1)))
        code, _, err = self.cli("users", "destroy", "-n", "alicia", "--force")
        self.assertEqual(code, 1)
        self.assertIn("still owns nodes", err)
        resolve(self.h.db.nodes.delete(1))
        self.assertEqual(self.cli("users", "destroy", "-i", "1", "--force")[:2], (0, "User destroyed\n"))
        self.assertEqual(resolve(self.h.db.users.list()), [])

    def test_apikeys_roundtrip(self):
        """API keys are created, listed and deleted through the CLI."""
        key = self.cli("apikeys", "create")[1].strip()
        self.assertEqual(secrets.parse_key(key)[0], "api")
        listed = json.loads(self.cli("apikeys", "list", "-o", "json")[1])
        self.assertEqual(listed[0]["prefix"], f"hskey-api-{secrets.parse_key(key)[1]}-***")
        self.assertEqual(self.cli("apikeys", "delete", "--id", "1")[1], "Key deleted\n")
        self.assertEqual(resolve(self.h.db.apikeys.list()), [])

    def test_health(self):
        """health prints the database connectivity."""
        code, out, _ = self.cli("health", "-o", "json")
        self.assertEqual((code, json.loads(out)), (0, {"database_connectivity": True}))


class TransportChoiceTests(unittest.TestCase):
    """The config decides between the unix socket and a remote address."""

    def test_unix_socket_default(self):
        """Without cli.address the unix socket is used."""
        t = transport_from_config(parse_config({"unix_socket": "/run/hs.sock"}))
        self.assertIsInstance(t, UnixSocketTransport)
        self.assertEqual(t.path, "/run/hs.sock")

    def test_remote(self):
        """HEADSCALE_CLI_ADDRESS and _API_KEY select HTTPS with a bearer key."""
        t = transport_from_config(parse_config(None, {"HEADSCALE_CLI_ADDRESS": "hs.example.com:443",
                                                      "HEADSCALE_CLI_API_KEY": "k", "HEADSCALE_CLI_INSECURE": "1"}))
        self.assertIsInstance(t, HTTPTransport)
        self.assertEqual((t.url.scheme, t.url.hostname, t.url.port, t.insecure), ("https", "hs.example.com", 443, True))

    def test_remote_needs_key(self):
        """A remote address without an API key is an error naming the variable."""
        code, _, err = run(["users", "list"], environ={"HEADSCALE_CLI_ADDRESS": "hs:443"})
        self.assertEqual(code, 1)
        self.assertIn("HEADSCALE_CLI_API_KEY", err)

    def test_missing_socket(self):
        """A missing socket gives a one-line hint."""
        path = os.path.join(self.mktemp(), "none.sock")
        code, _, err = run(["users", "list"], environ={"HEADSCALE_UNIX_SOCKET": path, "HOME": self.mktemp()})
        self.assertEqual(code, 1)
        self.assertIn("does not exist", err)
        self.assertEqual(len(err.splitlines()), 1)


class ServeTests(unittest.TestCase):
    """serve builds the service tree and runs the reactor."""

    def test_serve(self):
        """The service built from the config is started when the reactor runs."""
        reactor = MemoryReactorClock()
        built = []
        from twisted.application import strports
        from twisted.web import resource, server

        import headscale_tw.service as service_module

        async def components(config, r):
            # No database here: only the listener, so the test needs no threads.
            site = server.Site(resource.Resource())
            return service_module.Components(
                [strports.service(service_module.listen_endpoint(config.listen_addr), site, reactor=r)])

        def build(config, r):
            top = service_module.HeadscaleService(config, r, components=components)
            built.append((config, top))
            return top

        self.patch(service_module, "build_service", build)
        cfg = self.mktemp()
        with open(cfg, "w") as f:
            f.write("listen_addr: 127.0.0.1:18080\n")
        out, err = io.StringIO(), io.StringIO()
        code = cli_main.main(["serve", "-c", cfg], environ={}, stdout=out, stderr=err, reactor=reactor)
        self.assertEqual(code, 0)
        (config, top), = built
        self.assertEqual(config.listen_addr, "127.0.0.1:18080")
        self.assertTrue(top.running)
        self.assertEqual(reactor.tcpServers[0][0], 18080)
        top.stopService()

    def test_serve_failure_exits_1(self):
        """serve exits 1 when the server could not start."""
        reactor = MemoryReactorClock()
        import headscale_tw.service as service_module
        from headscale_tw.preflight import StartupError

        async def components(config, r):
            raise StartupError("tls_cert_path ./none.pem: No such file or directory")

        self.patch(service_module, "build_service",
                   lambda config, r: service_module.HeadscaleService(config, r, components=components))
        cfg = self.mktemp()
        with open(cfg, "w") as f:
            f.write("listen_addr: 127.0.0.1:18080\n")
        code = cli_main.main(["serve", "-c", cfg], environ={}, stdout=io.StringIO(), stderr=io.StringIO(),
                             reactor=reactor)
        self.assertEqual(code, 1)
        self.flushLoggedErrors(StartupError)
