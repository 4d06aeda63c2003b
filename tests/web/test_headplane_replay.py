# -*- test-case-name: tests.web.test_headplane_replay -*-
"""
A replay of Headplane's requests against an in-process server.

The requests, the fields Headplane reads from each answer (with the types its
TypeScript declares) and the status codes it expects were recorded from
Headplane's source into ``tests/web/data/headplane_*.json``, each naming the
Headplane file it came from. The server here is the control plane over an
in-memory SQLite database with the site's public routes (``/version``,
``/health``) and ``/api/v1`` checking API keys, mounted as ``service.py`` does.
"""

import json
import os
import re
from datetime import timedelta

from treq.testing import StubTreq
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.service import HealthResource
from headscale_tw.web.admin_api import AdminAPI, mount
from headscale_tw.web.public_pages import mount_public_pages
from tests.nodesapi._harness import NOW, PlaneHarness

__all__ = ["HeadplaneSessionTests", "HeadplaneFilePolicyTests", "HeadplaneEmptyFilePolicyTests"]

DATA = os.path.join(os.path.dirname(__file__), "data")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
#: Headplane's SEMVER_RE (app/server/headscale/api/server-version.ts).
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$")

POLICY = ('{"tagOwners": {"tag:web": ["alice@"]},'
          ' "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web:*"]}]}')


def load(name):
    """A recorded file from ``tests/web/data``."""
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


def js_iso(dt):
    """A time as JavaScript's ``Date.toISOString`` writes it (milliseconds, ``Z``)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def fill(value, values):
    """``value`` with every ``{name}`` replaced; a string that is one placeholder takes the value as is."""
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    return value


def dig(data, dotted):
    """The value at ``a.b.length`` in ``data`` (``length`` of a list is its size)."""
    for part in dotted.split("."):
        data = len(data) if part == "length" and isinstance(data, list) else data[part]
    return data


class Replayer:
    """Sends recorded requests to ``root`` as Headplane's transport does and checks what it reads."""

    def __init__(self, testcase, root, values, recorded_types, headers):
        self.testcase = testcase
        self.treq = StubTreq(root)
        self.values = values
        self.types = recorded_types
        self.headers = headers

    def check_type(self, value, spec, where):
        """Fail unless ``value`` has the recorded type ``spec`` (``User``, ``string[]``, ``string|null``...)."""
        spec = spec.rstrip("?")
        for option in spec.split("|"):
            if self._matches(value, option, where):
                return
        self.testcase.fail(f"{where}: {value!r} is not {spec}")

    def _matches(self, value, option, where):
        if option == "null":
            return value is None
        if option == "string":
            return isinstance(value, str)
        if option == "boolean":
            return isinstance(value, bool)
        if option.endswith("[]"):
            if not isinstance(value, list):
                return False
            for i, item in enumerate(value):
                self.check_type(item, option[:-2], f"{where}[{i}]")
            return True
        fields = self.types[option]
        if not isinstance(value, dict):
            return False
        for name, spec in fields.items():
            if name not in value:
                self.testcase.assertTrue(spec.endswith("?"), f"{where}.{name} is missing")
                continue
            self.check_type(value[name], spec, f"{where}.{name}")
        return True

    def send(self, recorded):
        """Replay one recorded request; return the decoded answer (``None`` when not JSON)."""
        tc = self.testcase
        what = f"{recorded['name']} ({recorded['source']})"
        headers = dict(self.headers["all"])
        if recorded.get("auth", True):
            key = recorded.get("api_key", self.values["api_key"])
            headers.update(fill(self.headers["authenticated"], {**self.values, "api_key": key}))
        data = None
        if "body" in recorded:
            data = json.dumps(fill(recorded["body"], self.values)).encode("utf-8")
            headers.update(self.headers["with_body"])
        url = "http://hs.example.com" + fill(recorded["path"], self.values)
        response = tc.successResultOf(self.treq.request(
            recorded["method"], url, data=data, headers={k.encode(): [v.encode()] for k, v in headers.items()}))
        raw = tc.successResultOf(self.treq.content(response)).decode("utf-8")
        expected = recorded["status"]
        if expected == "4xx":
            tc.assertTrue(400 <= response.code < 500, f"{what}: HTTP {response.code}: {raw[:300]}")
        elif isinstance(expected, list):
            tc.assertIn(response.code, expected, what)
        else:
            tc.assertEqual(response.code, expected, f"{what}: {raw[:300]}")
        if "body_contains" in recorded:
            tc.assertIn(recorded["body_contains"], raw, what)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        for name, spec in recorded.get("reads", {}).items():
            tc.assertIsInstance(body, dict, what)
            tc.assertIn(name, body, what)
            self.check_type(body[name], spec, f"{recorded['name']}: {name}")
        for dotted, value in recorded.get("expect", {}).items():
            tc.assertEqual(dig(body, dotted), value, what)
        for name, dotted in recorded.get("save", {}).items():
            self.values[name] = dig(body, dotted)
        return body


def headplane_root(harness):
    """The site's routes Headplane calls, mounted as ``service.py`` mounts them."""
    root = Resource()
    root.putChild(b"health", HealthResource(lambda: True))
    mount_public_pages(root, harness.config.server_url,
                       lambda node_key: harness.plane.state.by_node_key(node_key) is not None)
    mount(root, AdminAPI(harness.plane.admin, trust_all=False))
    return root


class _ReplayTestCase(unittest.TestCase):
    """A plane, an API key with an expiry (Headplane's login refuses keys without one) and a replayer."""

    recorded = "headplane_requests.json"
    harness_options: dict = {}

    def setUp(self):
        self.h = PlaneHarness(self, **self.harness_options)
        self.data = load(self.recorded)
        session = load("headplane_requests.json")
        api_key = self.h.run(self.h.plane.admin.apikeys.create(NOW + timedelta(days=90)))
        self.values = {"api_key": api_key, "alice_id": str(self.h.user.id), "policy": POLICY,
                       "expiration": js_iso(NOW + timedelta(days=1))}
        self.replayer = Replayer(self, headplane_root(self.h), self.values, session["types"], session["headers"])

    def replay(self, name):
        """Replay the recorded request called ``name``; return its answer."""
        for recorded in self.data["requests"]:
            if recorded["name"] == name:
                return self.replayer.send(recorded)
        raise KeyError(name)


class HeadplaneSessionTests(_ReplayTestCase):
    """A whole Headplane session in database policy mode."""

    def test_session(self):
        """Every recorded request gets the status Headplane expects and the fields it reads, in its types."""
        self.values["auth_id"] = self.h.start_interactive("laptop")[1]
        self.assertEqual(len(self.values["auth_id"]), 24)  # Headplane's register form: "string == 24"
        for recorded in self.data["requests"]:
            self.replayer.send(recorded)
        self.assertNotIn(int(self.values["node_id"]), self.h.plane.state.nodes)

    def test_version_selects_current_shapes(self):
        """/version parses with Headplane's SEMVER_RE and is at least 0.28, so its 0.28+ shapes are used."""
        version = self.replay("boot: detect the server version")["version"]
        match = _SEMVER.match(version.strip())
        self.assertIsNotNone(match, version)
        self.assertGreaterEqual(tuple(int(g) for g in match.groups()[:3]), (0, 28, 0))

    def test_login_finds_the_key(self):
        """Headplane's login finds the key by its listed prefix without asterisks, and it has a future expiry."""
        keys = self.replay("login: validate the API key")["apiKeys"]
        found = [k for k in keys if self.values["api_key"].startswith(k["prefix"].replace("*", ""))]
        self.assertEqual(len(found), 1)
        self.assertGreater(found[0]["expiration"], js_iso(NOW))

    def test_empty_policy(self):
        """With no policy stored, the policy page gets a 4xx whose body says "acl policy not found"."""
        self.replay("access controls page on a fresh install")


class HeadplaneFilePolicyTests(_ReplayTestCase):
    """Headplane against a server whose policy comes from a file."""

    recorded = "headplane_file_policy.json"
    harness_options = {"policy_mode": "file", "policy_path": "/etc/headscale/acl.hujson",
                       "files": {"/etc/headscale/acl.hujson": POLICY}}

    def test_read_only(self):
        """The policy reads with updatedAt null (read-only), and saving is refused with "update is disabled"."""
        body = self.replay("access controls page: a file policy is read-only")
        self.assertEqual(body["policy"], POLICY)
        self.replay("saving is refused")


class HeadplaneEmptyFilePolicyTests(_ReplayTestCase):
    """File mode with an empty policy file: Headplane's fresh-install case in file mode."""

    harness_options = {"policy_mode": "file", "policy_path": "/etc/headscale/acl.hujson",
                       "files": {"/etc/headscale/acl.hujson": ""}}

    def test_empty(self):
        """An empty policy file reads as "acl policy not found", which Headplane shows as an empty policy."""
        self.replay("access controls page on a fresh install")
