# -*- test-case-name: tests.web.test_admin_hostile -*-
"""
Hostile input to ``/api/v1`` over a real control plane: every request is a 4xx, never a 5xx,
and nothing stored changes.
"""

from __future__ import annotations

import json

from twisted.trial import unittest

from headscale_tw.testing.db import create_postgres_database, resolve
from headscale_tw.web.admin.validate import (
    MAX_BODY_BYTES,
    MAX_DISPLAY_NAME,
    MAX_EMAIL,
    MAX_JSON_DEPTH,
    MAX_ROUTE,
    MAX_ROUTES,
    MAX_TAG,
    MAX_TAGS,
    MAX_USER_NAME,
)
from tests.nodesapi._harness import PlaneHarness

__all__ = ["HostileInputTests", "HostileInputPostgresTests", "HOSTILE"]

#: Ids that are not uint64 values, or that no row can have (SQLite and PostgreSQL ids are int64).
BAD_IDS = ["9223372036854775808", "18446744073709551615", "18446744073709551616", "9" * 30, "\u00b2",
           "\u0661\u0662", "-1", "1e3", "0x1", "1.0", "+1", "%201"]
JSON_BAD_IDS = [2**63, 2**64, 2**70, -1, 1.5, True, [], {}, "\u00b2", "9" * 40, {"a": 1}]

_DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
_DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _hostile() -> list[tuple[str, str, dict | None, bytes | None, str]]:
    """``(method, path, query, raw body, what)`` for every hostile request."""
    out: list[tuple[str, str, dict | None, bytes | None, str]] = []
    for i in BAD_IDS:
        q = i.replace("%", "%25")
        out += [
            ("GET", f"/api/v1/node/{q}", None, None, f"node id {i!r}"),
            ("DELETE", f"/api/v1/node/{q}", None, None, f"delete node id {i!r}"),
            ("POST", f"/api/v1/node/{q}/rename/x", None, None, f"rename node id {i!r}"),
            ("POST", f"/api/v1/user/{q}/rename/bobby", None, None, f"rename user id {i!r}"),
            ("DELETE", f"/api/v1/user/{q}", None, None, f"delete user id {i!r}"),
            ("DELETE", "/api/v1/preauthkey", {"id": i}, None, f"delete pre-auth key id {i!r}"),
            ("DELETE", "/api/v1/apikey", {"id": i}, None, f"delete API key id {i!r}"),
            ("GET", "/api/v1/node", {"user": i}, None, f"nodes of user {i!r}"),
        ]
    for i in JSON_BAD_IDS:
        out += [
            ("POST", "/api/v1/preauthkey/expire", None, _json({"id": i}), f"expire pre-auth key {i!r}"),
            ("POST", "/api/v1/preauthkey", None, _json({"user": i}), f"pre-auth key for user {i!r}"),
            ("POST", "/api/v1/apikey/expire", None, _json({"id": i}), f"expire API key {i!r}"),
            ("POST", "/api/v1/node/1/user", None, _json({"user": i}), f"move node to user {i!r}"),
        ]
    for path, method in (("/api/v1/user", "POST"), ("/api/v1/preauthkey", "POST"), ("/api/v1/policy", "PUT"),
                         ("/api/v1/node/1/tags", "POST"), ("/api/v1/auth/register", "POST")):
        out += [
            (method, path, None, _DEEP_ARRAY, f"{path}: arrays nested 100,000 deep"),
            (method, path, None, _DEEP_OBJECT, f"{path}: objects nested 100,000 deep"),
            (method, path, None, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
             f"{path}: one level too deep"),
            (method, path, None, b'{"x":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
             f"{path}: an object one level too deep"),
            (method, path, None, b"x" * (MAX_BODY_BYTES + 1), f"{path}: a body over the limit"),
            (method, path, None, b"\xff\xfe{}", f"{path}: not UTF-8"),
            (method, path, None, b'"just a string"', f"{path}: not an object"),
            (method, path, None, b"1" * 10_000, f"{path}: a 10,000-digit number"),
        ]
    long_name = "a" * 10_000
    out += [
        ("POST", "/api/v1/user", None, _json({"name": long_name}), "10,000-character user name"),
        ("POST", "/api/v1/user", None, _json({"name": "a" * (MAX_USER_NAME + 1)}), "user name one over"),
        ("POST", "/api/v1/user", None, _json({"name": "bob", "displayName": "d" * 1_000_000}),
         "1,000,000-character display name"),
        ("POST", "/api/v1/user", None, _json({"name": "bob", "displayName": "d" * (MAX_DISPLAY_NAME + 1)}),
         "display name one over"),
        ("POST", "/api/v1/user", None, _json({"name": "bob", "email": "e" * (MAX_EMAIL + 1)}), "email one over"),
        ("POST", "/api/v1/user", None, _json({"name": "bob", "displayName": "nul\u0000"}), "NUL in a display name"),
        ("POST", "/api/v1/user", None, b'{"name": "bob", "displayName": "\\ud800"}', "a lone surrogate"),
        ("POST", "/api/v1/user", None, b'{"name": "bob", "email": "\\udfff@x"}', "a lone surrogate in an email"),
        ("POST", "/api/v1/user", None, _json({"name": "bob", "displayName": ["x"]}), "a display name list"),
        ("POST", "/api/v1/user", None, _json({"name": "b\u00f6b\u0000"}), "NUL in a user name"),
        ("POST", f"/api/v1/user/1/rename/{long_name}", None, None, "rename to 10,000 characters"),
        ("GET", "/api/v1/user", {"name": long_name}, None, "list by a 10,000-character name"),
        ("GET", "/api/v1/user", {"email": "e" * 10_000}, None, "list by a 10,000-character email"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "aclTags": ["tag:" + "a" * 10_000]}),
         "10,000-character tag"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "aclTags": ["tag:" + "a" * (MAX_TAG - 3)]}),
         "tag one over"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "aclTags": [f"tag:t{i}" for i in range(MAX_TAGS + 1)]}),
         "one tag too many"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "aclTags": "tag:web"}), "tags as a string"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "aclTags": ["tag:we b"]}), "tag with a space"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "aclTags": ["tag:w\u00e9b"]}), "non-ASCII tag"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "expiration": "9999-99-99T99:99:99Z"}),
         "an impossible time"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "expiration": "x" * 100_000}), "a 100,000-char time"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "expiration": {"seconds": 10**300}}),
         "seconds past any year"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "expiration": {"seconds": "9" * 10_000}}),
         "10,000-digit seconds"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "expiration": {"seconds": [1]}}), "seconds list"),
        ("POST", "/api/v1/preauthkey", None, _json({"user": "1", "expiration": "2030-01-01T00:00:00+99:00"}),
         "an impossible offset"),
        ("POST", "/api/v1/apikey", None, _json({"expiration": 12}), "a number as a time"),
        ("POST", "/api/v1/apikey/expire", None, _json({"prefix": "p" * 10_000}), "10,000-character prefix"),
        ("DELETE", "/api/v1/apikey/" + "p" * 10_000, None, None, "delete by a 10,000-character prefix"),
        ("POST", "/api/v1/node/1/tags", None, _json({"tags": ["tag:" + "a" * 10_000]}), "node tag 10,000 chars"),
        ("POST", "/api/v1/node/1/tags", None, _json({"tags": [f"tag:t{i}" for i in range(10_000)]}),
         "10,000 node tags"),
        ("POST", "/api/v1/node/1/approve_routes", None, _json({"routes": ["10.0.0.0/8" + " " * 10 + "x" * 10_000]}),
         "10,000-character route"),
        ("POST", "/api/v1/node/1/approve_routes", None, _json({"routes": ["10.0.0.0/8"] * (MAX_ROUTES + 1)}),
         "one route too many"),
        ("POST", "/api/v1/node/1/approve_routes", None, _json({"routes": ["a" * MAX_ROUTE + "/8"]}), "route one over"),
        ("POST", "/api/v1/node/1/approve_routes", None, _json({"routes": [None]}), "a null route"),
        ("POST", "/api/v1/node/1/rename/" + "n" * 10_000, None, None, "node name 10,000 characters"),
        ("POST", "/api/v1/node/1/expire", {"expiry": "x" * 10_000}, None, "10,000-character expiry"),
        ("POST", "/api/v1/node/1/expire", {"disableExpiry": "maybe"}, None, "disableExpiry not a boolean"),
        ("POST", "/api/v1/auth/register", None, _json({"user": "alice", "authId": "a" * 1_000_000}),
         "1,000,000-character auth id"),
        ("POST", "/api/v1/auth/register", None, _json({"user": "u" * 10_000, "authId": "abc"}),
         "10,000-character user"),
        ("POST", "/api/v1/auth/register", None, _json({"user": "alice", "authId": ["abc"]}), "auth id list"),
        ("POST", "/api/v1/node/register", {"user": "alice", "key": "k" * 10_000}, None, "10,000-character key"),
        ("PUT", "/api/v1/policy", None, _json({"policy": {"acls": []}}), "policy as an object"),
        ("PUT", "/api/v1/policy", None, b'{"policy": "{\\"acls\\": [], \\"x\\": \\"\\ud800\\"}"}',
         "policy with a lone surrogate"),
        ("PUT", "/api/v1/policy", None, _json({"policy": "[" * 100_000}), "policy text nested 100,000 deep"),
        ("PUT", "/api/v1/policy", None, _json({"policy": '{"acls": [' * 10_000}), "policy objects 10,000 deep"),
        ("POST", "/api/v1/policy/check", None, _json({"policy": "\u0000"}), "policy NUL"),
    ]
    return out


HOSTILE = _hostile()


class HostileInputTests(unittest.TestCase):
    """No hostile request gets a 5xx, and none changes what is stored."""

    def db_config(self):
        """The database to run against (SQLite in memory)."""
        return None

    def setUp(self):
        self.h = PlaneHarness(self, db_config=self.db_config())
        self.node = self.h.register("web")
        self.h.add_user("bob")
        self.h.request("POST", "/api/v1/preauthkey", {"user": "1", "aclTags": []})
        self.h.request("POST", "/api/v1/apikey", {})

    def snapshot(self):
        """Everything stored and cached that an admin request could change."""
        db = self.h.db
        return (resolve(db.users.list()), resolve(db.preauthkeys.list()), resolve(db.apikeys.list()),
                resolve(db.nodes.list()), resolve(db.policies.get_latest()), dict(self.h.plane.state.nodes),
                dict(self.h.plane.state.users), self.h.plane.policy.get_policy())

    def test_table_size(self):
        """The table holds at least the 96 kinds of hostile request the issue names."""
        self.assertGreaterEqual(len(HOSTILE), 96)

    def test_every_hostile_request_is_refused(self):
        """Each hostile request is a 4xx with grpc-gateway's error JSON, and nothing stored changes."""
        before = self.snapshot()
        failures = []
        for method, path, query, raw, what in HOSTILE:
            status, body = self.h.request(method, path, query=query, raw=raw)
            if not 400 <= status < 500 or not isinstance(body, dict) or set(body) != {"code", "message", "details"}:
                failures.append((what, status, str(body)[:200]))
            elif len(body["message"]) > 400:
                failures.append((what, status, "message of %d characters" % len(body["message"])))
        self.assertEqual(failures, [])
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.flushLoggedErrors(), [])


class HostileInputPostgresTests(HostileInputTests):
    """The same table against PostgreSQL, which refuses NUL and out-of-range integers on its own."""

    def db_config(self):
        """A fresh PostgreSQL database (the test fails if the server is unreachable)."""
        return create_postgres_database(self)
