"""
Delta batching (``MapNotifier(batch_delay=...)``): merged deltas leave every
client with the same netmap as unbatched ones, with fewer frames.
"""

from __future__ import annotations

import json
import random

from twisted.trial import unittest

from headscale_tw.testing.netmap import NetmapApplier
from tests.control._harness import Harness

TAGS = 3


def _policy() -> str:
    return json.dumps({
        "tagOwners": {f"tag:g{g}": ["alice@"] for g in range(TAGS)},
        "acls": [{"action": "accept", "src": [f"tag:g{g}"], "dst": [f"tag:g{g}:*"]} for g in range(TAGS)]
        + [{"action": "accept", "src": ["tag:g0"], "dst": ["tag:g1:22"]}],
    })


def _view(applier: NetmapApplier) -> dict:
    """
    A client's peers and filter (its own Node is not re-sent for its own
    endpoint changes, with or without batching), without seen times, online
    flags, DiscoKey (a node that starts streaming later is not re-announced
    with its disco key even without batching: a known gap, not batching's).
    """
    peers = {}
    for pid, peer in applier.peers.items():
        peers[pid] = {k: v for k, v in peer.items() if k not in ("LastSeen", "Online", "DiscoKey")}
    return {"peers": peers, "filter": applier.fields.get("PacketFilter")}


class BatchingTests(unittest.TestCase):
    """Random change sequences with and without batching."""

    def _scenario(self, seed: int, delay: float, policy: str | None):
        rng = random.Random(seed)
        h = Harness(self, policy=policy)
        h.notifier.batch_delay = delay

        def register(i):
            extra = {}
            if policy:
                extra["Hostinfo"] = {"Hostname": f"n{i}", "OS": "linux", "RequestTags": [f"tag:g{rng.randrange(TAGS)}"]}
            node, response = h.register(f"n{i}", **extra)
            self.assertNotIn("Error", response)
            return node

        live = {}
        for i in range(6):
            node = register(i)
            live[node.id] = h.stream(node)
        counter = 6
        for _ in range(40):
            op = rng.choice(["join", "join", "endpoint", "delete", "tick", "stream"])
            if op == "join":
                node = register(counter)
                counter += 1
                if rng.random() < 0.5:
                    live[node.id] = h.stream(node)
            elif op == "endpoint" and live:
                nid = rng.choice(sorted(live))
                h.lite(h.state.get(nid), Endpoints=[f"192.0.2.{rng.randrange(1, 250)}:41641"])
            elif op == "delete" and len(h.state.nodes) > 2:
                nid = rng.choice(sorted(h.state.nodes))
                h.run(h.admin.delete(nid))
                live.pop(nid, None)
            elif op == "stream":
                candidates = sorted(set(h.state.nodes) - set(live))
                if candidates:
                    nid = rng.choice(candidates)
                    live[nid] = h.stream(h.state.get(nid))
            else:
                h.clock.advance(rng.choice([0.001, 0.004, 0.02]))
        h.clock.advance(1.0)
        self.assertFalse(h.notifier._pending)
        views = {}
        for nid, stream in live.items():
            fresh = NetmapApplier()
            fresh.feed(h.notifier.one_shot(nid))
            a, b = _view(stream.applier), _view(fresh)
            self.assertEqual(a, b, f"node {nid} (delay {delay})")
            views[nid] = len(stream.writes)
        h.notifier.stop()
        return views

    def test_same_netmaps_fewer_frames(self):
        """With batching every stream ends at its full map, as without, and receives no more frames."""
        for policy in (None, _policy()):
            for seed in range(8):
                plain = self._scenario(seed, 0.0, policy)
                batched = self._scenario(seed, 0.005, policy)
                self.assertEqual(set(plain), set(batched))
                self.assertLessEqual(sum(batched.values()), sum(plain.values()))

    def test_flush_on_timer(self):
        """Held deltas go out when the timer fires, merged into one message per stream."""
        h = Harness(self)
        h.notifier.batch_delay = 0.005
        first, _ = h.register("first")
        stream = h.stream(first)
        before = len(stream.writes)
        for i in range(5):
            h.register(f"n{i}")
        self.assertEqual(len(stream.writes), before)
        h.clock.advance(0.005)
        self.assertEqual(len(stream.writes), before + 1)
        self.assertEqual(len(stream.applier.messages[-1]["PeersChanged"]), 5)
        h.notifier.stop()

    def test_login_reaches_peers_in_one_frame(self):
        """A node registering, streaming and sending endpoints within a window: one frame per peer stream."""
        h = Harness(self)
        h.notifier.batch_delay = 0.005
        first, _ = h.register("first")
        stream = h.stream(first)
        h.clock.advance(0.005)
        before = len(stream.writes)
        node, _ = h.register("new")
        new_stream = h.stream(node)  # comes online: OnlineChange
        h.lite(h.state.get(node.id), Endpoints=["192.0.2.7:41641"])  # PeersChangedPatch
        h.clock.advance(0.005)
        self.assertEqual(len(stream.writes), before + 1)
        peer = stream.applier.peers[node.id]
        self.assertEqual((peer["Endpoints"], peer["Online"]), (["192.0.2.7:41641"], True))
        new_stream.session.connection_lost()
        h.clock.advance(h.notifier.offline_grace)
        h.lite(h.state.get(first.id), Endpoints=["192.0.2.8:41641"])  # a patch for nobody streaming
        h.clock.advance(0.005)
        self.assertEqual(len(stream.writes), before + 2)
        self.assertEqual(stream.applier.messages[-1]["OnlineChange"], {str(node.id): False})
        self.assertEqual(stream.applier.messages[-1]["PeerSeenChange"], {str(node.id): True})
        self.assertFalse(stream.applier.peers[node.id]["Online"])
        h.notifier.stop()

    def test_patches_follow_the_last_state(self):
        """Two endpoint updates within a window reach a peer as one patch carrying the latest endpoints."""
        h = Harness(self)
        h.notifier.batch_delay = 0.005
        a, _ = h.register("a")
        b, _ = h.register("b")
        sa, _ = h.stream(a), h.stream(b)
        h.clock.advance(0.005)
        before = len(sa.writes)
        h.lite(h.state.get(b.id), Endpoints=["192.0.2.1:1"])
        h.lite(h.state.get(b.id), Endpoints=["192.0.2.2:2"])
        h.clock.advance(0.005)
        self.assertEqual(len(sa.writes), before + 1)
        self.assertEqual(sa.applier.messages[-1]["PeersChangedPatch"],
                         [{"NodeID": b.id, "Endpoints": ["192.0.2.2:2"]}])
        h.notifier.stop()

    def test_added_then_removed(self):
        """A node added and deleted within one window is never announced: streams get nothing."""
        h = Harness(self)
        h.notifier.batch_delay = 0.005
        first, _ = h.register("first")
        stream = h.stream(first)
        before = len(stream.applier.messages)
        node, _ = h.register("brief")
        h.run(h.admin.delete(node.id))
        h.clock.advance(0.005)
        new = stream.applier.messages[before:]
        self.assertEqual(new, [])
        self.assertEqual(stream.applier.peers.keys(), set())
        h.notifier.stop()

    def test_burst_of_joins_is_one_policy_update(self):
        """Ten registrations within one window under a group policy: one policy update, one delta."""
        policy = json.dumps({
            "tagOwners": {"tag:g": ["alice@"]},
            "acls": [{"action": "accept", "src": ["tag:g"], "dst": ["tag:g:*"]}],
        })
        h = Harness(self, policy=policy)
        h.notifier.batch_delay = 0.005
        tagged = {"Hostinfo": {"Hostname": "first", "OS": "linux", "RequestTags": ["tag:g"]}}
        first, _ = h.register("first", **tagged)
        stream = h.stream(first)
        before, updates = len(stream.writes), h.notifier.policy_updates
        joined = []
        for i in range(10):
            tagged["Hostinfo"]["Hostname"] = f"n{i}"
            joined.append(h.register(f"n{i}", **tagged)[0].id)
        self.assertEqual(len(stream.writes), before)
        h.clock.advance(0.005)
        self.assertEqual(h.notifier.policy_updates - updates, 1)
        self.assertEqual(len(stream.writes), before + 1)
        self.assertEqual(sorted(stream.applier.peers), joined)
        h.notifier.stop()

    def test_news_before_a_stream_opened_is_in_its_full_map(self):
        """A stream opened after a peer's patch within a window gets no patch; later news of the peer reaches it."""
        h = Harness(self)
        h.notifier.batch_delay = 0.005
        a, _ = h.register("a")
        b, _ = h.register("b")
        sa = h.stream(a)
        h.clock.advance(0.005)
        h.lite(h.state.get(a.id), Endpoints=["192.0.2.1:1"])
        sb = h.stream(b)  # its full map has a's new endpoints
        self.assertEqual(sb.applier.peers[a.id]["Endpoints"], ["192.0.2.1:1"])
        before = len(sb.writes)
        h.clock.advance(0.005)
        self.assertEqual(len(sb.writes), before)
        self.assertEqual(sa.applier.peers[b.id]["Online"], True)  # a still hears b come online
        h.lite(h.state.get(a.id), Endpoints=["192.0.2.2:2"])
        h.clock.advance(0.005)
        self.assertEqual(sb.applier.messages[-1]["PeersChangedPatch"], [{"NodeID": a.id, "Endpoints": ["192.0.2.2:2"]}])
        h.notifier.stop()
