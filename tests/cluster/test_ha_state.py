"""
Nothing in one instance's memory (issue #16, item 2): online state, HA route
primaries and the lifecycle jobs across two or three control planes on one
PostgreSQL database, joined by real LISTEN/NOTIFY change feeds.

Each instance's registry, leases and control plane run on its own Clock
(``Member.advance``); a *killed* instance stops its feed and its clock is never
advanced again, so it sends nothing, beats no more and leaves its rows behind,
as a ``kill -9`` would. Every wait is bounded.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from headscale_tw.config.model import Config, DNSConfig, NodeConfig
from headscale_tw.control.audit import AuditLog
from headscale_tw.control.instances import HEARTBEAT_INTERVAL, HEARTBEAT_LIFETIME
from headscale_tw.control.lifecycle import NodeLifecycle
from headscale_tw.testing.db import create_postgres_database, resolve
from tests.cluster._cluster import Member, wait_until

ROUTE = "10.33.0.0/16"
#: Seconds after which every survivor has seen a killed instance's heartbeat run out.
NOTICED = int(HEARTBEAT_LIFETIME + HEARTBEAT_INTERVAL + 1)


def together(seconds, *members):
    """Move the members' clocks on in step, one second at a time."""
    for _ in range(seconds):
        for member in members:
            member.advance(1)


def online_in(stream, node_id):
    """What ``stream``'s netmap says of ``node_id``'s ``Online`` (``None``: not said)."""
    return stream.applier.peers.get(node_id, {}).get("Online")


class _Cluster(TestCase):
    timeout = 60

    def setUp(self):
        self.db_config = create_postgres_database(self)

    def members(self, count, **kw):
        members = [Member(self, self.db_config, **kw) for _ in range(count)]
        return members, DeferredList([m.start() for m in members], fireOnOneErrback=True, consumeErrors=True)

    @inlineCallbacks
    def known_everywhere(self, node, *members):
        for member in members:
            yield wait_until(member.sync, lambda m=member: node.id in m.h.state.nodes)


class OnlineStateTests(_Cluster):
    """Online state lives in ``node_sessions``: it survives an instance's death and reaches newcomers."""

    @inlineCallbacks
    def test_death_of_an_instance_marks_its_nodes_offline(self):
        """When A dies with x streaming on it, B and C list x offline once A's heartbeat runs out, and A's rows go."""
        (a, b, c), started = self.members(3)
        yield started
        x, _ = a.h.register("xray")
        y, _ = b.h.register("yankee")
        yield self.known_everywhere(x, b, c)
        yield self.known_everywhere(y, c)
        a.h.stream(x)
        on_b = b.h.stream(b.h.state.get(y.id))
        on_c = c.h.stream(c.h.state.get(y.id))
        yield wait_until(b.sync, lambda: online_in(on_b, x.id) is True)
        yield wait_until(c.sync, lambda: online_in(on_c, x.id) is True)
        a.kill()
        b.advance(HEARTBEAT_LIFETIME - 1)
        self.assertIs(online_in(on_b, x.id), True)  # A's heartbeat has not run out yet
        b.advance(NOTICED - HEARTBEAT_LIFETIME + 1)
        c.advance(NOTICED)
        self.assertIs(online_in(on_b, x.id), False)
        self.assertIs(online_in(on_c, x.id), False)
        self.assertFalse(b.h.state.runtime[x.id].online)
        # A's row is gone; the instance whose delete took it stored x's last_seen (once).
        self.assertEqual(set(resolve(b.raw.node_sessions.online(b.h.now()))), {y.id})
        noticed = b.h.now() - timedelta(seconds=NOTICED - HEARTBEAT_LIFETIME)  # B's round that saw A gone
        self.assertEqual(resolve(b.raw.nodes.get(x.id)).last_seen, noticed)

    @inlineCallbacks
    def test_clean_stop_marks_nodes_offline_at_the_next_round(self):
        """A's clean stop removes its instance row: B lists A's nodes offline at its next heartbeat round."""
        (a, b), started = self.members(2)
        yield started
        x, _ = a.h.register("xray")
        y, _ = b.h.register("yankee")
        yield self.known_everywhere(x, b)
        a.h.stream(x)
        on_b = b.h.stream(b.h.state.get(y.id))
        yield wait_until(b.sync, lambda: online_in(on_b, x.id) is True)
        a.kill()
        yield a.registry.stopService()
        b.advance(HEARTBEAT_INTERVAL)
        self.assertIs(online_in(on_b, x.id), False)

    @inlineCallbacks
    def test_new_instance_reads_the_online_set(self):
        """An instance started after x came online on A lists x online (not unknown), ranked as on A."""
        (a, b), started = self.members(2)
        yield started
        x, _ = a.h.register("xray")
        y, _ = a.h.register("yankee")
        a.h.stream(x)
        c = Member(self, self.db_config)
        yield c.start()
        self.assertIs(c.h.state.runtime[x.id].online, True)
        self.assertTrue(c.h.state.runtime[x.id].elsewhere)
        self.assertEqual(c.h.state.runtime[x.id].online_since, a.h.state.runtime[x.id].online_since)
        self.assertIs(c.h.state.runtime[y.id].online, False)
        on_c = c.h.stream(c.h.state.get(y.id))
        self.assertIs(online_in(on_c, x.id), True)

    @inlineCallbacks
    def test_node_moving_to_another_instance_stays_online(self):
        """x leaves A and reconnects to B within A's grace: A drops its row, and nobody sees x offline."""
        (a, b), started = self.members(2)
        yield started
        x, _ = a.h.register("xray")
        y, _ = a.h.register("yankee")
        yield self.known_everywhere(y, b)
        on_a = a.h.stream(a.h.state.get(y.id))
        first = a.h.stream(x)
        yield wait_until(b.sync, lambda: b.h.state.runtime[x.id].online is True)
        since = a.h.state.runtime[x.id].online_since
        first.session.close()
        b.h.stream(b.h.state.get(x.id))
        yield wait_until(a.sync, lambda: not a.h.presence.holds(x.id))
        together(11, a, b)  # past A's offline grace
        self.assertIs(online_in(on_a, x.id), True)
        self.assertTrue(a.h.state.runtime[x.id].elsewhere)
        rows = resolve(a.raw.node_sessions.online(b.h.now()))
        self.assertEqual(rows[x.id], {b.id: since})  # B wrote the online_since it knew
        self.assertEqual(b.h.state.runtime[x.id].online_since, since)

    @inlineCallbacks
    def test_offline_crosses_after_grace(self):
        """x's stream on A ends; after A's grace its row goes and B lists x offline."""
        (a, b), started = self.members(2)
        yield started
        x, _ = a.h.register("xray")
        y, _ = b.h.register("yankee")
        yield self.known_everywhere(x, b)
        on_b = b.h.stream(b.h.state.get(y.id))
        stream = a.h.stream(x)
        yield wait_until(b.sync, lambda: online_in(on_b, x.id) is True)
        stream.session.close()
        together(11, a, b)
        yield wait_until(b.sync, lambda: online_in(on_b, x.id) is False)
        self.assertEqual(set(resolve(b.raw.node_sessions.online(b.h.now()))), {y.id})


class RoutePrimaryTests(_Cluster):
    """Every instance elects the same HA primary, from the shared online set and when each router came online."""

    def register_router(self, member, name):
        node, _ = member.h.register(name, Hostinfo={"Hostname": name, "OS": "linux", "RoutableIPs": [ROUTE]})
        member.h.run(member.h.admin.approve_routes(node.id, [ROUTE]))
        return node

    def primary(self, member, node):
        return member.h.policy.primary_routes(node.id)

    @inlineCallbacks
    def test_same_primary_everywhere_and_after_failover(self):
        """r2 came online first (on B), r1 later (on A): A, B and a late C all elect r2; B's death fails over to r1."""
        (a, b), started = self.members(2)
        yield started
        r1 = self.register_router(a, "router1")  # the lower id: the old rule's choice on a fresh instance
        r2 = self.register_router(a, "router2")
        for member in (a, b):
            for router in (r1, r2):
                yield wait_until(member.sync, lambda m=member, r=router: r.id in m.h.state.nodes
                                 and m.h.state.get(r.id).approved_routes == (ROUTE,))
        b.h.stream(b.h.state.get(r2.id))
        yield wait_until(a.sync, lambda: self.primary(a, r2) == (ROUTE,))
        a.advance(5)
        a.h.stream(r1)
        yield wait_until(b.sync, lambda: b.h.state.runtime[r1.id].online is True)
        c = Member(self, self.db_config)
        c.advance(5)
        yield c.start()
        for member in (a, b, c):
            self.assertEqual((self.primary(member, r1), self.primary(member, r2)), ((), (ROUTE,)))
        b.kill()
        a.advance(NOTICED)
        c.advance(NOTICED)
        for member in (a, c):
            self.assertEqual((self.primary(member, r1), self.primary(member, r2)), ((ROUTE,), ()))


class LifecycleLeaseTests(_Cluster):
    """Each lifecycle job is done by the one instance holding its lease; its audit rows are written once."""

    def lifecycle(self, member):
        audit = AuditLog(member.raw.audit, member.h.now, instance=member.id)
        return NodeLifecycle(member.h.state, member.h.notifier, member.h.registrar, member.h.config, audit=audit,
                             lease_for=lambda name: member.keepers[name].lease)

    @inlineCallbacks
    def test_expiry_recorded_once(self):
        """Both instances tell their own streams of an expiry; only the lease holder records node.expired."""
        (a, b), started = self.members(2, leases=True)
        yield started
        x, _ = a.h.register("xray")
        a.h.run(a.h.state.update_node(x.id, expiry=a.h.now()))
        yield wait_until(b.sync, lambda: x.id in b.h.state.nodes and b.h.state.get(x.id).expiry is not None)
        self.assertEqual(yield_all(self.lifecycle(a).expire_due(), self.lifecycle(b).expire_due()),
                         [[x.id], [x.id]])
        rows = resolve(a.raw.audit.list(action="node.expired"))
        self.assertEqual([(row.target_id, row.instance) for row in rows], [(str(x.id), a.id)])

    @inlineCallbacks
    def test_ephemeral_node_collected_by_the_holder_only(self):
        """An idle ephemeral node is deleted by the lease holder; the other instance leaves it alone."""
        config = Config(server_url="https://hs.example.com", dns=DNSConfig(base_domain="tail.example"),
                        node=replace(NodeConfig(), ephemeral_inactivity_timeout=5.0))
        (a, b), started = self.members(2, leases=True, config=config)
        yield started
        a.h.make_key("eph", reusable=True, ephemeral=True)
        e, _ = a.h.register("temp", auth="eph")
        yield wait_until(b.sync, lambda: e.id in b.h.state.nodes)
        gc_a, gc_b = self.lifecycle(a), self.lifecycle(b)
        together(6, a, b)
        self.assertEqual(resolve(gc_b.collect_ephemeral()), [])
        self.assertEqual(resolve(gc_a.collect_ephemeral()), [e.id])
        yield wait_until(b.sync, lambda: e.id not in b.h.state.nodes)
        rows = resolve(a.raw.audit.list(action="node.delete"))
        self.assertEqual([row.instance for row in rows], [a.id])

    @inlineCallbacks
    def test_survivor_takes_the_jobs_over(self):
        """When the holder dies, the other instance takes the lease over and records the next expiry."""
        (a, b), started = self.members(2, leases=True)
        yield started
        x, _ = a.h.register("xray")
        yield wait_until(b.sync, lambda: x.id in b.h.state.nodes)
        a.kill()
        b.advance(45)  # past the lease's 30 s, plus one attempt interval
        self.assertIsNotNone(b.keepers["lifecycle:node-expiry"].lease)
        b.h.run(b.h.state.update_node(x.id, expiry=b.h.now()))
        self.assertEqual(resolve(self.lifecycle(b).expire_due()), [x.id])
        rows = resolve(b.raw.audit.list(action="node.expired"))
        self.assertEqual([row.instance for row in rows], [b.id])


def yield_all(*coroutines):
    """Run coroutines that complete at once (the threadless database) and return their results."""
    return [resolve(c) for c in coroutines]
