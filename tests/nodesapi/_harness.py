# -*- test-case-name: tests.nodesapi -*-
"""
A real control plane over a real (in-memory SQLite) database, its admin API
reached in-process through ``StubTreq``, and a CLI transport through it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from urllib.parse import urlencode

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from headscale_tw import secrets as keysecrets
from headscale_tw.config.model import Config, DNSConfig, PolicyConfig
from headscale_tw.control.admin import build_admin_services
from headscale_tw.control.plane import ControlPlane
from headscale_tw.control.poll import parse_map_request
from headscale_tw.testing.db import open_test_database
from headscale_tw.testing.netmap import NetmapApplier
from headscale_tw.web.admin_api import AdminAPI, mount

__all__ = ["PlaneHarness", "Stream", "StubTransport", "START", "NOW", "new_key"]

START = 1_800_000_000  # 2027-01-15T08:00:00Z
NOW = datetime.fromtimestamp(START, timezone.utc)


def new_key(kind: str) -> str:
    """A random key in Tailscale's text form (``nodekey:<hex>``)."""
    return f"{kind}:{os.urandom(32).hex()}"


class Stream:
    """A streaming map response feeding a client-side ``NetmapApplier``."""

    def __init__(self):
        self.applier = NetmapApplier()
        self.finished = False
        self.session = None

    def write(self, data):
        self.applier.feed(data)

    def finish(self):
        self.finished = True

    def since(self, count):
        """The non-keep-alive messages received after the first ``count``."""
        return [m for m in self.applier.messages[count:] if not m.get("KeepAlive")]


class PlaneHarness:
    """``ControlPlane`` + ``AdminAPI(plane.admin)`` mounted at ``/api`` + helpers to make nodes."""

    def __init__(self, testcase, policy_mode: str = "database", policy_path: str = "", files: dict | None = None,
                 with_plane: bool = True, db_config=None):
        self.testcase = testcase
        self.files = dict(files or {})
        self.config = Config(server_url="https://hs.example.com", dns=DNSConfig(base_domain="tail.example"),
                             policy=PolicyConfig(mode=policy_mode, path=policy_path))
        self.clock = Clock()
        self.clock.advance(START)
        self.db = open_test_database(testcase, db_config)
        self.plane = ControlPlane(self.config, self.db, self.clock, read_file=self.read_file)
        self.run(self.plane.start())
        testcase.addCleanup(self.stop)
        self.user = self.run(self.db.users.create("alice", display_name="Alice", email="alice@example.com",
                                                  now=NOW))
        services = self.plane.admin if with_plane else build_admin_services(self.db, self.plane.now)
        self.api = AdminAPI(services, trust_all=True)
        root = Resource()
        mount(root, self.api)
        self.treq = StubTreq(root)
        self._key = None

    def stop(self):
        """End every stream and timer, as the service does at shutdown."""
        self.plane.stop()

    def read_file(self, path):
        """The injected policy-file reader."""
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", path) from None

    def run(self, coroutine):
        """Run a coroutine that finishes synchronously; return its result."""
        return self.testcase.successResultOf(Deferred.fromCoroutine(coroutine))

    def add_user(self, name):
        """Create a user in the database (as the users API would)."""
        return self.run(self.db.users.create(name, now=NOW))

    def auth_key(self, user_id=None, **options):
        """A new pre-auth key's full text."""
        text, prefix, secret = keysecrets.generate_key("auth")
        pepper = self.run(keysecrets.get_pepper(self.db.server_state))
        values = dict(reusable=True, ephemeral=False, tags=(), expiration=None)
        values.update(options)
        self.run(self.db.preauthkeys.create(self.user.id if user_id is None else user_id, prefix,
                                            keysecrets.hash_secret(secret, pepper), now=NOW, **values))
        return text

    def register_body(self, hostname, auth_key="", **hostinfo):
        """A RegisterRequest as tailscaled sends it."""
        info = {"Hostname": hostname, "OS": "linux"}
        info.update(hostinfo)
        return {
            "Version": 133,
            "NodeKey": new_key("nodekey"),
            "OldNodeKey": "nodekey:" + "0" * 64,
            "Auth": {"AuthKey": auth_key} if auth_key else None,
            "Expiry": "0001-01-01T00:00:00Z",
            "Followup": "",
            "Hostinfo": info,
        }

    def register(self, hostname="node", key=None, **hostinfo):
        """Register a node with a (reusable) pre-auth key; return the ``Node``."""
        if key is None:
            if self._key is None:
                self._key = self.auth_key()
            key = self._key
        machine_key = new_key("mkey")
        response = self.run(self.plane.registrar.register(machine_key, self.register_body(hostname, key, **hostinfo)))
        self.testcase.assertNotIn("Error", response)
        return self.plane.state.by_machine_key(machine_key)

    def start_interactive(self, hostname="laptop"):
        """Begin an interactive registration; return ``(machine_key, auth_id)``."""
        machine_key = new_key("mkey")
        response = self.run(self.plane.registrar.register(machine_key, self.register_body(hostname)))
        return machine_key, response["AuthURL"].rpartition("/")[2]

    def stream(self, node, **hostinfo):
        """Open a streaming map session for ``node``; return the ``Stream``."""
        info = dict(node.hostinfo)
        info.update(hostinfo)
        body = {"Version": 133, "Compress": "zstd", "KeepAlive": True, "Stream": True, "NodeKey": node.node_key,
                "DiscoKey": node.disco_key or new_key("discokey"), "Hostinfo": info}
        request = parse_map_request(body)
        current = self.plane.poll.authenticate(node.machine_key, request)
        self.run(self.plane.poll.apply(current, request))
        out = Stream()
        out.session = self.plane.notifier.open_stream(current.id, out.write, out.finish)
        return out

    def let_deltas_out(self):
        """Advance the clock past ``tuning.batch_change_delay`` so batched deltas reach the streams."""
        self.clock.advance(self.plane.notifier.batch_delay)

    def request(self, method, path, body=None, query=None, raw=None):
        """Send a request to the API; return ``(status, decoded JSON or None)``."""
        url = "http://headscale.test" + path + ("?" + urlencode(query) if query else "")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {b"Content-Type": [b"application/json"]} if data is not None else {}
        response = self.testcase.successResultOf(self.treq.request(method, url, data=data, headers=headers))
        content = self.testcase.successResultOf(self.treq.content(response))
        self.let_deltas_out()
        try:
            return response.code, json.loads(content) if content else None
        except ValueError:
            return response.code, None


class StubTransport:
    """A CLI ``Transport`` that sends each request to a ``PlaneHarness`` in-process."""

    def __init__(self, harness):
        self.harness = harness
        self.requests = []

    def request(self, method, path, query=None, body=None):
        """Forward to the harness; return ``(status, body bytes)``."""
        self.requests.append((method, path, dict(query or {}), body))
        url = "http://headscale.test" + path + ("?" + urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        tc = self.harness.testcase
        response = tc.successResultOf(self.harness.treq.request(method, url, data=data, headers={}))
        content = tc.successResultOf(self.harness.treq.content(response))
        self.harness.let_deltas_out()
        return response.code, content
