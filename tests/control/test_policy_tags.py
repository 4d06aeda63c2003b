"""Tests for tag ownership: --advertise-tags at registration and map update, admin tagging."""

import json

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from headscale_tw.errors import InvalidInput
from tests.control._harness import Harness

POLICY = json.dumps({
    "groups": {"group:ops": ["alice@"]},
    "tagOwners": {"tag:web": ["group:ops"], "tag:db": ["bob@"], "tag:child": ["tag:web"]},
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
})


def hostinfo(name, tags):
    return {"Hostname": name, "OS": "linux", "RequestTags": list(tags)}


class RegistrationTagTests(unittest.TestCase):
    """RequestTags at registration are checked against tagOwners."""

    def setUp(self):
        self.h = Harness(self, policy=POLICY)
        self.h.add_user("bob")
        self.other, _ = self.h.register("other")
        self.so = self.h.stream(self.other)

    def test_owned_tags(self):
        """A user owning a tag through a group registers a tagged node that never expires."""
        node, response = self.h.register("web", Hostinfo=hostinfo("web", ["tag:web"]))
        self.assertNotIn("Error", response)
        self.assertEqual(node.tags, ("tag:web",))
        self.assertIsNone(node.expiry)
        peer = self.so.applier.peers[node.id]
        self.assertEqual(peer["Tags"], ["tag:web"])
        self.assertEqual(peer["User"], 2147455555)

    def test_owner_created_after_start(self):
        """A key of a user the control plane has not cached yet (created via the API) may request that user's tags."""
        carol = self.h.run(self.h.db.users.create("carol"))  # in the store only, as the admin API does
        policy = json.loads(POLICY)
        policy["tagOwners"]["tag:carol"] = ["carol@"]
        self.h.run(self.h.set_policy(json.dumps(policy)))
        self.h.make_key("carol", user_id=carol.id, reusable=True)
        node, response = self.h.register("c", auth="carol", Hostinfo=hostinfo("c", ["tag:carol"]))
        self.assertNotIn("Error", response)
        self.assertEqual(node.tags, ("tag:carol",))

    def test_refused_tags(self):
        """A tag owned by someone else refuses the registration with a message naming it."""
        node, response = self.h.register("db", Hostinfo=hostinfo("db", ["tag:web", "tag:db"]))
        self.assertIsNone(node)
        self.assertEqual(response, {"Error": "requested tags [tag:db] are invalid or not permitted"})

    def test_undeclared_tag(self):
        """A tag missing from tagOwners is refused."""
        _, response = self.h.register("x", Hostinfo=hostinfo("x", ["tag:nope"]))
        self.assertIn("tag:nope", response["Error"])

    def test_tagged_key_wins(self):
        """A tagged pre-auth key sets its tags and no user owns the node."""
        self.h.make_key("dbkey", reusable=True, tags=("tag:db",))
        node, response = self.h.register("db", auth="dbkey", Hostinfo=hostinfo("db", ["tag:web"]))
        self.assertNotIn("Error", response)
        self.assertEqual(node.tags, ("tag:db",))
        self.assertIsNone(node.user_id)

    def test_interactive_refused(self):
        """Completing an interactive registration with unowned tags fails and answers the client."""
        from tests.control._harness import key

        body = {"Version": 133, "NodeKey": key("nodekey"), "Hostinfo": hostinfo("db", ["tag:db"])}
        machine = key("mkey")
        response = self.h.run(self.h.registrar.register(machine, body))
        auth_id = response["AuthURL"].rpartition("/")[2]
        self.failureResultOf(Deferred.fromCoroutine(self.h.registrar.complete(auth_id, "alice")), InvalidInput)
        self.assertIsNone(self.h.state.by_machine_key(machine))
        followup = self.h.run(self.h.registrar.register(machine, dict(body, Followup=response["AuthURL"])))
        self.assertIn("tag:db", followup["Error"])


class NoPolicyTagTests(unittest.TestCase):
    """Without a policy a node cannot give itself tags; admins still can."""

    def test_request_refused(self):
        """RequestTags with no policy are refused."""
        h = Harness(self)
        _, response = h.register("web", Hostinfo=hostinfo("web", ["tag:web"]))
        self.assertIn("not permitted", response["Error"])

    def test_admin_allowed(self):
        """An admin may tag nodes with any well-formed tag when no policy is loaded."""
        h = Harness(self)
        node, _ = h.register("web")
        self.assertEqual(h.run(h.admin.set_tags(node.id, ["tag:any"])).tags, ("tag:any",))


class MapUpdateTagTests(unittest.TestCase):
    """RequestTags changed in a map update apply only when owned."""

    def setUp(self):
        self.h = Harness(self, policy=POLICY)
        self.node, _ = self.h.register("web")
        self.stream = self.h.stream(self.node)
        self.node = self.h.state.get(self.node.id)

    def test_owned_applied(self):
        """Owned tags requested later tag the node and its own session learns it."""
        self.h.lite(self.node, Hostinfo=hostinfo("web", ["tag:web"]))
        self.assertEqual(self.h.state.get(self.node.id).tags, ("tag:web",))
        self.assertEqual(self.stream.applier.node["Tags"], ["tag:web"])

    def test_unowned_ignored(self):
        """Unowned tags requested later are ignored."""
        self.h.lite(self.node, Hostinfo=hostinfo("web", ["tag:db"]))
        self.assertEqual(self.h.state.get(self.node.id).tags, ())
        self.flushLoggedErrors()

    def test_tag_owned_by_tag(self):
        """A node holding tag:web may add tag:child, which tag:web owns."""
        self.h.lite(self.node, Hostinfo=hostinfo("web", ["tag:web"]))
        self.h.lite(self.h.state.get(self.node.id), Hostinfo=hostinfo("web", ["tag:web", "tag:child"]))
        self.assertEqual(self.h.state.get(self.node.id).tags, ("tag:child", "tag:web"))


class AdminTagTests(unittest.TestCase):
    """NodeAdmin.set_tags validates against the policy."""

    def setUp(self):
        self.h = Harness(self, policy=POLICY)
        self.node, _ = self.h.register("web")

    def _set(self, node_id, tags):
        return Deferred.fromCoroutine(self.h.admin.set_tags(node_id, tags))

    def test_undefined_tag(self):
        """A tag not in tagOwners is refused, naming it."""
        e = self.failureResultOf(self._set(self.node.id, ["tag:web", "tag:nope"]), InvalidInput).value
        self.assertIn("tag:nope", str(e))

    def test_malformed_tag(self):
        """A malformed tag is refused, naming it."""
        e = self.failureResultOf(self._set(self.node.id, ["web"]), InvalidInput).value
        self.assertIn("'web'", str(e))

    def test_defined_tag(self):
        """A declared tag is set; clearing it returns the node to its user."""
        self.assertEqual(self.successResultOf(self._set(self.node.id, ["tag:db"])).tags, ("tag:db",))
        self.assertEqual(self.successResultOf(self._set(self.node.id, [])).tags, ())

    def test_tag_owned_node_keeps_a_tag(self):
        """A node registered with a tagged key cannot lose all its tags."""
        self.h.make_key("dbkey", reusable=True, tags=("tag:db",))
        node, _ = self.h.register("db", auth="dbkey")
        e = self.failureResultOf(self._set(node.id, []), InvalidInput).value
        self.assertIn("at least one tag", str(e))
