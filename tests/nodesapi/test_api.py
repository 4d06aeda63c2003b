# -*- test-case-name: tests.nodesapi.test_api -*-
"""Tests for the node, route, policy and auth endpoints of headscale_tw.web.admin_api over a real control plane."""

from twisted.trial import unittest

from headscale_tw.testing.db import resolve
from tests.nodesapi._harness import NOW, PlaneHarness

__all__ = [
    "NodeShapeTests",
    "NodeQueryTests",
    "NodeChangeTests",
    "RouteTests",
    "MoveTests",
    "RegisterTests",
    "PolicyTests",
    "FilePolicyTests",
    "NoPlaneTests",
]

POLICY = ('{"tagOwners": {"tag:web": ["alice@"]},'
          ' "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web:80"]}]}')
NODE_FIELDS = ["id", "machineKey", "nodeKey", "discoKey", "ipAddresses", "name", "user", "lastSeen", "expiry",
               "preAuthKey", "createdAt", "registerMethod", "givenName", "online", "approvedRoutes",
               "availableRoutes", "subnetRoutes", "tags"]


class NodeShapeTests(unittest.TestCase):
    """A node renders as Headscale 0.29's ``headscale.v1.Node`` JSON."""

    def setUp(self):
        self.h = PlaneHarness(self)

    def test_fields(self):
        """Every field of the 0.29 Node message is present with grpc-gateway types."""
        node = self.h.register("web")
        status, body = self.h.request("GET", f"/api/v1/node/{node.id}")
        self.assertEqual(status, 200)
        data = body["node"]
        self.assertEqual(list(data), NODE_FIELDS)
        self.assertEqual(data["id"], str(node.id))
        self.assertEqual(data["machineKey"], node.machine_key)
        self.assertEqual(data["ipAddresses"], ["100.64.0.1", "fd7a:115c:a1e0::1"])
        self.assertEqual((data["name"], data["givenName"]), ("web", "web"))
        self.assertEqual(data["user"]["name"], "alice")
        self.assertEqual(data["registerMethod"], "REGISTER_METHOD_AUTH_KEY")
        self.assertEqual(data["preAuthKey"]["key"].split("-")[:2], ["hskey", "auth"])
        self.assertTrue(data["preAuthKey"]["key"].endswith("-***"))
        self.assertEqual(data["createdAt"], "2027-01-15T08:00:00Z")
        self.assertIsNone(data["expiry"])
        self.assertFalse(data["online"])
        self.assertEqual(data["tags"], [])

    def test_online(self):
        """A node with an open map stream is online."""
        node = self.h.register("web")
        self.h.stream(node)
        self.assertTrue(self.h.request("GET", f"/api/v1/node/{node.id}")[1]["node"]["online"])

    def test_tagged_node_owner(self):
        """A node registered with a tagged key is shown as owned by tagged-devices."""
        self.h.run(self.h.plane.admin.policy.set(POLICY))
        node = self.h.register("srv", key=self.h.auth_key(tags=("tag:web",)))
        data = self.h.request("GET", f"/api/v1/node/{node.id}")[1]["node"]
        self.assertEqual(data["user"]["id"], "2147455555")
        self.assertEqual(data["user"]["name"], "tagged-devices")
        self.assertEqual(data["tags"], ["tag:web"])


class NodeQueryTests(unittest.TestCase):
    """Listing and fetching nodes."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.bob = self.h.add_user("bob")
        self.a = self.h.register("a")
        self.b = self.h.register("b", key=self.h.auth_key(self.bob.id))

    def test_list(self):
        """GET /node lists every node ordered by id."""
        status, body = self.h.request("GET", "/api/v1/node")
        self.assertEqual(status, 200)
        self.assertEqual([n["givenName"] for n in body["nodes"]], ["a", "b"])

    def test_list_by_user(self):
        """?user= filters by user name (or id)."""
        self.assertEqual([n["name"] for n in self.h.request("GET", "/api/v1/node", query={"user": "bob"})[1]["nodes"]],
                         ["b"])
        self.assertEqual([n["name"] for n in self.h.request("GET", "/api/v1/node",
                                                            query={"user": str(self.bob.id)})[1]["nodes"]], ["b"])

    def test_list_unknown_user(self):
        """An unknown user is a 404 naming it."""
        status, body = self.h.request("GET", "/api/v1/node", query={"user": "carol"})
        self.assertEqual((status, body["message"]), (404, 'user "carol" not found'))

    def test_empty_list(self):
        """With no nodes the list is empty, not missing."""
        self.h.run(self.h.plane.nodes.delete(self.a.id))
        self.h.run(self.h.plane.nodes.delete(self.b.id))
        self.assertEqual(self.h.request("GET", "/api/v1/node"), (200, {"nodes": []}))

    def test_unknown_node(self):
        """An unknown node id is 404 ``node 7 not found``."""
        for method, path, body in (("GET", "/api/v1/node/7", None), ("DELETE", "/api/v1/node/7", None),
                                   ("POST", "/api/v1/node/7/expire", None),
                                   ("POST", "/api/v1/node/7/rename/x", None),
                                   ("POST", "/api/v1/node/7/tags", {"tags": ["tag:x"]}),
                                   ("POST", "/api/v1/node/7/approve_routes", {"routes": []}),
                                   ("POST", "/api/v1/node/7/user", {"user": "bob"})):
            status, reply = self.h.request(method, path, body)
            self.assertEqual((status, reply["code"], reply["message"]), (404, 5, "node 7 not found"), path)

    def test_bad_id(self):
        """A node id that is not a number is a 400 naming the parameter."""
        status, body = self.h.request("GET", "/api/v1/node/abc")
        self.assertEqual(status, 400)
        self.assertIn("node_id", body["message"])


class NodeChangeTests(unittest.TestCase):
    """Admin changes are stored, answered with the new Node, and reach peers' streams."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.a = self.h.register("a")
        self.b = self.h.register("b")
        self.sa = self.h.stream(self.a)
        self.sb = self.h.stream(self.b)
        self.h.let_deltas_out()  # the joins and online changes of setUp, so the mark starts clean
        self.mark = len(self.sb.applier.messages)

    def peer_messages(self):
        """What b's stream received since setUp."""
        return self.sb.since(self.mark)

    def test_rename_notifies_peers(self):
        """A rename answers the node and sends PeersChanged with the new name to a streaming peer."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/rename/web-1")
        self.assertEqual((status, body["node"]["givenName"]), (200, "web-1"))
        self.assertEqual(resolve(self.h.db.nodes.get(self.a.id)).given_name, "web-1")
        changed = [m for m in self.peer_messages() if "PeersChanged" in m]
        self.assertEqual([p["ID"] for p in changed[-1]["PeersChanged"]], [self.a.id])
        self.assertEqual(self.sb.applier.peers[self.a.id]["Name"], "web-1.tail.example.")
        self.assertEqual(self.sa.applier.node["Name"], "web-1.tail.example.")

    def test_rename_invalid(self):
        """An invalid name is a 400 naming the rule, and nothing changes."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/rename/Not_Valid")
        self.assertEqual(status, 400)
        self.assertIn("lower-case letters, digits or '-'", body["message"])
        self.assertEqual(resolve(self.h.db.nodes.get(self.a.id)).given_name, "a")
        self.assertEqual(self.peer_messages(), [])

    def test_rename_taken(self):
        """Another node's name is a 409."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/rename/b")
        self.assertEqual((status, body["code"]), (409, 6))
        self.assertEqual(self.h.plane.state.get(self.a.id).given_name, "a")

    def test_expire_now(self):
        """Expire with no time sets expiry to now; peers see the node expired."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/expire")
        self.assertEqual((status, body["node"]["expiry"]), (200, "2027-01-15T08:00:00.005Z"))  # setUp's 5 ms
        self.assertTrue(self.sb.applier.peers[self.a.id]["Expired"])

    def test_expire_at(self):
        """?expiry= sets a future key expiry."""
        when = "2027-02-01T00:00:00Z"
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/expire", query={"expiry": when})
        self.assertEqual((status, body["node"]["expiry"]), (200, when))
        self.assertEqual(self.h.plane.state.get(self.a.id).expiry, NOW.replace(month=2, day=1, hour=0))

    def test_disable_expiry(self):
        """disableExpiry=true clears the expiry; with an expiry too it is a 400."""
        self.h.request("POST", f"/api/v1/node/{self.a.id}/expire")
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/expire", query={"disableExpiry": "true"})
        self.assertEqual((status, body["node"]["expiry"]), (200, None))
        self.assertFalse(self.sb.applier.peers[self.a.id].get("Expired", False))
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/expire",
                                      query={"disableExpiry": "true", "expiry": "2030-01-01T00:00:00Z"})
        self.assertEqual(status, 400)
        self.assertIn("cannot set both", body["message"])

    def test_expire_bad_time(self):
        """A malformed expiry is a 400 naming the field."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/expire", query={"expiry": "tomorrow"})
        self.assertEqual(status, 400)
        self.assertIn("expiry", body["message"])
        self.assertIsNone(self.h.plane.state.get(self.a.id).expiry)

    def test_delete(self):
        """DELETE removes the node; peers get PeersRemoved; its stream ends."""
        status, body = self.h.request("DELETE", f"/api/v1/node/{self.a.id}")
        self.assertEqual((status, body), (200, {}))
        self.assertIn({"PeersRemoved": [self.a.id]}, self.peer_messages())
        self.assertTrue(self.sa.finished)
        self.assertEqual([n.id for n in resolve(self.h.db.nodes.list())], [self.b.id])
        self.assertEqual(self.h.request("GET", f"/api/v1/node/{self.a.id}")[0], 404)

    def test_set_tags(self):
        """Tags are set and peers get the node's new entry."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/tags", {"tags": ["tag:web", "tag:db"]})
        self.assertEqual((status, body["node"]["tags"]), (200, ["tag:db", "tag:web"]))
        self.assertEqual(self.sb.applier.peers[self.a.id]["Tags"], ["tag:db", "tag:web"])

    def test_set_tags_invalid(self):
        """A tag without ``tag:`` or in upper case is a 400 with Headscale's rule; nothing changes."""
        for tag, rule in (("web", "must start with 'tag:'"), ("tag:Web", "lowercase")):
            status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/tags", {"tags": [tag]})
            self.assertEqual(status, 400)
            self.assertIn(rule, body["message"])
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/tags", {"tags": "tag:web"})
        self.assertEqual((status, body["message"]), (400, "tags: expected a list of strings"))
        self.assertEqual(self.h.plane.state.get(self.a.id).tags, ())
        self.assertEqual(self.peer_messages(), [])

    def test_user_delete_tells_nobody(self):
        """Deleting a user that owns no node sends no session anything (no full maps); the plane forgets it."""
        carol = self.h.add_user("carol")
        self.h.run(self.h.plane.state.user(carol.id))  # cached, as after a registration attempt
        mark_a = len(self.sa.applier.messages)
        status, body = self.h.request("DELETE", f"/api/v1/user/{carol.id}")
        self.assertEqual((status, body), (200, {}))
        self.assertEqual((self.sa.since(mark_a), self.peer_messages()), ([], []))
        self.assertNotIn(carol.id, self.h.plane.state.users)

    def test_user_rename_without_nodes_tells_nobody(self):
        """Renaming a user that owns no node sends no session anything."""
        carol = self.h.add_user("carol")
        status, body = self.h.request("POST", f"/api/v1/user/{carol.id}/rename/caroline")
        self.assertEqual((status, body["user"]["name"]), (200, "caroline"))
        self.assertEqual(self.peer_messages(), [])

    def test_user_rename_reaches_peers(self):
        """Renaming a user through the API refreshes the plane's copy, so maps show the new login name."""
        self.h.request("POST", f"/api/v1/user/{self.h.user.id}/rename/alicia")
        self.assertEqual(self.h.plane.state.users[self.h.user.id].name, "alicia")
        self.assertEqual(self.h.request("GET", f"/api/v1/node/{self.a.id}")[1]["node"]["user"]["name"], "alicia")


class RouteTests(unittest.TestCase):
    """Approving routes; available, approved and served routes in the Node."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.router = self.h.register("router", RoutableIPs=["10.0.0.0/24", "0.0.0.0/0", "::/0"])
        self.client = self.h.register("client")
        self.sr = self.h.stream(self.router)
        self.sc = self.h.stream(self.client)

    def test_available_not_served(self):
        """Announced routes are available, not approved nor served, until approved."""
        node = self.h.request("GET", f"/api/v1/node/{self.router.id}")[1]["node"]
        self.assertEqual(node["availableRoutes"], ["10.0.0.0/24", "0.0.0.0/0", "::/0"])
        self.assertEqual((node["approvedRoutes"], node["subnetRoutes"]), ([], []))

    def test_approve(self):
        """Approved routes are served (primary subnet + exit routes) and peers get the new AllowedIPs."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.router.id}/approve_routes",
                                      {"routes": ["10.0.0.0/24", "0.0.0.0/0"]})
        self.assertEqual(status, 200)
        node = body["node"]
        self.assertEqual(node["approvedRoutes"], ["0.0.0.0/0", "10.0.0.0/24", "::/0"])
        self.assertEqual(node["subnetRoutes"], ["10.0.0.0/24", "0.0.0.0/0", "::/0"])
        self.assertIn("10.0.0.0/24", self.sc.applier.peers[self.router.id]["AllowedIPs"])

    def test_clear(self):
        """An empty list removes every approval."""
        self.h.request("POST", f"/api/v1/node/{self.router.id}/approve_routes", {"routes": ["10.0.0.0/24"]})
        status, body = self.h.request("POST", f"/api/v1/node/{self.router.id}/approve_routes", {"routes": []})
        self.assertEqual((status, body["node"]["approvedRoutes"], body["node"]["subnetRoutes"]), (200, [], []))
        self.assertNotIn("10.0.0.0/24", self.sc.applier.peers[self.router.id]["AllowedIPs"])

    def test_bad_prefix(self):
        """A malformed prefix is a 400 naming it; nothing changes."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.router.id}/approve_routes",
                                      {"routes": ["10.0.0.0/24", "10.0.0.300/24"]})
        self.assertEqual(status, 400)
        self.assertIn("10.0.0.300/24", body["message"])
        self.assertEqual(self.h.plane.state.get(self.router.id).approved_routes, ())


class MoveTests(unittest.TestCase):
    """POST /node/{id}/user gives a node to another user."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.bob = self.h.add_user("bob")
        self.a = self.h.register("a")
        self.b = self.h.register("b")
        self.sb = self.h.stream(self.b)

    def test_move(self):
        """The node changes owner, by name or id, and peers see the new owner."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/user", {"user": "bob"})
        self.assertEqual((status, body["node"]["user"]["name"]), (200, "bob"))
        self.assertEqual(resolve(self.h.db.nodes.get(self.a.id)).user_id, self.bob.id)
        self.assertEqual(self.sb.applier.peers[self.a.id]["User"], self.bob.id)
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/user", {"user": str(self.h.user.id)})
        self.assertEqual((status, body["node"]["user"]["name"]), (200, "alice"))

    def test_unknown_user(self):
        """An unknown user is a 404; nothing changes."""
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/user", {"user": "carol"})
        self.assertEqual((status, body["message"]), (404, 'user "carol" not found'))
        self.assertEqual(self.h.plane.state.get(self.a.id).user_id, self.h.user.id)

    def test_tagged(self):
        """A tagged node cannot be moved (400)."""
        self.h.request("POST", f"/api/v1/node/{self.a.id}/tags", {"tags": ["tag:web"]})
        status, body = self.h.request("POST", f"/api/v1/node/{self.a.id}/user", {"user": "bob"})
        self.assertEqual(status, 400)
        self.assertIn("tagged", body["message"])


class RegisterTests(unittest.TestCase):
    """Completing interactive registrations: /auth/register and the legacy /node/register."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.peer = self.h.register("peer")
        self.sp = self.h.stream(self.peer)

    def test_auth_register(self):
        """The pending machine becomes a node of the user; peers learn about it."""
        machine_key, auth_id = self.h.start_interactive("laptop")
        status, body = self.h.request("POST", "/api/v1/auth/register", {"user": "alice", "authId": auth_id})
        self.assertEqual(status, 200)
        node = body["node"]
        self.assertEqual((node["givenName"], node["user"]["name"]), ("laptop", "alice"))
        self.assertEqual((node["registerMethod"], node["preAuthKey"]), ("REGISTER_METHOD_CLI", None))
        self.assertEqual(self.h.plane.state.by_machine_key(machine_key).id, int(node["id"]))
        self.assertIn(int(node["id"]), self.sp.applier.peers)

    def test_legacy_node_register(self):
        """POST /node/register?user=&key= does the same (Headscale's deprecated form)."""
        _, auth_id = self.h.start_interactive("laptop")
        status, body = self.h.request("POST", "/api/v1/node/register", query={"user": "alice", "key": auth_id})
        self.assertEqual((status, body["node"]["name"]), (200, "laptop"))

    def test_unknown_auth_id(self):
        """An unknown auth id is a 404; a missing one a 400."""
        status, body = self.h.request("POST", "/api/v1/auth/register", {"user": "alice", "authId": "nope"})
        self.assertEqual(status, 404)
        self.assertIn('"nope"', body["message"])
        status, body = self.h.request("POST", "/api/v1/auth/register", {"user": "alice"})
        self.assertEqual(status, 400)

    def test_unknown_user(self):
        """An unknown user is a 404 and the registration stays pending."""
        _, auth_id = self.h.start_interactive("laptop")
        status, body = self.h.request("POST", "/api/v1/auth/register", {"user": "carol", "authId": auth_id})
        self.assertEqual((status, body["message"]), (404, 'user "carol" not found'))
        self.assertEqual(self.h.run(self.h.plane.registrar.get_pending(auth_id)).state, "pending")

    def test_reject(self):
        """POST /auth/reject answers {} and the registration can no longer be registered."""
        _, auth_id = self.h.start_interactive("laptop")
        status, body = self.h.request("POST", "/api/v1/auth/reject", {"authId": auth_id})
        self.assertEqual((status, body), (200, {}))
        self.assertEqual(self.h.run(self.h.db.auth_requests.get(auth_id)).state, "rejected")
        status, body = self.h.request("POST", "/api/v1/auth/register", {"user": "alice", "authId": auth_id})
        self.assertEqual(status, 404)
        status, body = self.h.request("POST", "/api/v1/auth/reject", {"authId": auth_id})
        self.assertEqual((status, body["code"]), (400, 9))
        self.assertIn("already rejected", body["message"])

    def test_approve_registration_refused(self):
        """POST /auth/approve on a node registration is a 400 pointing at auth register; it stays pending."""
        _, auth_id = self.h.start_interactive("laptop")
        status, body = self.h.request("POST", "/api/v1/auth/approve", {"authId": auth_id})
        self.assertEqual((status, body["code"]), (400, 9))
        self.assertIn("auth register", body["message"])
        self.assertEqual(self.h.run(self.h.plane.registrar.get_pending(auth_id)).state, "pending")

    def test_approve_reject_unknown(self):
        """approve and reject of an unknown id are 404; a missing id is a 400 naming authId."""
        for path in ("/api/v1/auth/approve", "/api/v1/auth/reject"):
            status, body = self.h.request("POST", path, {"authId": "nope"})
            self.assertEqual((status, body["code"]), (404, 5))
            status, body = self.h.request("POST", path, {})
            self.assertEqual(status, 400)
            self.assertIn("authId", body["message"])


class PolicyTests(unittest.TestCase):
    """GET/PUT /policy and POST /policy/check in database mode."""

    def setUp(self):
        self.h = PlaneHarness(self)
        self.a = self.h.register("a")
        self.b = self.h.register("b")
        self.sb = self.h.stream(self.b)

    def test_get_none(self):
        """With no policy, GET is a 404 saying everything is allowed, in the words Headplane reads as no policy."""
        status, body = self.h.request("GET", "/api/v1/policy")
        self.assertEqual(status, 404)
        self.assertIn("all traffic is allowed", body["message"])
        self.assertIn("acl policy not found", body["message"])

    def test_set_and_get(self):
        """PUT stores and applies the policy; GET returns it with its time; peers get new filters."""
        mark = len(self.sb.applier.messages)
        self.h.clock.advance(60)
        status, body = self.h.request("PUT", "/api/v1/policy", {"policy": POLICY})
        self.assertEqual((status, body), (200, {"policy": POLICY, "updatedAt": "2027-01-15T08:01:00Z"}))
        self.assertEqual(self.h.request("GET", "/api/v1/policy")[1]["policy"], POLICY)
        self.assertEqual(resolve(self.h.db.policies.get_latest()).data, POLICY)
        self.assertTrue(any("PacketFilter" in m for m in self.sb.since(mark)))

    def test_rejected(self):
        """A policy that does not parse is a 400 with the reason; the old one stays."""
        self.h.request("PUT", "/api/v1/policy", {"policy": POLICY})
        status, body = self.h.request("PUT", "/api/v1/policy", {"policy": '{"acls": ['})
        self.assertEqual((status, body["code"]), (400, 3))
        self.assertIn("HuJSON", body["message"])
        self.assertEqual(self.h.plane.policy.get_policy(), POLICY)
        self.assertEqual(resolve(self.h.db.policies.get_latest()).data, POLICY)

    def test_failing_tests_rejected(self):
        """A policy whose tests fail is rejected naming the failure."""
        policy = ('{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web:80"]}],'
                  ' "tagOwners": {"tag:web": ["alice@"]},'
                  ' "tests": [{"src": "alice@", "accept": ["100.64.0.2:22"]}]}')
        status, body = self.h.request("PUT", "/api/v1/policy", {"policy": policy})
        self.assertEqual(status, 400)
        self.assertIn("100.64.0.2:22", body["message"])
        self.assertEqual(self.h.plane.policy.get_policy(), "")

    def test_missing_text(self):
        """A body without a policy string is a 400."""
        status, body = self.h.request("PUT", "/api/v1/policy", {"policy": 3})
        self.assertEqual(status, 400)
        self.assertIn("policy", body["message"])

    def test_check(self):
        """POST /policy/check validates without storing or applying."""
        self.assertEqual(self.h.request("POST", "/api/v1/policy/check", {"policy": POLICY}), (200, {}))
        self.assertEqual(self.h.plane.policy.get_policy(), "")
        self.assertIsNone(resolve(self.h.db.policies.get_latest()))
        status, body = self.h.request("POST", "/api/v1/policy/check", {"policy": "{"})
        self.assertEqual(status, 400)


class FilePolicyTests(unittest.TestCase):
    """In file mode the policy can be read and checked but not set."""

    def setUp(self):
        self.h = PlaneHarness(self, policy_mode="file", policy_path="/etc/hs/acl.hujson",
                              files={"/etc/hs/acl.hujson": POLICY})

    def test_get(self):
        """GET returns the file's policy, with no update time."""
        self.assertEqual(self.h.request("GET", "/api/v1/policy"), (200, {"policy": POLICY, "updatedAt": None}))

    def test_set_refused(self):
        """PUT is refused with a message about file mode; nothing is stored."""
        status, body = self.h.request("PUT", "/api/v1/policy", {"policy": "{}"})
        self.assertEqual(status, 400)
        self.assertIn("policy.mode 'file'", body["message"])
        self.assertIn("update is disabled", body["message"])
        self.assertEqual(self.h.plane.policy.get_policy(), POLICY)
        self.assertIsNone(resolve(self.h.db.policies.get_latest()))


class NoPlaneTests(unittest.TestCase):
    """An AdminAPI built without the control plane answers 501 for node endpoints."""

    def test_unimplemented(self):
        """Node, policy and auth endpoints are 501; users still work."""
        h = PlaneHarness(self, with_plane=False)
        for method, path in (("GET", "/api/v1/node"), ("GET", "/api/v1/node/1"), ("GET", "/api/v1/policy"),
                             ("POST", "/api/v1/auth/register")):
            status, body = h.request(method, path, {} if method == "POST" else None)
            self.assertEqual((status, body["code"]), (501, 12), path)
            self.assertIn("control plane", body["message"])
        self.assertEqual(h.request("GET", "/api/v1/user")[0], 200)
