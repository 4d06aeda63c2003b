# -*- test-case-name: tests.web.test_admin_api -*-
"""Tests for headscale_tw.web.admin_api against the real SQLite stores."""

from datetime import datetime, timedelta, timezone

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from headscale_tw import secrets
from headscale_tw.storage.models import Node
from headscale_tw.testing.db import resolve
from headscale_tw.testing.keys import with_wrong_secret
from tests.cli._harness import START, AdminHarness

__all__ = ["AuthTests", "UserEndpointTests", "PreAuthKeyEndpointTests", "ApiKeyEndpointTests", "ErrorTests"]

NOW = datetime.fromtimestamp(START, timezone.utc)


def iso(dt):
    """RFC 3339 text of a datetime."""
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_api_key(harness, expiration=None):
    """Store an API key directly and return its full text."""
    full, prefix, secret = secrets.generate_key("api")
    pepper = resolve(secrets.get_pepper(harness.db.server_state))
    resolve(harness.db.apikeys.create(prefix, secrets.hash_secret(secret, pepper), expiration, now=NOW))
    return full


class AuthTests(unittest.TestCase):
    """Bearer API keys guard the API unless the instance trusts everything."""

    def setUp(self):
        self.h = AdminHarness(self, trust_all=False)

    def test_missing_header(self):
        """No Authorization header is a 401 with gRPC code 16."""
        status, body, _ = self.h.request("GET", "/api/v1/user")
        self.assertEqual(status, 401)
        self.assertEqual(body["code"], 16)
        self.assertIn("Authorization", body["message"])

    def test_valid_key(self):
        """A stored, unexpired API key is accepted and its last_seen recorded."""
        key = make_api_key(self.h)
        status, body, _ = self.h.request("GET", "/api/v1/user", token=key)
        self.assertEqual((status, body), (200, {"users": []}))
        self.assertIsNotNone(resolve(self.h.db.apikeys.list())[0].last_seen)

    def test_wrong_secret(self):
        """A key with the right prefix but another secret is refused."""
        key = make_api_key(self.h)
        forged = with_wrong_secret(key)
        status, body, _ = self.h.request("GET", "/api/v1/user", token=forged)
        self.assertEqual((status, body["message"]), (401, "invalid API key"))

    def test_garbage_and_preauth_keys(self):
        """Garbage and pre-auth keys are not API keys."""
        for token in ("nonsense", "hskey-auth-abcdefghijkl-" + "A" * 43):
            status, _, _ = self.h.request("GET", "/api/v1/user", token=token)
            self.assertEqual(status, 401)

    def test_expired_key(self):
        """An expired API key is refused with a message saying so."""
        key = make_api_key(self.h, expiration=NOW - timedelta(seconds=1))
        status, body, _ = self.h.request("GET", "/api/v1/user", token=key)
        self.assertEqual((status, body["message"]), (401, "API key expired"))

    def test_key_never_logged(self):
        """The API key's secret never appears in log events."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        key = make_api_key(self.h)
        self.h.request("POST", "/api/v1/user", {"name": "alice"}, token=key)
        self.h.request("GET", "/api/v1/user", token=key[:-2] + "xx")
        secret = key.split("-", 3)[3]  # hskey-api-<prefix>-<secret>; the secret may contain "-"
        self.assertGreaterEqual(len(secret), 16)
        self.assertFalse([e for e in events if secret in repr(e)])


class UserEndpointTests(unittest.TestCase):
    """/api/v1/user endpoints."""

    def setUp(self):
        self.h = AdminHarness(self)

    def test_create_and_list(self):
        """A created user is returned in Headscale's JSON shape and listed."""
        status, body, _ = self.h.request("POST", "/api/v1/user", {"name": "alice", "displayName": "Alice", "email": "a@x"})
        self.assertEqual(status, 200)
        user = body["user"]
        self.assertEqual(user["id"], "1")
        self.assertEqual((user["name"], user["displayName"], user["email"]), ("alice", "Alice", "a@x"))
        self.assertEqual(set(user), {"id", "name", "createdAt", "displayName", "email", "providerId", "provider",
                                     "profilePicUrl", "idpGroups"})
        self.assertEqual(user["idpGroups"], [])
        _, listed, _ = self.h.request("GET", "/api/v1/user")
        self.assertEqual(listed["users"], [user])

    def test_filters(self):
        """?name= and ?id= select one user; unknown ones give an empty list."""
        self.h.request("POST", "/api/v1/user", {"name": "alice"})
        self.h.request("POST", "/api/v1/user", {"name": "bob"})
        self.assertEqual([u["name"] for u in self.h.request("GET", "/api/v1/user", query={"name": "bob"})[1]["users"]], ["bob"])
        self.assertEqual([u["name"] for u in self.h.request("GET", "/api/v1/user", query={"id": "1"})[1]["users"]], ["alice"])
        self.assertEqual(self.h.request("GET", "/api/v1/user", query={"name": "carol"})[1]["users"], [])

    def test_duplicate(self):
        """A taken name is 409 ALREADY_EXISTS and nothing is added."""
        self.h.request("POST", "/api/v1/user", {"name": "alice"})
        status, body, _ = self.h.request("POST", "/api/v1/user", {"name": "alice"})
        self.assertEqual((status, body["code"]), (409, 6))
        self.assertIn("alice", body["message"])
        self.assertEqual(len(resolve(self.h.db.users.list())), 1)

    def test_invalid_name(self):
        """User names follow Headscale's rules."""
        for name in ("", "a", "1bob", "bo b", "a@b@c"):
            status, body, _ = self.h.request("POST", "/api/v1/user", {"name": name})
            self.assertEqual((status, body["code"]), (400, 3), name)
        self.assertEqual(resolve(self.h.db.users.list()), [])

    def test_rename(self):
        """POST /user/{id}/rename/{new} renames and returns the user."""
        self.h.request("POST", "/api/v1/user", {"name": "alice"})
        status, body, _ = self.h.request("POST", "/api/v1/user/1/rename/alicia")
        self.assertEqual((status, body["user"]["name"]), (200, "alicia"))

    def test_rename_unknown(self):
        """Renaming a missing user is 404."""
        status, body, _ = self.h.request("POST", "/api/v1/user/9/rename/x2")
        self.assertEqual((status, body["code"]), (404, 5))

    def test_delete(self):
        """DELETE /user/{id} removes the user and its pre-auth keys."""
        self.h.request("POST", "/api/v1/user", {"name": "alice"})
        self.h.request("POST", "/api/v1/preauthkey", {"user": "1"})
        status, body, _ = self.h.request("DELETE", "/api/v1/user/1")
        self.assertEqual((status, body), (200, {}))
        self.assertEqual(resolve(self.h.db.users.list()), [])
        self.assertEqual(resolve(self.h.db.preauthkeys.list()), [])

    def test_delete_with_nodes(self):
        """A user owning nodes is not deleted (400 FAILED_PRECONDITION)."""
        self.h.request("POST", "/api/v1/user", {"name": "alice"})
        resolve(self.h.db.nodes.create(Node(id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64,
                                            hostname="laptop", given_name="laptop", user_id=1)))
        status, body, _ = self.h.request("DELETE", "/api/v1/user/1")
        self.assertEqual((status, body["code"]), (400, 9))
        self.assertIn("still owns nodes", body["message"])
        self.assertEqual(len(resolve(self.h.db.users.list())), 1)


class PreAuthKeyEndpointTests(unittest.TestCase):
    """/api/v1/preauthkey endpoints."""

    def setUp(self):
        self.h = AdminHarness(self)
        self.h.request("POST", "/api/v1/user", {"name": "alice"})

    def test_create_shows_key_once(self):
        """The full key is in the create response only; the store keeps its hash."""
        exp = iso(NOW + timedelta(hours=1))
        status, body, _ = self.h.request("POST", "/api/v1/preauthkey",
                                         {"user": "1", "reusable": True, "expiration": exp, "aclTags": ["tag:a"]})
        self.assertEqual(status, 200)
        key = body["preAuthKey"]
        kind, prefix, secret = secrets.parse_key(key["key"])
        self.assertEqual((kind, key["reusable"], key["aclTags"], key["user"]["name"]), ("auth", True, ["tag:a"], "alice"))
        self.assertEqual(key["expiration"], exp)
        row = resolve(self.h.db.preauthkeys.get_by_prefix(prefix))
        self.assertNotIn(secret.encode(), row.key_hash)
        pepper = resolve(secrets.get_pepper(self.h.db.server_state))
        self.assertTrue(secrets.verify_secret(secret, row.key_hash, pepper))
        _, listed, _ = self.h.request("GET", "/api/v1/preauthkey")
        self.assertEqual(listed["preAuthKeys"][0]["key"], f"hskey-auth-{prefix}-***")

    def test_unknown_user(self):
        """A key for a missing user is 404 and nothing is stored."""
        status, body, _ = self.h.request("POST", "/api/v1/preauthkey", {"user": "42"})
        self.assertEqual((status, body["code"]), (404, 5))
        self.assertEqual(resolve(self.h.db.preauthkeys.list()), [])

    def test_bad_tags_and_expiry(self):
        """Bad tags, past expirations and ownerless keys are 400s."""
        for body in ({"user": "1", "aclTags": ["nope"]}, {"user": "1", "aclTags": ["tag:UP"]},
                     {"user": "1", "expiration": iso(NOW - timedelta(hours=1))},
                     {"user": "1", "expiration": "tomorrow"}, {}, {"user": "x"}, {"user": "1", "reusable": "yes"}):
            status, reply, _ = self.h.request("POST", "/api/v1/preauthkey", body)
            self.assertEqual((status, reply["code"]), (400, 3), body)
        self.assertEqual(resolve(self.h.db.preauthkeys.list()), [])

    def test_tagged_key_without_user(self):
        """A key with tags needs no user."""
        status, body, _ = self.h.request("POST", "/api/v1/preauthkey", {"aclTags": ["tag:server"]})
        self.assertEqual((status, body["preAuthKey"]["user"]), (200, None))

    def test_expire_and_delete(self):
        """Expire sets the expiration to now; expiring again fails; delete removes the key."""
        self.h.request("POST", "/api/v1/preauthkey", {"user": 1})
        status, body, _ = self.h.request("POST", "/api/v1/preauthkey/expire", {"id": "1"})
        self.assertEqual((status, body), (200, {}))
        self.assertEqual(resolve(self.h.db.preauthkeys.get(1)).expiration, NOW)
        status, body, _ = self.h.request("POST", "/api/v1/preauthkey/expire", {"id": 1})
        self.assertEqual((status, body["code"]), (400, 9))
        self.assertIn("already expired", body["message"])
        status, body, _ = self.h.request("DELETE", "/api/v1/preauthkey", query={"id": "1"})
        self.assertEqual((status, body), (200, {}))
        status, body, _ = self.h.request("DELETE", "/api/v1/preauthkey", query={"id": "1"})
        self.assertEqual(status, 404)


class ApiKeyEndpointTests(unittest.TestCase):
    """/api/v1/apikey endpoints."""

    def setUp(self):
        self.h = AdminHarness(self)

    def test_create_list_use(self):
        """A created API key is shown once, listed masked, and authenticates."""
        status, body, _ = self.h.request("POST", "/api/v1/apikey", {"expiration": iso(NOW + timedelta(days=90))})
        self.assertEqual(status, 200)
        full = body["apiKey"]
        kind, prefix, _ = secrets.parse_key(full)
        self.assertEqual(kind, "api")
        _, listed, _ = self.h.request("GET", "/api/v1/apikey")
        self.assertEqual(listed["apiKeys"][0]["prefix"], f"hskey-api-{prefix}-***")
        self.assertNotIn(full, repr(listed))
        self.h.api.trust_all = False
        self.assertEqual(self.h.request("GET", "/api/v1/apikey", token=full)[0], 200)

    def test_expire_by_prefix_and_delete_by_id(self):
        """Keys are expired by (masked) prefix and deleted by id or prefix."""
        full = self.h.request("POST", "/api/v1/apikey", {})[1]["apiKey"]
        _, prefix, _ = secrets.parse_key(full)
        status, _, _ = self.h.request("POST", "/api/v1/apikey/expire", {"prefix": f"hskey-api-{prefix}-***"})
        self.assertEqual(status, 200)
        self.assertEqual(resolve(self.h.db.apikeys.list())[0].expiration, NOW)
        status, body, _ = self.h.request("POST", "/api/v1/apikey/expire", {"prefix": prefix})
        self.assertEqual(status, 400)
        status, _, _ = self.h.request("DELETE", "/api/v1/apikey", query={"id": "1"})
        self.assertEqual(status, 200)
        self.assertEqual(resolve(self.h.db.apikeys.list()), [])
        full2 = self.h.request("POST", "/api/v1/apikey", {})[1]["apiKey"]
        status, _, _ = self.h.request("DELETE", "/api/v1/apikey/" + secrets.parse_key(full2)[1])
        self.assertEqual((status, resolve(self.h.db.apikeys.list())), (200, []))

    def test_expire_needs_one_identifier(self):
        """Expire with neither or both of id and prefix is 400; an unknown prefix is 404."""
        self.assertEqual(self.h.request("POST", "/api/v1/apikey/expire", {})[0], 400)
        self.assertEqual(self.h.request("POST", "/api/v1/apikey/expire", {"id": "1", "prefix": "x"})[0], 400)
        self.assertEqual(self.h.request("POST", "/api/v1/apikey/expire", {"prefix": "abcdefghijkl"})[0], 404)


class ErrorTests(unittest.TestCase):
    """Malformed requests get JSON errors, never crashes."""

    def setUp(self):
        self.h = AdminHarness(self)

    def test_bad_json(self):
        """A body that is not JSON is 400 and says so."""
        status, body, response = self.h.request("POST", "/api/v1/user", raw=b"{nope")
        self.assertEqual((status, body["code"]), (400, 3))
        self.assertIn("not valid JSON", body["message"])
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_non_object_body(self):
        """A JSON body that is not an object is 400."""
        status, body, _ = self.h.request("POST", "/api/v1/user", raw=b"[1,2]")
        self.assertEqual((status, body["message"]), (400, "request body must be a JSON object"))

    def test_unknown_path(self):
        """Unknown endpoints are JSON 404s."""
        status, body, _ = self.h.request("GET", "/api/v1/nothing")
        self.assertEqual((status, body["code"]), (404, 5))

    def test_health(self):
        """Health reports database connectivity."""
        self.assertEqual(self.h.request("GET", "/api/v1/health")[1], {"databaseConnectivity": True})

    def test_internal_error(self):
        """An unexpected exception is a 500 with a generic message, logged."""
        async def boom(*a, **k):
            raise RuntimeError("secret detail")
        self.patch(self.h.db.users, "list", boom)
        status, body, _ = self.h.request("GET", "/api/v1/user")
        self.assertEqual((status, body["code"]), (500, 13))
        self.assertNotIn("secret detail", body["message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
