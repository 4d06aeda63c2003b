# -*- test-case-name: tests.control.test_slices -*-
"""
Long loops run a slice per reactor turn (issue 10, item 1: no request holds the reactor).
"""

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from headscale_tw.control import routes as route_module
from headscale_tw.control.poll import PollService, parse_map_request
from headscale_tw.control.slices import SLICE, in_slices
from tests.control._harness import Harness
from tests.control._workcount import routes


class TurnClock:
    """A reactor's timed calls, one turn at a time: a call added during a turn runs in the next one,
    as in a real reactor (``Clock.advance(0)`` would run them all at once)."""

    def __init__(self) -> None:
        self.pending: list[DelayedCall] = []

    def seconds(self) -> float:
        return 0.0

    def callLater(self, delay, f, *args, **kw) -> DelayedCall:
        call = DelayedCall(0.0, f, args, kw, self.pending.remove, lambda c: None, self.seconds)
        self.pending.append(call)
        return call

    def turn(self) -> None:
        current, self.pending = self.pending, []
        for call in current:
            call.called = 1
            call.func(*call.args, **call.kw)


class InSlicesTests(unittest.TestCase):
    """in_slices does at most one slice per reactor turn."""

    def test_slices_per_turn(self):
        """1,000 items in slices of 128: 128 now, 128 more per turn, 8 slices and 7 yields in all."""
        clock = TurnClock()
        done: list[int] = []
        d = Deferred.fromCoroutine(in_slices(list(range(1000)), done.append, clock, size=128))
        seen = [len(done)]
        while not d.called:
            clock.turn()
            seen.append(len(done))
        self.assertEqual(seen, [128, 256, 384, 512, 640, 768, 896, 1000])
        self.assertEqual(self.successResultOf(d), 7)

    def test_without_clock(self):
        """Without a clock everything runs in the call (domain tests run synchronously)."""
        done: list[int] = []
        d = Deferred.fromCoroutine(in_slices(list(range(300)), done.append, None))
        self.assertEqual((self.successResultOf(d), len(done)), (0, 300))


class RouteParsingSliceTests(unittest.TestCase):
    """A map request announcing many routes parses them a slice per reactor turn."""

    def test_announcement_parsed_in_slices(self):
        """1,024 new routes: at most SLICE parsed per turn, and the node is updated once all are."""
        route_module.clear_parse_caches()
        self.addCleanup(route_module.clear_parse_caches)
        h = Harness(self)
        node, _ = h.register("router")
        clock = TurnClock()
        poll = PollService(h.state, h.notifier, h.policy, clock=clock)
        announced = routes(1024)
        request = parse_map_request(h.map_request(node, OmitPeers=True, Hostinfo={
            "Hostname": "router", "OS": "linux", "RoutableIPs": announced}))
        d = Deferred.fromCoroutine(poll.apply(node, request))
        parsed = [route_module._parse_network.cache_info().currsize]
        while not d.called:
            clock.turn()
            parsed.append(route_module._parse_network.cache_info().currsize)
        steps = [b - a for a, b in zip(parsed, parsed[1:])]
        self.assertLessEqual(max([parsed[0], *steps]), SLICE)
        self.assertEqual(poll.parse_turns, 1024 // SLICE - 1)
        self.assertEqual(self.successResultOf(d).hostinfo["RoutableIPs"], announced)
        # the same list again is not parsed again
        again = parse_map_request(h.map_request(h.state.get(node.id), OmitPeers=True,
                                                Hostinfo={"Hostname": "router", "OS": "linux",
                                                          "RoutableIPs": announced, "OSVersion": "2"}))
        d = Deferred.fromCoroutine(poll.apply(h.state.get(node.id), again))
        self.successResultOf(d)
        self.assertEqual(poll.parse_turns, 1024 // SLICE - 1)


    def test_changes_between_slices_seen(self):
        """What changed while the routes were parsed is the starting point: the reported hostname still lands."""
        route_module.clear_parse_caches()
        self.addCleanup(route_module.clear_parse_caches)
        h = Harness(self)
        node, _ = h.register("router")
        clock = TurnClock()
        poll = PollService(h.state, h.notifier, h.policy, clock=clock)
        request = parse_map_request(h.map_request(node, OmitPeers=True, Hostinfo={
            "Hostname": "router", "OS": "linux", "RoutableIPs": routes(1024)}))
        d = Deferred.fromCoroutine(poll.apply(node, request))
        h.run(h.state.update_node(node.id, hostname="renamed-meanwhile"))
        while not d.called:
            clock.turn()
        self.assertEqual(self.successResultOf(d).hostname, "router")
        self.assertEqual(h.state.get(node.id).hostname, "router")


class ApprovalSliceTests(unittest.TestCase):
    """An admin approving many routes: parsed a slice per reactor turn, then stored once."""

    def test_approval_parsed_in_slices(self):
        """1,024 routes through NodeAdmin.approve_routes: at most SLICE parsed per turn, stored after the last."""
        from headscale_tw.control.nodes import NodeAdmin

        route_module.clear_parse_caches()
        self.addCleanup(route_module.clear_parse_caches)
        h = Harness(self)
        node, _ = h.register("router")
        clock = TurnClock()
        admin = NodeAdmin(h.state, h.notifier, h.registrar, h.admin.users, h.db.preauthkeys, clock=clock,
                          policy=h.policy)
        approved = routes(1024)
        d = Deferred.fromCoroutine(admin.approve_routes(node.id, approved))
        parsed = [route_module._parse_network.cache_info().currsize]
        while not d.called:
            self.assertEqual(h.state.get(node.id).approved_routes, ())
            clock.turn()
            parsed.append(route_module._parse_network.cache_info().currsize)
        steps = [b - a for a, b in zip(parsed, parsed[1:])]
        self.assertLessEqual(max([parsed[0], *steps]), SLICE)
        self.assertEqual(len(self.successResultOf(d).approved_routes), 1024)
