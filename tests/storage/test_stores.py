"""
Tests for headscale_tw.storage.stores: one suite, run on SQLite and on PostgreSQL.
"""

from datetime import datetime, timedelta, timezone

import attrs
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.errors import AlreadyExists, InvalidInput, NotFound, UserHasNodes
from headscale_tw.interfaces import (
    IApiKeyStore,
    IDatabase,
    INodeStore,
    IPolicyStore,
    IPreAuthKeyStore,
    IServerStateStore,
    IUserStore,
)
from headscale_tw.secrets import generate_key, get_pepper, hash_secret, verify_secret
from headscale_tw.storage.models import ApiKey, Node, PreAuthKey, User
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def _node(n, user_id, **kw):
    fields = dict(
        id=0,
        machine_key=f"mkey:{n:064x}",
        node_key=f"nodekey:{n:064x}",
        hostname=f"host{n}",
        given_name=f"host{n}",
        user_id=user_id,
    )
    fields.update(kw)
    return Node(**fields)


class StoreTestsMixin:
    """The store contract; subclasses choose the engine in ``make_config``."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.db = open_test_database(self, self.make_config())

    def run_sql(self, sql, args=()):
        """Read rows straight from the database, bypassing the stores."""
        return resolve(self.db.pool.run_interaction("raw", lambda txn: txn.query(sql, args)))

    # interfaces

    def test_interfaces(self):
        """The database and every store provide their zope interfaces."""
        self.assertTrue(verifyObject(IDatabase, self.db))
        self.assertTrue(verifyObject(IUserStore, self.db.users))
        self.assertTrue(verifyObject(INodeStore, self.db.nodes))
        self.assertTrue(verifyObject(IPreAuthKeyStore, self.db.preauthkeys))
        self.assertTrue(verifyObject(IApiKeyStore, self.db.apikeys))
        self.assertTrue(verifyObject(IPolicyStore, self.db.policies))
        self.assertTrue(verifyObject(IServerStateStore, self.db.server_state))

    # users

    def test_user_create_and_get(self):
        """A created user comes back by id, by name and in the list, with UTC timestamps."""
        user = resolve(self.db.users.create("alice", display_name="Alice", email="a@example.com", now=T0))
        self.assertIsInstance(user, User)
        self.assertEqual((user.name, user.display_name, user.email), ("alice", "Alice", "a@example.com"))
        self.assertEqual(user.created_at, T0)
        self.assertEqual(user.created_at.tzinfo, timezone.utc)
        self.assertEqual(resolve(self.db.users.get(user.id)), user)
        self.assertEqual(resolve(self.db.users.get_by_name("alice")), user)
        self.assertEqual(resolve(self.db.users.list()), [user])

    def test_user_duplicate(self):
        """A second user with the same name is AlreadyExists naming the name."""
        resolve(self.db.users.create("alice"))
        error = self.assertRaises(AlreadyExists, resolve, self.db.users.create("alice"))
        self.assertIn("alice", str(error))
        self.assertIn("name", str(error))

    def test_user_duplicate_provider_identifier(self):
        """Two users with one OIDC identifier are AlreadyExists naming the identifier."""
        resolve(self.db.users.create("a", provider="oidc", provider_identifier="https://idp/sub1"))
        error = self.assertRaises(
            AlreadyExists, resolve, self.db.users.create("b", provider="oidc", provider_identifier="https://idp/sub1")
        )
        self.assertIn("provider identifier", str(error))

    def test_user_unknown(self):
        """Unknown users are NotFound by id and by name."""
        self.assertRaises(NotFound, resolve, self.db.users.get(42))
        self.assertRaises(NotFound, resolve, self.db.users.get_by_name("nobody"))
        self.assertRaises(NotFound, resolve, self.db.users.rename(42, "x"))
        self.assertRaises(NotFound, resolve, self.db.users.delete(42))

    def test_user_sign_in(self):
        """A provider identity creates its user once, then keeps its details current; a taken name gets a suffix."""
        resolve(self.db.users.create("alice"))
        person = resolve(self.db.users.sign_in("https://idp/sub-1", "alice", "a@x", "Alice", "https://p/a", now=T0))
        self.assertEqual((person.provider, person.provider_identifier, person.email), ("oidc", "https://idp/sub-1", "a@x"))
        self.assertRegex(person.name, r"^alice-[0-9a-f]{6}$")
        again = resolve(self.db.users.sign_in("https://idp/sub-1", "other", "b@x", "Alice B", ""))
        self.assertEqual((again.id, again.name, again.email, again.display_name, again.profile_pic_url),
                         (person.id, person.name, "b@x", "Alice B", ""))

    def test_user_idp_groups(self):
        """A sign-in stores its IdP groups in order, the next one replaces them, one without groups keeps them."""
        plain = resolve(self.db.users.create("plain"))
        self.assertEqual(plain.idp_groups, ())
        person = resolve(self.db.users.sign_in("https://idp/sub-1", "alice", idp_groups=("eng", "/a b/ops", "é")))
        self.assertEqual(person.idp_groups, ("eng", "/a b/ops", "é"))
        again = resolve(self.db.users.sign_in("https://idp/sub-1", "alice", idp_groups=["ops"]))
        self.assertEqual((again.id, again.idp_groups), (person.id, ("ops",)))
        self.assertEqual([u.idp_groups for u in resolve(self.db.users.list())], [(), ("ops",)])
        self.assertEqual(self.run_sql("SELECT idp_groups FROM users WHERE id = ?", (person.id,)), [('["ops"]',)])
        kept = resolve(self.db.users.sign_in("https://idp/sub-1", "alice", email="new@x"))  # groups not given
        self.assertEqual((kept.email, kept.idp_groups), ("new@x", ("ops",)))
        emptied = resolve(self.db.users.sign_in("https://idp/sub-1", "alice", idp_groups=()))
        self.assertEqual(emptied.idp_groups, ())
        fresh = resolve(self.db.users.sign_in("https://idp/sub-2", "bob"))
        self.assertEqual(fresh.idp_groups, ())

    def test_user_rename(self):
        """Rename changes the name and updated_at; a taken name is AlreadyExists."""
        alice = resolve(self.db.users.create("alice", now=T0))
        resolve(self.db.users.create("bob", now=T0))
        later = T0 + timedelta(hours=1)
        renamed = resolve(self.db.users.rename(alice.id, "carol", now=later))
        self.assertEqual((renamed.name, renamed.updated_at, renamed.created_at), ("carol", later, T0))
        self.assertRaises(AlreadyExists, resolve, self.db.users.rename(alice.id, "bob"))

    def test_user_list_ordered(self):
        """Users are listed by id."""
        names = ["zed", "amy", "mo"]
        for name in names:
            resolve(self.db.users.create(name))
        self.assertEqual([u.name for u in resolve(self.db.users.list())], names)

    def test_user_delete_with_nodes(self):
        """A user who owns nodes cannot be deleted; without nodes it goes, keys with it."""
        user = resolve(self.db.users.create("alice"))
        node = resolve(self.db.nodes.create(_node(1, user.id)))
        resolve(self.db.preauthkeys.create(user.id, "p" * 12, b"h" * 32, False, False, (), None))
        self.assertRaises(UserHasNodes, resolve, self.db.users.delete(user.id))
        self.assertEqual(resolve(self.db.users.get(user.id)), user)
        resolve(self.db.nodes.delete(node.id))
        resolve(self.db.users.delete(user.id))
        self.assertRaises(NotFound, resolve, self.db.users.get(user.id))
        self.assertEqual(resolve(self.db.preauthkeys.list()), [])

    # nodes

    def test_node_roundtrip(self):
        """Every Node attribute survives a store round trip."""
        user = resolve(self.db.users.create("alice"))
        key = resolve(self.db.preauthkeys.create(user.id, "k" * 12, b"h", True, False, (), None))
        node = _node(
            1,
            user.id,
            disco_key="discokey:" + "ab" * 32,
            ipv4="100.64.0.1",
            ipv6="fd7a:115c:a1e0::1",
            endpoints=("192.0.2.1:41641", "[2001:db8::1]:41641"),
            hostinfo={"OS": "linux", "Services": [{"Proto": "tcp", "Port": 22}]},
            given_name_auto=False,
            register_method="authkey",
            tags=("tag:a", "tag:b"),
            auth_key_id=key.id,
            expiry=T0 + timedelta(days=180),
            last_seen=T0,
            approved_routes=("10.0.0.0/8",),
            ephemeral=True,
            created_at=T0,
            updated_at=T0,
        )
        stored = resolve(self.db.nodes.create(node))
        self.assertNotEqual(stored.id, 0)
        self.assertEqual(attrs.evolve(stored, id=0), node)
        self.assertEqual(stored.hostinfo, node.hostinfo)
        self.assertEqual(resolve(self.db.nodes.get(stored.id)), stored)
        self.assertEqual(resolve(self.db.nodes.get_by_machine_key(node.machine_key)), stored)
        self.assertEqual(resolve(self.db.nodes.get_by_node_key(node.node_key)), stored)

    def test_node_tagged_without_user(self):
        """A tagged node has no user."""
        stored = resolve(self.db.nodes.create(_node(1, None, tags=("tag:server",))))
        self.assertIsNone(stored.user_id)
        self.assertEqual(stored.tags, ("tag:server",))

    def test_node_missing_lookups(self):
        """Unknown keys give None; unknown ids are NotFound."""
        self.assertIsNone(resolve(self.db.nodes.get_by_machine_key("mkey:00")))
        self.assertIsNone(resolve(self.db.nodes.get_by_node_key("nodekey:00")))
        self.assertRaises(NotFound, resolve, self.db.nodes.get(7))
        self.assertRaises(NotFound, resolve, self.db.nodes.update(7, hostname="x"))
        self.assertRaises(NotFound, resolve, self.db.nodes.delete(7))

    def test_node_unknown_user(self):
        """A node for a user who does not exist is NotFound naming the user."""
        error = self.assertRaises(NotFound, resolve, self.db.nodes.create(_node(1, 999)))
        self.assertIn("user 999", str(error))

    def test_node_unique_fields(self):
        """Machine key, node key, given name and addresses are each unique, named in the error."""
        resolve(self.db.nodes.create(_node(1, None, ipv4="100.64.0.1", ipv6="fd7a::1")))
        cases = {
            "machine key": dict(machine_key=f"mkey:{1:064x}"),
            "node key": dict(node_key=f"nodekey:{1:064x}"),
            "given name": dict(given_name="host1"),
            "IPv4": dict(ipv4="100.64.0.1"),
            "IPv6": dict(ipv6="fd7a::1"),
        }
        for label, fields in cases.items():
            error = self.assertRaises(AlreadyExists, resolve, self.db.nodes.create(_node(2, None, **fields)))
            self.assertIn(label, str(error))
        other = resolve(self.db.nodes.create(_node(2, None)))
        error = self.assertRaises(AlreadyExists, resolve, self.db.nodes.update(other.id, given_name="host1"))
        self.assertIn("given name", str(error))

    def test_node_update(self):
        """update sets the named fields, stamps updated_at and leaves the rest alone."""
        user = resolve(self.db.users.create("alice"))
        bob = resolve(self.db.users.create("bob"))
        node = resolve(self.db.nodes.create(_node(1, user.id, created_at=T0, updated_at=T0)))
        later = T0 + timedelta(minutes=5)
        updated = resolve(
            self.db.nodes.update(
                node.id,
                node_key="nodekey:" + "ff" * 32,
                endpoints=("198.51.100.1:1",),
                hostinfo={"Hostname": "x"},
                last_seen=later,
                tags=("tag:x",),
                user_id=bob.id,
                expiry=None,
                updated_at=later,
            )
        )
        self.assertEqual(updated.node_key, "nodekey:" + "ff" * 32)
        self.assertEqual(updated.endpoints, ("198.51.100.1:1",))
        self.assertEqual(updated.hostinfo, {"Hostname": "x"})
        self.assertEqual((updated.last_seen, updated.updated_at, updated.created_at), (later, later, T0))
        self.assertEqual((updated.tags, updated.user_id), (("tag:x",), bob.id))
        self.assertEqual(updated.machine_key, node.machine_key)
        self.assertEqual(resolve(self.db.nodes.get(node.id)), updated)

    def test_node_update_bad_field(self):
        """update refuses id and names that are not Node attributes."""
        node = resolve(self.db.nodes.create(_node(1, None)))
        error = self.assertRaises(InvalidInput, resolve, self.db.nodes.update(node.id, colour="red"))
        self.assertIn("colour", str(error))
        self.assertRaises(InvalidInput, resolve, self.db.nodes.update(node.id, id=5))

    def test_node_list_and_ips(self):
        """Nodes list by id (per user if asked) and their addresses are all reported."""
        alice = resolve(self.db.users.create("alice"))
        bob = resolve(self.db.users.create("bob"))
        n1 = resolve(self.db.nodes.create(_node(1, alice.id, ipv4="100.64.0.1", ipv6="fd7a::1")))
        n2 = resolve(self.db.nodes.create(_node(2, bob.id, ipv4="100.64.0.2")))
        n3 = resolve(self.db.nodes.create(_node(3, alice.id)))
        self.assertEqual(resolve(self.db.nodes.list()), [n1, n2, n3])
        self.assertEqual(resolve(self.db.nodes.list(user_id=alice.id)), [n1, n3])
        self.assertEqual(resolve(self.db.nodes.allocated_ips()), {"100.64.0.1", "fd7a::1", "100.64.0.2"})
        resolve(self.db.nodes.delete(n1.id))
        self.assertEqual(resolve(self.db.nodes.allocated_ips()), {"100.64.0.2"})

    def test_addresses_after(self):
        """``addresses_after`` reads the rows above an id, plus whoever holds the named addresses, and
        reports the highest id it read."""
        alice = resolve(self.db.users.create("alice"))
        old = resolve(self.db.nodes.create(_node(1, alice.id, ipv4="100.64.0.1", ipv6="fd7a::1")))
        resolve(self.db.nodes.create(_node(2, alice.id, ipv4="100.64.0.2")))
        new = resolve(self.db.nodes.create(_node(3, alice.id, ipv4="100.64.0.3", ipv6="fd7a::3")))
        after = new.id - 1
        self.assertEqual(resolve(self.db.nodes.addresses_after(after)), ({"100.64.0.3", "fd7a::3"}, new.id))
        self.assertEqual(resolve(self.db.nodes.addresses_after(after, ["fd7a::1", "100.64.0.9", ""])),
                         ({"100.64.0.1", "fd7a::1", "100.64.0.3", "fd7a::3"}, new.id))
        self.assertEqual(resolve(self.db.nodes.addresses_after(new.id, ["100.64.0.9"])), (set(), new.id))
        self.assertLess(old.id, after)

    # pre-auth keys

    def test_preauthkey_lifecycle(self):
        """A pre-auth key is created, found by prefix, used, expired and deleted."""
        user = resolve(self.db.users.create("alice"))
        expiration = T0 + timedelta(hours=1)
        key = resolve(
            self.db.preauthkeys.create(user.id, "abcdefghijkl", b"\x00hash", True, True, ("tag:a",), expiration, now=T0)
        )
        self.assertIsInstance(key, PreAuthKey)
        self.assertEqual(
            (key.prefix, key.key_hash, key.user_id, key.reusable, key.ephemeral, key.used, key.tags),
            ("abcdefghijkl", b"\x00hash", user.id, True, True, False, ("tag:a",)),
        )
        self.assertEqual((key.expiration, key.created_at), (expiration, T0))
        self.assertEqual(resolve(self.db.preauthkeys.get(key.id)), key)
        self.assertEqual(resolve(self.db.preauthkeys.get_by_prefix("abcdefghijkl")), key)
        self.assertIsNone(resolve(self.db.preauthkeys.get_by_prefix("nope")))
        self.assertTrue(resolve(self.db.preauthkeys.mark_used(key.id)).used)
        self.assertEqual(resolve(self.db.preauthkeys.expire(key.id, T0)).expiration, T0)
        resolve(self.db.preauthkeys.delete(key.id))
        self.assertRaises(NotFound, resolve, self.db.preauthkeys.get(key.id))
        self.assertRaises(NotFound, resolve, self.db.preauthkeys.delete(key.id))
        self.assertRaises(NotFound, resolve, self.db.preauthkeys.mark_used(key.id))
        self.assertRaises(NotFound, resolve, self.db.preauthkeys.expire(key.id, T0))

    def test_preauthkey_list_and_errors(self):
        """Keys list per user; an unknown user is NotFound; a duplicate prefix is AlreadyExists."""
        alice = resolve(self.db.users.create("alice"))
        bob = resolve(self.db.users.create("bob"))
        k1 = resolve(self.db.preauthkeys.create(alice.id, "a" * 12, b"1", False, False, (), None))
        k2 = resolve(self.db.preauthkeys.create(bob.id, "b" * 12, b"2", False, False, (), None))
        k3 = resolve(self.db.preauthkeys.create(None, "c" * 12, b"3", False, False, ("tag:x",), None))
        self.assertEqual(resolve(self.db.preauthkeys.list()), [k1, k2, k3])
        self.assertEqual(resolve(self.db.preauthkeys.list(user_id=bob.id)), [k2])
        self.assertRaises(NotFound, resolve, self.db.preauthkeys.create(99, "d" * 12, b"4", False, False, (), None))
        error = self.assertRaises(
            AlreadyExists, resolve, self.db.preauthkeys.create(alice.id, "a" * 12, b"5", False, False, (), None)
        )
        self.assertIn("prefix", str(error))

    def test_preauthkey_delete_keeps_nodes(self):
        """Deleting a key a node registered with keeps the node and clears its auth_key_id."""
        user = resolve(self.db.users.create("alice"))
        key = resolve(self.db.preauthkeys.create(user.id, "a" * 12, b"1", False, False, (), None))
        node = resolve(self.db.nodes.create(_node(1, user.id, auth_key_id=key.id)))
        resolve(self.db.preauthkeys.delete(key.id))
        self.assertIsNone(resolve(self.db.nodes.get(node.id)).auth_key_id)

    # API keys

    def test_apikey_lifecycle(self):
        """An API key is created, listed, touched, expired and deleted."""
        key = resolve(self.db.apikeys.create("abcdefghijkl", b"hash", T0 + timedelta(days=90), now=T0))
        self.assertIsInstance(key, ApiKey)
        self.assertEqual((key.prefix, key.key_hash, key.created_at, key.last_seen), ("abcdefghijkl", b"hash", T0, None))
        self.assertEqual(resolve(self.db.apikeys.get_by_prefix("abcdefghijkl")), key)
        self.assertIsNone(resolve(self.db.apikeys.get_by_prefix("zzzzzzzzzzzz")))
        self.assertEqual(resolve(self.db.apikeys.list()), [key])
        later = T0 + timedelta(seconds=30)
        resolve(self.db.apikeys.touch(key.id, later))
        self.assertEqual(resolve(self.db.apikeys.get_by_prefix("abcdefghijkl")).last_seen, later)
        self.assertEqual(resolve(self.db.apikeys.expire(key.id, later)).expiration, later)
        self.assertRaises(AlreadyExists, resolve, self.db.apikeys.create("abcdefghijkl", b"x", None))
        resolve(self.db.apikeys.delete(key.id))
        self.assertEqual(resolve(self.db.apikeys.list()), [])
        self.assertRaises(NotFound, resolve, self.db.apikeys.delete(key.id))
        self.assertRaises(NotFound, resolve, self.db.apikeys.expire(key.id, later))

    # policies and server state

    def test_policy_latest(self):
        """The newest stored policy is the latest; none stored gives None."""
        self.assertIsNone(resolve(self.db.policies.get_latest()))
        resolve(self.db.policies.set('{"acls": []}', now=T0))
        second = resolve(self.db.policies.set('{"acls": [1]}', now=T0 + timedelta(1)))
        self.assertEqual(resolve(self.db.policies.get_latest()), second)
        self.assertEqual(second.data, '{"acls": [1]}')

    def test_server_state(self):
        """get_or_create stores the factory's value once; later calls return it unchanged."""
        self.assertIsNone(resolve(self.db.server_state.get("x")))
        first = resolve(self.db.server_state.get_or_create("x", lambda: b"\x00\x01"))
        second = resolve(self.db.server_state.get_or_create("x", lambda: b"other"))
        self.assertEqual((first, second), (b"\x00\x01", b"\x00\x01"))
        self.assertEqual(resolve(self.db.server_state.get("x")), b"\x00\x01")

    def test_server_state_race(self):
        """When a value appears between the check and the insert, the first stored value wins."""

        def sneaky():
            # Another server stores its value while this one is generating.
            resolve(self.db.server_state.get_or_create("p", lambda: b"first"))
            return b"second"

        self.assertEqual(resolve(self.db.server_state.get_or_create("p", sneaky)), b"first")

    # secrets at rest

    def test_secrets_not_stored(self):
        """A key's secret never reaches the database: only prefix and peppered hash do."""
        pepper = resolve(get_pepper(self.db.server_state))
        self.assertEqual(len(pepper), 32)
        self.assertEqual(resolve(get_pepper(self.db.server_state)), pepper)
        user = resolve(self.db.users.create("alice"))
        auth_text, auth_prefix, auth_secret = generate_key("auth")
        api_text, api_prefix, api_secret = generate_key("api")
        resolve(self.db.preauthkeys.create(user.id, auth_prefix, hash_secret(auth_secret, pepper), False, False, (), None))
        resolve(self.db.apikeys.create(api_prefix, hash_secret(api_secret, pepper), None))
        for table, text, secret in (("pre_auth_keys", auth_text, auth_secret), ("api_keys", api_text, api_secret)):
            rows = self.run_sql(f"SELECT * FROM {table}")
            self.assertEqual(len(rows), 1)
            for value in rows[0]:
                if isinstance(value, (bytes, memoryview)):
                    value = bytes(value)
                    self.assertNotIn(secret.encode(), value)
                    self.assertNotIn(text.encode(), value)
                elif isinstance(value, str):
                    self.assertNotIn(secret, value)
                    self.assertNotIn(text, value)
        stored = resolve(self.db.apikeys.get_by_prefix(api_prefix))
        self.assertTrue(verify_secret(api_secret, stored.key_hash, pepper))
        self.assertFalse(verify_secret(auth_secret, stored.key_hash, pepper))


class SqliteStoreTests(StoreTestsMixin, unittest.TestCase):
    """The store suite on SQLite ``:memory:``."""

    def make_config(self):
        return None


class PostgresStoreTests(StoreTestsMixin, unittest.TestCase):
    """The store suite on a fresh PostgreSQL database (fails, never skips, without a server)."""

    def make_config(self):
        return create_postgres_database(self)
