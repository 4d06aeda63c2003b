"""Tests for subnet routes, exit nodes, auto-approval and HA primary election in the control plane."""

import ipaddress
import json

from twisted.trial import unittest

from headscale_tw.control.routes import RouteElection, normalize_approval, parse_prefix
from headscale_tw.errors import InvalidInput
from tests.control._harness import Harness

ROUTE = "10.33.0.0/16"
EXITS = ["0.0.0.0/0", "::/0"]

POLICY = json.dumps({
    "tagOwners": {"tag:router": ["alice@"], "tag:exit": ["alice@"]},
    "acls": [
        {"action": "accept", "src": ["autogroup:member"], "dst": [f"{ROUTE}:*", "tag:router:*"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:internet:*"]},
    ],
    "autoApprovers": {"routes": {"10.33.0.0/16": ["tag:router"]}, "exitNode": ["tag:exit"]},
})


def hostinfo(name, routes=()):
    info = {"Hostname": name, "OS": "linux"}
    if routes:
        info["RoutableIPs"] = list(routes)
    return info


class RouteElectionTests(unittest.TestCase):
    """Primary election is sticky and falls back to the lowest id."""

    def test_sticky_and_failover(self):
        """The first primary stays while it is a candidate; otherwise the lowest id wins."""
        net = ipaddress.ip_network(ROUTE)
        e = RouteElection()
        self.assertEqual(e.elect({2: [net], 3: [net]}), {2})
        self.assertEqual(e.primaries, {net: 2})
        self.assertEqual(e.elect({1: [net], 2: [net]}), set())
        self.assertEqual(e.primaries, {net: 2})
        self.assertEqual(e.elect({1: [net], 3: [net]}), {1, 2})
        self.assertEqual(e.elect({}), {1})
        self.assertEqual(e.primaries, {})

    def test_exit_routes_not_elected(self):
        """/0 routes are never elected."""
        e = RouteElection()
        self.assertEqual(e.elect({1: [ipaddress.ip_network("0.0.0.0/0")]}), set())

    def test_normalize(self):
        """Either exit route approves both; host bits are masked; bad prefixes are named."""
        self.assertEqual(normalize_approval([parse_prefix("::/0"), parse_prefix("10.1.2.3/16")]),
                         ("0.0.0.0/0", "10.1.0.0/16", "::/0"))
        self.assertRaises(InvalidInput, parse_prefix, "10.0.0.0/33")


class AutoApproveTests(unittest.TestCase):
    """autoApprovers approve announced routes and peers get them in AllowedIPs/PrimaryRoutes."""

    def setUp(self):
        self.h = Harness(self, policy=POLICY)
        self.h.make_key("router", reusable=True, tags=("tag:router",))
        self.h.make_key("exit", reusable=True, tags=("tag:exit",))
        self.client, _ = self.h.register("laptop")
        self.sc = self.h.stream(self.client)

    def test_auto_approved_route(self):
        """A tag:router node announcing 10.33.0.0/16 is approved and becomes the peer's route."""
        router, _ = self.h.register("router", auth="router", Hostinfo=hostinfo("router", [ROUTE]))
        self.assertEqual(self.h.state.get(router.id).approved_routes, (ROUTE,))
        sr = self.h.stream(router)
        peer = self.sc.applier.peers[router.id]
        self.assertIn(ROUTE, peer["AllowedIPs"])
        self.assertEqual(peer["PrimaryRoutes"], [ROUTE])
        self.assertEqual(sr.applier.node["PrimaryRoutes"], [ROUTE])
        self.assertIn(ROUTE, sr.applier.node["AllowedIPs"])
        # the router's filter lets members reach the subnet through it
        dsts = {d["IP"] for rule in sr.applier.packet_filter for d in rule["DstPorts"]}
        self.assertIn(ROUTE, dsts)

    def test_route_announced_later(self):
        """Routes announced in a map update are approved and pushed to peers."""
        router, _ = self.h.register("router", auth="router")
        self.h.stream(router)
        self.h.lite(self.h.state.get(router.id), Hostinfo=hostinfo("router", [ROUTE]))
        self.assertEqual(self.sc.applier.peers[router.id]["PrimaryRoutes"], [ROUTE])

    def test_not_approver(self):
        """A user's node announcing the route is not auto-approved; an admin may approve it."""
        other, _ = self.h.register("other", Hostinfo=hostinfo("other", [ROUTE, "10.99.0.0/16"]))
        self.assertEqual(self.h.state.get(other.id).approved_routes, ())
        so = self.h.stream(other)
        self.assertNotIn("PrimaryRoutes", so.applier.node)
        self.h.run(self.h.admin.approve_routes(other.id, ["10.99.0.0/16"]))
        self.assertEqual(so.applier.node["PrimaryRoutes"], ["10.99.0.0/16"])
        info = self.h.admin.routes(other.id)[0]
        self.assertEqual(info.announced, (ROUTE, "10.99.0.0/16"))
        self.assertEqual(info.approved, ("10.99.0.0/16",))
        self.assertEqual(info.served, ("10.99.0.0/16",))
        self.assertEqual(info.primary, ("10.99.0.0/16",))

    def test_policy_change_approves(self):
        """A new policy that lets the node approve its routes approves them."""
        other, _ = self.h.register("other", Hostinfo=hostinfo("other", ["10.99.0.0/16"]))
        self.h.stream(other)
        text = json.loads(POLICY)
        text["autoApprovers"]["routes"]["10.99.0.0/16"] = ["alice@"]
        text["acls"][0]["dst"].append("10.99.0.0/16:*")
        self.h.run(self.h.set_policy(json.dumps(text)))
        self.assertEqual(self.h.state.get(other.id).approved_routes, ("10.99.0.0/16",))
        self.assertEqual(self.sc.applier.peers[other.id]["PrimaryRoutes"], ["10.99.0.0/16"])

    def test_exit_node(self):
        """An auto-approved exit node is offered with both /0 prefixes and no PrimaryRoutes."""
        node, _ = self.h.register("exit", auth="exit", Hostinfo=hostinfo("exit", EXITS))
        self.assertEqual(self.h.state.get(node.id).approved_routes, tuple(EXITS))
        self.h.stream(node)
        peer = self.sc.applier.peers[node.id]
        self.assertIn("0.0.0.0/0", peer["AllowedIPs"])
        self.assertIn("::/0", peer["AllowedIPs"])
        self.assertNotIn("PrimaryRoutes", peer)


class NoPolicyRouteTests(unittest.TestCase):
    """Without a policy, admin approval alone makes routes and exit nodes visible to all."""

    def setUp(self):
        self.h = Harness(self)
        self.client, _ = self.h.register("laptop")
        self.sc = self.h.stream(self.client)

    def test_exit_node_admin_approval(self):
        """Approving 0.0.0.0/0 approves both exit routes; peers see both /0s."""
        node, _ = self.h.register("exit", Hostinfo=hostinfo("exit", EXITS))
        self.h.stream(node)
        self.assertEqual(self.sc.applier.peers[node.id]["AllowedIPs"], [f"{node.ipv4}/32", f"{node.ipv6}/128"])
        self.h.run(self.h.admin.approve_routes(node.id, ["0.0.0.0/0"]))
        allowed = self.sc.applier.peers[node.id]["AllowedIPs"]
        self.assertIn("0.0.0.0/0", allowed)
        self.assertIn("::/0", allowed)

    def test_approval_before_announcement(self):
        """A route approved before it is announced is served once announced."""
        node, _ = self.h.register("router")
        self.h.stream(node)
        self.h.run(self.h.admin.approve_routes(node.id, [ROUTE]))
        self.assertNotIn("PrimaryRoutes", self.sc.applier.peers[node.id])
        self.h.lite(self.h.state.get(node.id), Hostinfo=hostinfo("router", [ROUTE]))
        self.assertEqual(self.sc.applier.peers[node.id]["PrimaryRoutes"], [ROUTE])

    def test_bad_route_named(self):
        """approve_routes names a malformed prefix."""
        from twisted.internet.defer import Deferred

        e = self.failureResultOf(Deferred.fromCoroutine(self.h.admin.approve_routes(self.client.id, ["nope"])),
                                 InvalidInput).value
        self.assertIn("nope", str(e))


class FailoverTests(unittest.TestCase):
    """HA subnet routers: one primary per prefix, failover after the offline grace, sticky."""

    def setUp(self):
        self.h = Harness(self, policy=POLICY, grace=10.0)
        self.h.make_key("router", reusable=True, tags=("tag:router",))
        self.client, _ = self.h.register("laptop")
        self.sc = self.h.stream(self.client)
        self.r1, _ = self.h.register("r1", auth="router", Hostinfo=hostinfo("r1", [ROUTE]))
        self.r2, _ = self.h.register("r2", auth="router", Hostinfo=hostinfo("r2", [ROUTE]))
        self.s1 = self.h.stream(self.r1)
        self.s2 = self.h.stream(self.r2)

    def routed_by(self):
        return [pid for pid, p in self.sc.applier.peers.items() if ROUTE in p.get("PrimaryRoutes", ())]

    def test_lowest_id_primary(self):
        """The first router is primary; the client routes through it only."""
        self.assertEqual(self.routed_by(), [self.r1.id])
        self.assertNotIn(ROUTE, self.sc.applier.peers[self.r2.id]["AllowedIPs"])

    def test_co_router_sees_primary(self):
        """Routers that are peers: the secondary sees the primary's route (co-router visibility)."""
        text = json.loads(POLICY)
        text["acls"].append({"action": "accept", "src": ["tag:router"], "dst": ["tag:router:*"]})
        self.h.run(self.h.set_policy(json.dumps(text)))
        self.assertIn(ROUTE, self.s2.applier.peers[self.r1.id]["AllowedIPs"])

    def test_failover_after_grace(self):
        """When the primary goes offline, the route moves to the other router after the grace."""
        self.s1.session.connection_lost()
        self.h.clock.advance(5)
        self.assertEqual(self.routed_by(), [self.r1.id])
        self.h.clock.advance(6)
        self.assertEqual(self.routed_by(), [self.r2.id])
        self.assertEqual(self.s2.applier.node["PrimaryRoutes"], [ROUTE])
        self.assertFalse(self.sc.applier.peers[self.r1.id]["Online"])

    def test_sticky_on_return(self):
        """A returning former primary does not take the route back."""
        self.s1.session.connection_lost()
        self.h.clock.advance(11)
        self.h.stream(self.h.state.get(self.r1.id))
        self.assertEqual(self.routed_by(), [self.r2.id])

    def test_reconnect_inside_grace(self):
        """A reconnect inside the grace keeps the primary and sends no route change."""
        self.s1.session.connection_lost()
        self.h.clock.advance(3)
        before = len(self.sc.writes)
        self.h.stream(self.h.state.get(self.r1.id))
        self.h.clock.advance(20)
        self.assertEqual(self.routed_by(), [self.r1.id])
        self.assertEqual(len([w for w in self.sc.writes[before:] if len(w) > 10]), 0)

    def test_delete_primary(self):
        """Deleting the primary fails its route over at once."""
        self.h.run(self.h.admin.delete(self.r1.id))
        self.assertEqual(self.routed_by(), [self.r2.id])
