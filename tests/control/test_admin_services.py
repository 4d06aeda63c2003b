# -*- test-case-name: tests.control.test_admin_services -*-
"""Tests for the admin services: :mod:`headscale_tw.control.users`, :mod:`~headscale_tw.control.authkeys`
and :mod:`~headscale_tw.control.admin`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.clock import utc_now
from headscale_tw.control.admin import build_admin_services
from headscale_tw.control.users import MAX_STORED_ID, UserAdmin, quoted
from headscale_tw.errors import Expired, InvalidInput, NotFound, Unauthenticated, UserHasNodes
from headscale_tw.storage.models import Node
from headscale_tw.testing.db import open_test_database
from headscale_tw.testing.keys import with_wrong_secret

__all__ = ["UserAdminTests", "PreAuthKeyAdminTests", "ApiKeyAdminTests", "BuilderTests"]

START = 1_700_000_000.0


class _Services:
    """The database-only admin services over an in-memory database and a Clock."""

    def __init__(self, testcase):
        self.testcase = testcase
        self.clock = Clock()
        self.clock.advance(START)
        self.db = open_test_database(testcase)
        self.services = build_admin_services(self.db, lambda: utc_now(self.clock))

    def run(self, coroutine):
        """The result of a coroutine that finishes synchronously."""
        return self.testcase.successResultOf(Deferred.fromCoroutine(coroutine))

    def fail(self, coroutine, error):
        """The exception of a coroutine that fails synchronously with ``error``."""
        return self.testcase.failureResultOf(Deferred.fromCoroutine(coroutine), error).value


class _CountingUsers:
    """A user store that counts the calls it gets (and has no users)."""

    def __init__(self):
        self.calls = 0

    async def get(self, user_id):
        self.calls += 1
        raise NotFound(f"user {user_id} does not exist")

    async def get_by_name(self, name):
        self.calls += 1
        raise NotFound(f"user {name} does not exist")


class UserAdminTests(unittest.TestCase):
    """Users through UserAdmin."""

    def setUp(self):
        self.s = _Services(self)
        self.users = self.s.services.users

    def test_ids_no_row_can_have_are_not_looked_up(self):
        """An id above the largest stored id (2**63 - 1) is not found without asking the store."""
        store = _CountingUsers()
        users = UserAdmin(store, lambda: utc_now(self.s.clock))
        self.assertIsNone(self.s.run(users.get(MAX_STORED_ID + 1)))
        self.s.fail(users.find(str(2**64 - 1)), NotFound)
        self.s.fail(users.rename(2**63, "bob"), NotFound)
        self.s.fail(users.delete(2**63), NotFound)
        self.assertEqual(store.calls, 0)

    def test_find_by_id_or_name(self):
        """``find`` takes ASCII digits as an id and anything else (also other digits) as a name."""
        alice = self.s.run(self.users.create("alice"))
        self.assertEqual(self.s.run(self.users.find(str(alice.id))), alice)
        self.assertEqual(self.s.run(self.users.find("alice")), alice)
        error = self.s.fail(self.users.find("\u0661"), NotFound)
        self.assertEqual(str(error), 'user "\\u0661" not found')

    def test_delete_with_nodes(self):
        """A user who owns a node is not deleted; the message names the user."""
        alice = self.s.run(self.users.create("alice"))
        self.s.run(self.s.db.nodes.create(Node(id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64,
                                               hostname="laptop", given_name="laptop", user_id=alice.id)))
        error = self.s.fail(self.users.delete(alice.id), UserHasNodes)
        self.assertIn('"alice" still owns nodes', str(error))

    def test_quoted_is_short(self):
        """A caller's value is repeated in a message cut to 64 characters."""
        self.assertEqual(quoted("x" * 1000), '"' + "x" * 64 + '..."')


class PreAuthKeyAdminTests(unittest.TestCase):
    """Pre-auth keys through PreAuthKeyAdmin."""

    def setUp(self):
        self.s = _Services(self)
        self.keys = self.s.services.preauthkeys
        self.alice = self.s.run(self.s.services.users.create("alice"))

    def test_create_list_expire_delete(self):
        """A key is created with its owner, listed, expired once, then deleted."""
        created = self.s.run(self.keys.create(self.alice.id, reusable=True, tags=["tag:a", "tag:a"]))
        self.assertTrue(created.full_text.startswith("hskey-auth-"))
        self.assertEqual((created.user, created.key.tags), (self.alice, ("tag:a",)))
        self.assertEqual([k.user for k in self.s.run(self.keys.list())], [self.alice])
        self.s.run(self.keys.expire(created.key.id))
        self.s.fail(self.keys.expire(created.key.id), Expired)
        self.s.run(self.keys.delete(created.key.id))
        self.s.fail(self.keys.delete(created.key.id), NotFound)

    def test_refusals(self):
        """Past expirations, ownerless keys, unknown users and impossible ids are refused; nothing is stored."""
        past = datetime.fromtimestamp(START, timezone.utc) - timedelta(seconds=1)
        self.s.fail(self.keys.create(self.alice.id, expiration=past), InvalidInput)
        self.s.fail(self.keys.create(None), InvalidInput)
        self.s.fail(self.keys.create(42), NotFound)
        self.s.fail(self.keys.create(2**63), NotFound)
        self.s.fail(self.keys.expire(2**64 - 1), NotFound)
        self.assertEqual(self.s.run(self.keys.list(2**63)), [])
        self.assertEqual(self.s.run(self.s.db.preauthkeys.list()), [])


class ApiKeyAdminTests(unittest.TestCase):
    """API keys through ApiKeyAdmin."""

    def setUp(self):
        self.s = _Services(self)
        self.keys = self.s.services.apikeys

    def test_authenticate(self):
        """The created key authenticates (and is touched); a forged, other-kind or expired key does not."""
        full = self.s.run(self.keys.create())
        self.assertIsNotNone(self.s.run(self.keys.authenticate(full)).last_seen)
        forged = with_wrong_secret(full)
        for token, message in ((forged, "invalid API key"), ("nonsense", "invalid API key"),
                               ("hskey-auth-abcdefghijkl-" + "A" * 43, "invalid API key (this is not an API key)")):
            self.assertEqual(str(self.s.fail(self.keys.authenticate(token), Unauthenticated)), message)
        self.s.run(self.keys.expire(prefix=full))
        self.assertEqual(str(self.s.fail(self.keys.authenticate(full), Unauthenticated)), "API key expired")

    def test_find_needs_one_identifier(self):
        """Exactly one of id and prefix names a key; a huge id is simply not found."""
        self.s.fail(self.keys.find(), InvalidInput)
        self.s.fail(self.keys.find(1, "abc"), InvalidInput)
        self.s.fail(self.keys.find(2**64 - 1), NotFound)


class BuilderTests(unittest.TestCase):
    """build_admin_services builds one set of services."""

    def test_without_plane(self):
        """Without a control plane there are users and keys, no nodes or policy; both key services share a pepper."""
        services = _Services(self).services
        self.assertIsNone(services.nodes)
        self.assertIsNone(services.policy)
        self.assertIs(services.preauthkeys.pepper, services.apikeys.pepper)
        self.assertIs(services.preauthkeys.users, services.users)
