"""Tests for map sessions and the notifier: deltas, keep-alives, online state, work done."""

from datetime import timedelta

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.control.framing import KEEPALIVE_FRAME, FramedMessage
from headscale_tw.interfaces import INodeNotifier, IPollService
from tests.control._harness import Harness


class DeltaTests(unittest.TestCase):
    """Changes reach streaming peers as deltas a client applies correctly."""

    def setUp(self):
        self.h = Harness(self)
        self.a, _ = self.h.register("a")
        self.b, _ = self.h.register("b")
        self.sa = self.h.stream(self.a)
        self.sb = self.h.stream(self.b)
        self.a = self.h.state.get(self.a.id)

    def test_provides_interface(self):
        """MapNotifier provides INodeNotifier."""
        verifyObject(INodeNotifier, self.h.notifier)

    def test_poll_provides_interface(self):
        """PollService provides IPollService."""
        verifyObject(IPollService, self.h.poll)

    def test_unbatched_changes_leave_nothing_held(self):
        """With ``batch_delay`` 0 a change is sent at once: nothing stays held and no flush timer waits."""
        before = len(self.sb.writes)
        self.h.lite(self.a, Endpoints=["192.0.2.9:41641"])
        self.h.register("c")
        self.assertEqual((self.h.notifier.held, self.h.notifier._flush_timer), (0, None))
        self.assertEqual(len(self.sb.writes), before + 2)

    def test_endpoint_change_patch(self):
        """A lite update with new endpoints reaches peers as PeersChangedPatch."""
        self.h.lite(self.a, Endpoints=["192.0.2.1:41641"])
        last = self.sb.applier.messages[-1]
        self.assertEqual(last, {"PeersChangedPatch": [{"NodeID": self.a.id, "Endpoints": ["192.0.2.1:41641"]}]})
        self.assertEqual(self.sb.applier.peers[self.a.id]["Endpoints"], ["192.0.2.1:41641"])

    def test_derp_home_patch(self):
        """A new PreferredDERP is patched as DERPRegion → HomeDERP."""
        hostinfo = dict(self.a.hostinfo, NetInfo={"PreferredDERP": 999})
        self.h.lite(self.a, Hostinfo=hostinfo)
        self.assertEqual(self.sb.applier.peers[self.a.id]["HomeDERP"], 999)

    def test_hostinfo_change_full(self):
        """A Hostinfo change other than NetInfo sends the full entry, and renames an auto name."""
        hostinfo = dict(self.a.hostinfo, Hostname="renamed")
        self.h.lite(self.a, Hostinfo=hostinfo)
        peer = self.sb.applier.peers[self.a.id]
        self.assertEqual(peer["Hostinfo"]["Hostname"], "renamed")
        self.assertEqual(peer["Name"], "renamed.tail.example.")
        self.assertEqual(self.sa.applier.node["Name"], "renamed.tail.example.")

    def test_netinfo_only_is_quiet(self):
        """A change only in NetInfo latency is stored but sends nothing."""
        before = len(self.sb.writes)
        hostinfo = dict(self.a.hostinfo, NetInfo={"DERPLatency": {"999-v4": 0.01}})
        self.h.lite(self.a, Hostinfo=hostinfo)
        self.assertEqual(len(self.sb.writes), before)
        self.assertEqual(self.h.state.get(self.a.id).hostinfo["NetInfo"], {"DERPLatency": {"999-v4": 0.01}})

    def test_new_node(self):
        """A new node appears in PeersChanged with its owner's profile."""
        c, _ = self.h.register("c")
        self.assertIn(c.id, self.sa.applier.peers)
        self.assertIn(c.id, self.sb.applier.peers)
        self.assertIn(self.h.user.id, self.sa.applier.user_profiles)

    def test_delete(self):
        """Deleting a node sends PeersRemoved and ends its own stream."""
        self.h.run(self.h.admin.delete(self.b.id))
        self.assertNotIn(self.b.id, self.sa.applier.peers)
        self.assertTrue(self.sb.finished)
        self.assertEqual(self.sa.applier.messages[-1], {"PeersRemoved": [self.b.id]})

    def test_rename(self):
        """An admin rename reaches peers and the node itself."""
        self.h.run(self.h.admin.rename(self.a.id, "web"))
        self.assertEqual(self.sb.applier.peers[self.a.id]["Name"], "web.tail.example.")
        self.assertEqual(self.sa.applier.node["Name"], "web.tail.example.")

    def test_expire(self):
        """An admin expiry marks the node Expired for peers."""
        self.h.run(self.h.admin.expire(self.a.id))
        self.assertTrue(self.sb.applier.peers[self.a.id]["Expired"])
        self.assertTrue(self.sa.applier.node["Expired"])

    def test_tags(self):
        """Tagging moves the node to the tagged-devices user for peers."""
        self.h.run(self.h.admin.set_tags(self.a.id, ["tag:web"]))
        self.assertEqual(self.sb.applier.peers[self.a.id]["Tags"], ["tag:web"])

    def test_policy_changed(self):
        """A policy change resends a full map to every session."""
        self.h.notifier.policy_changed()
        self.assertEqual(self.sa.applier.messages[-1]["Node"]["ID"], self.a.id)
        self.assertIn(self.b.id, self.sa.applier.peers)

    def test_key_expiry_sweep(self):
        """The expiry sweep announces a node once when its expiry passes."""
        self.h.run(self.h.state.update_node(self.a.id, expiry=self.h.now() + timedelta(seconds=30)))
        self.assertEqual(self.h.run(self.h.lifecycle.expire_due()), [])
        self.h.clock.advance(31)
        self.assertEqual(self.h.run(self.h.lifecycle.expire_due()), [self.a.id])
        self.assertTrue(self.sb.applier.peers[self.a.id]["Expired"])
        self.assertEqual(self.h.run(self.h.lifecycle.expire_due()), [])


class SlowReaderTests(unittest.TestCase):
    """A client that stops reading its map stream is aborted, not buffered for without bound."""

    def setUp(self):
        self.h = Harness(self, grace=10.0)
        self.a, _ = self.h.register("a")
        self.b, _ = self.h.register("b")
        self.sa = self.h.stream(self.a)
        self.unsent = 0
        self.aborted = []
        self.writes = []
        self.session = self.h.notifier.open_stream(
            self.b.id, self.writes.append, lambda: self.fail("finished instead of aborted"),
            unsent=lambda: self.unsent, abort=lambda: self.aborted.append(True),
        )

    def test_reading_client_is_kept(self):
        """Below the limit every delta is written and the stream stays open."""
        self.unsent = 1 << 20
        before = len(self.writes)
        self.h.lite(self.h.state.get(self.a.id), Endpoints=["192.0.2.1:1"])
        self.h.notifier.flush()
        self.assertEqual(len(self.writes), before + 1)
        self.assertEqual((self.aborted, self.session.state), ([], "streaming"))
        self.assertIn(self.b.id, self.h.notifier.sessions)

    def test_stalled_client_is_aborted(self):
        """Over the limit the stream is aborted and forgotten; other streams carry on."""
        from headscale_tw.control.sessions import MAX_UNSENT_BYTES

        self.unsent = MAX_UNSENT_BYTES + 1
        before_a = len(self.sa.writes)
        self.h.lite(self.h.state.get(self.a.id), Endpoints=["192.0.2.1:1"])
        self.h.notifier.flush()
        self.h.register("c")
        self.h.notifier.flush()
        self.assertEqual((self.aborted, self.session.state), ([True], "closed"))
        self.assertNotIn(self.b.id, self.h.notifier.sessions)
        self.assertGreater(len(self.sa.writes), before_a)  # a still gets c's join
        self.assertIsNone(self.session._timer)  # its keep-alive timer is cancelled


class StreamTests(unittest.TestCase):
    """Keep-alives, lite updates, concurrent streams, online state."""

    def setUp(self):
        self.h = Harness(self, grace=10.0)
        self.a, _ = self.h.register("a")
        self.b, _ = self.h.register("b")
        self.sb = self.h.stream(self.b)

    def test_keepalives(self):
        """An idle stream gets a keep-alive every interval and none after closing."""
        self.h.clock.advance(55)
        self.assertEqual(self.sb.writes[-1], KEEPALIVE_FRAME)
        self.h.clock.advance(55)
        self.assertEqual(self.sb.applier.keepalives, 2)
        self.sb.session.connection_lost()
        self.h.clock.advance(10)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_activity_postpones_keepalive(self):
        """A delta pushes the next keep-alive back."""
        self.h.clock.advance(50)
        self.h.register("c")
        self.h.clock.advance(10)
        self.assertEqual(self.sb.applier.keepalives, 0)

    def test_writes_leave_timers_alone(self):
        """Deltas do not reschedule the keep-alive timer (a reset is a linear search of the timer heap)."""
        session = self.sb.session
        self.h.clock.advance(30)
        timer, due = session._timer, session._timer.getTime()
        for _ in range(20):
            session.send(FramedMessage(b"{}"))
        self.assertIs(session._timer, timer)
        self.assertEqual(timer.getTime(), due)
        self.h.clock.advance(due - self.h.clock.seconds())  # the old deadline: too early now
        self.assertEqual(self.sb.applier.keepalives, 0)
        self.h.clock.advance(session._gap)
        self.assertEqual(self.sb.writes[-1], KEEPALIVE_FRAME)

    def test_lite_does_not_disturb(self):
        """A lite update of the streaming node writes nothing to its stream and keeps it open."""
        before = len(self.sb.writes)
        self.h.lite(self.h.state.get(self.b.id), Endpoints=["192.0.2.1:1"])
        self.assertEqual(len(self.sb.writes), before)
        self.assertFalse(self.sb.finished)

    def test_newest_stream_wins(self):
        """A second stream of one node finishes the first; peers see no offline flap."""
        sa = self.h.stream(self.a)
        before = len(sa.writes)
        second = self.h.stream(self.h.state.get(self.b.id))
        self.assertTrue(self.sb.finished)
        self.assertFalse(second.finished)
        self.h.clock.advance(30)
        self.assertEqual([m for m in sa.applier.messages[before:] if not m.get("KeepAlive")], [])

    def test_online_grace(self):
        """Peers hear about a disconnect only after the grace period, with LastSeen."""
        sa = self.h.stream(self.a)
        self.assertTrue(self.sb.applier.peers[self.a.id]["Online"])
        sa.session.connection_lost()
        self.h.clock.advance(9)
        self.assertTrue(self.sb.applier.peers[self.a.id]["Online"])
        self.h.clock.advance(1)
        self.assertFalse(self.sb.applier.peers[self.a.id]["Online"])
        self.assertIn("LastSeen", self.sb.applier.peers[self.a.id])
        self.assertEqual(self.h.state.get(self.a.id).last_seen, self.h.now())

    def test_quick_reconnect_silent(self):
        """A reconnect inside the grace period sends peers nothing."""
        sa = self.h.stream(self.a)
        before = len(self.sb.writes)
        sa.session.connection_lost()
        self.h.clock.advance(5)
        self.h.stream(self.h.state.get(self.a.id))
        self.h.clock.advance(20)
        self.assertEqual(len(self.sb.writes), before)

    def test_stop(self):
        """Stopping the notifier closes every stream and leaves no timers."""
        self.h.notifier.stop()
        self.assertTrue(self.sb.finished)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])


class WorkTests(unittest.TestCase):
    """A change costs work proportional to the affected nodes, not N²."""

    N = 30

    def setUp(self):
        self.h = Harness(self)
        self.nodes = [self.h.register(f"n{i}")[0] for i in range(self.N)]
        self.streams = [self.h.stream(n) for n in self.nodes]
        for node in self.nodes:  # entries are serialized lazily; warm them like any later full map would
            self.h.mapper.peer_entry(node.id)
        self.h.mapper.serializations.clear()
        self.h.notifier.frames_built = 0
        self.counts = [len(s.writes) for s in self.streams]

    def _new_writes(self):
        return [len(s.writes) - c for s, c in zip(self.streams, self.counts)]

    def test_endpoint_change(self):
        """One endpoint change: one frame built, no entry re-serialized, one message per peer."""
        self.h.lite(self.h.state.get(self.nodes[0].id), Endpoints=["192.0.2.9:41641"])
        self.assertEqual(self.h.notifier.frames_built, 1)
        self.assertLessEqual(sum(self.h.mapper.serializations.values()), 1)
        self.assertEqual(self._new_writes(), [0] + [1] * (self.N - 1))
        for stream in self.streams[1:]:
            self.assertEqual(stream.applier.peers[self.nodes[0].id]["Endpoints"], ["192.0.2.9:41641"])

    def test_full_change(self):
        """One Hostinfo change: that node's entry serialized once, shared by every peer."""
        node = self.h.state.get(self.nodes[0].id)
        self.h.lite(node, Hostinfo=dict(node.hostinfo, OSVersion="7.0"))
        self.assertEqual(dict(self.h.mapper.serializations), {node.id: 1})
        self.assertEqual(self.h.notifier.frames_built, 1)

    def test_new_node_reuses_cache(self):
        """A joining node's full map reuses every cached peer entry."""
        new, _ = self.h.register("late")
        self.h.stream(new)
        self.assertEqual(set(self.h.mapper.serializations), {new.id})
        self.assertEqual(self.h.mapper.serializations[new.id], 1)
