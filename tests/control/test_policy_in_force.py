"""Tests for headscale_tw.control.policy: policies in force, filters, visibility and deltas."""

import json

from twisted.trial import unittest

from headscale_tw.config.model import Config, DNSConfig, PolicyConfig
from headscale_tw.control.policy import PolicyRejected, PolicyUpdateRefused
from headscale_tw.policy.model import PolicyError
from tests.control._harness import Harness

TAG_OWNERS = {"tag:a": ["alice@"], "tag:b": ["alice@"], "tag:c": ["alice@"]}


def policy(acls, **extra):
    return json.dumps(dict({"tagOwners": TAG_OWNERS, "acls": acls}, **extra))


A_TO_B = policy([{"action": "accept", "src": ["tag:a"], "dst": ["tag:b:*"]}])


def addresses(node):
    return [f"{node.ipv4}/32", f"{node.ipv6}/128"]


class _Tailnet:
    """A, B and C tagged tag:a, tag:b, tag:c, all streaming."""

    def build(self, policy_text, extra=0):
        self.h = Harness(self, policy=policy_text)
        for tag in ("a", "b", "c"):
            self.h.make_key(tag, reusable=True, tags=(f"tag:{tag}",))
        self.a, _ = self.h.register("a", auth="a")
        self.b, _ = self.h.register("b", auth="b")
        self.c, _ = self.h.register("c", auth="c")
        self.sa = self.h.stream(self.a)
        self.sb = self.h.stream(self.b)
        self.sc = self.h.stream(self.c)

    def writes(self):
        return [len(s.writes) for s in (self.sa, self.sb, self.sc)]


class FilterTests(_Tailnet, unittest.TestCase):
    """A policy letting A reach B (and not B reach A) yields the right view on each node."""

    def setUp(self):
        self.build(A_TO_B)

    def test_filters(self):
        """B accepts from A's addresses; A and C accept nothing."""
        b_filter = self.sb.applier.packet_filter
        self.assertEqual(len(b_filter), 1)
        self.assertEqual(sorted(b_filter[0]["SrcIPs"]), sorted([self.a.ipv4, self.a.ipv6]))
        self.assertEqual({d["IP"] for d in b_filter[0]["DstPorts"]}, {self.b.ipv4, self.b.ipv6})
        self.assertEqual(self.sa.applier.packet_filter, [])
        self.assertEqual(self.sc.applier.packet_filter, [])

    def test_no_legacy_bits(self):
        """No rule carries SrcBits or Bits."""
        for rule in self.sb.applier.packet_filter:
            self.assertNotIn("SrcBits", rule)
            for dst in rule["DstPorts"]:
                self.assertNotIn("Bits", dst)

    def test_peers(self):
        """A and B see each other; C sees nobody and nobody sees C."""
        self.assertEqual(set(self.sa.applier.peers), {self.b.id})
        self.assertEqual(set(self.sb.applier.peers), {self.a.id})
        self.assertEqual(self.sc.applier.peers, {})

    def test_peer_allowed_ips(self):
        """A peer's AllowedIPs are its addresses."""
        self.assertEqual(self.sa.applier.peers[self.b.id]["AllowedIPs"], addresses(self.b))

    def test_endpoint_change_only_to_viewers(self):
        """A's endpoint patch reaches B (who sees A) and not C."""
        before = self.writes()
        self.h.lite(self.h.state.get(self.a.id), Endpoints=["192.0.2.1:41641"])
        self.assertEqual([x - y for x, y in zip(self.writes(), before)], [0, 1, 0])

    def test_no_recompile_for_hostinfo(self):
        """A Hostinfo change that does not touch policy inputs does not recompile."""
        compiles = self.h.policy.compilation.recompiles
        node = self.h.state.get(self.c.id)
        self.h.lite(node, Hostinfo=dict(node.hostinfo, OSVersion="9"))
        self.assertEqual(self.h.policy.compilation.recompiles, compiles)


class PolicyChangeTests(_Tailnet, unittest.TestCase):
    """Changing the policy sends deltas only to nodes whose view changed."""

    def setUp(self):
        self.build(A_TO_B)

    def test_filter_delta_only_to_affected(self):
        """Letting C reach B too changes B's filter and gives B and C each other; A gets nothing."""
        frames = self.h.notifier.frames_built
        before = self.writes()
        new = policy([{"action": "accept", "src": ["tag:a", "tag:c"], "dst": ["tag:b:*"]}])
        self.h.run(self.h.set_policy(new))
        self.assertEqual([x - y for x, y in zip(self.writes(), before)], [0, 1, 1])
        self.assertEqual(self.h.notifier.frames_built - frames, 2)
        last_b = self.sb.applier.messages[-1]
        self.assertIn("PacketFilter", last_b)
        self.assertEqual([p["ID"] for p in last_b["PeersChanged"]], [self.c.id])
        self.assertEqual(set(self.sc.applier.peers), {self.b.id})
        self.assertNotIn("PacketFilter", self.sc.applier.messages[-1])
        srcs = set(self.sb.applier.packet_filter[0]["SrcIPs"])
        self.assertEqual(srcs, {self.a.ipv4, self.a.ipv6, self.c.ipv4, self.c.ipv6})

    def test_port_change_only_to_destination(self):
        """Narrowing the ports changes only B's filter: one message, to B."""
        before = self.writes()
        self.h.run(self.h.set_policy(policy([{"action": "accept", "src": ["tag:a"], "dst": ["tag:b:22"]}])))
        self.assertEqual([x - y for x, y in zip(self.writes(), before)], [0, 1, 0])
        self.assertEqual(list(self.sb.applier.messages[-1]), ["PacketFilter"])
        self.assertEqual(self.sb.applier.packet_filter[0]["DstPorts"][0]["Ports"], {"First": 22, "Last": 22})

    def test_set_policy_compiles_each_grant_once(self):
        """The compilation that checked a new policy is the one applied: each grant compiles once."""
        from headscale_tw.policy import compile as compile_module

        compiled = []
        original = compile_module._GrantCompiler.compile

        def counting(gc, grant):
            compiled.append(grant)
            return original(gc, grant)

        self.patch(compile_module._GrantCompiler, "compile", counting)
        rules = [{"action": "accept", "src": ["tag:a", "tag:c"], "dst": ["tag:b:*"]},
                 {"action": "accept", "src": ["tag:b"], "dst": ["tag:c:22"]}]
        self.h.run(self.h.set_policy(policy(rules)))
        self.assertEqual(len(compiled), 2)
        self.assertIn(self.c.id, self.sb.applier.peers)

    def test_same_policy_is_quiet(self):
        """Setting an equivalent policy sends nothing."""
        before = self.writes()
        self.h.run(self.h.set_policy(A_TO_B + "\n"))
        self.assertEqual(self.writes(), before)

    def test_visibility_removed_and_added(self):
        """Moving the grant from A→B to A→C removes B from A's peers and adds C."""
        self.h.run(self.h.set_policy(policy([{"action": "accept", "src": ["tag:a"], "dst": ["tag:c:*"]}])))
        self.assertEqual(set(self.sa.applier.peers), {self.c.id})
        self.assertEqual(self.sb.applier.peers, {})
        self.assertEqual(set(self.sc.applier.peers), {self.a.id})
        a_last = self.sa.applier.messages[-1]
        self.assertEqual(a_last["PeersRemoved"], [self.b.id])
        self.assertEqual([p["ID"] for p in a_last["PeersChanged"]], [self.c.id])
        self.assertEqual(self.sb.applier.messages[-1]["PeersRemoved"], [self.a.id])
        self.assertEqual(self.sb.applier.packet_filter, [])

    def test_removing_policy_allows_all(self):
        """An empty policy (allow all) gives everyone everyone and the allow-all filter."""
        self.h.run(self.h.set_policy(""))
        for stream in (self.sa, self.sb, self.sc):
            self.assertEqual(stream.applier.packet_filter[0]["SrcIPs"], ["*"])
            self.assertEqual(len(stream.applier.peers), 2)

    def test_new_node_visibility(self):
        """A new tag:c node becomes visible only to nodes the policy relates it to (none here)."""
        before = self.writes()
        self.h.register("c2", auth="c")
        self.assertEqual(self.writes(), before)

    def test_new_node_in_source(self):
        """A new tag:a node is added to B's filter and peers, and A (another tag:a) is untouched."""
        before = self.writes()
        a2, _ = self.h.register("a2", auth="a")
        self.assertEqual([x - y for x, y in zip(self.writes(), before)], [0, 1, 0])
        self.assertIn(a2.id, self.sb.applier.peers)
        self.assertIn(a2.ipv4, self.sb.applier.packet_filter[0]["SrcIPs"])

    def test_delete_node(self):
        """Deleting A removes it from B's peers and filter; C hears nothing."""
        before = self.writes()
        self.h.run(self.h.admin.delete(self.a.id))
        self.assertEqual([x - y for x, y in zip(self.writes(), before)][1:], [1, 0])
        self.assertEqual(self.sb.applier.peers, {})
        self.assertEqual(self.sb.applier.packet_filter, [])


class RejectionTests(_Tailnet, unittest.TestCase):
    """Invalid policies are refused with a reason and the old one stays."""

    def setUp(self):
        self.build(A_TO_B)

    def test_syntax_error(self):
        """A HuJSON syntax error is refused and named; nothing is sent."""
        before = self.writes()
        e = self.failureResultOf(self._set('{"acls": [}'), PolicyRejected).value
        self.assertIn("parsing HuJSON", str(e))
        self.assertIsInstance(e, PolicyError)
        self.assertEqual(self.h.policy.get_policy(), A_TO_B)
        self.assertEqual(self.writes(), before)

    def test_unknown_tag(self):
        """A reference to an undeclared tag names the place."""
        bad = policy([{"action": "accept", "src": ["tag:nope"], "dst": ["tag:b:*"]}])
        e = self.failureResultOf(self._set(bad), PolicyRejected).value
        self.assertIn("tag:nope", str(e))
        self.assertEqual(self.h.policy.get_policy(), A_TO_B)

    def test_failing_tests_section(self):
        """A policy whose ``tests`` fail is refused and the failing test is described."""
        bad = policy(
            [{"action": "accept", "src": ["tag:a"], "dst": ["tag:b:*"]}],
            tests=[{"src": "tag:b", "accept": ["tag:a:22"]}],
        )
        e = self.failureResultOf(self._set(bad), PolicyRejected).value
        self.assertIn("tag:a:22", str(e))
        self.assertEqual(set(self.sb.applier.peers), {self.a.id})
        self.assertEqual(self.h.policy.get_policy(), A_TO_B)

    def test_check_policy(self):
        """check_policy validates without applying."""
        good = policy([{"action": "accept", "src": ["tag:c"], "dst": ["tag:b:*"]}])
        self.h.policy.check_policy(good)
        self.assertRaises(PolicyRejected, self.h.policy.check_policy, "[1]")
        self.assertEqual(self.h.policy.get_policy(), A_TO_B)

    def _set(self, text):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self.h.set_policy(text))


class ModeTests(unittest.TestCase):
    """File mode (load, reload, set refused) and database mode (set/get, persisted)."""

    def _file_harness(self, text):
        config = Config(
            server_url="https://hs.example.com",
            dns=DNSConfig(base_domain="tail.example"),
            policy=PolicyConfig(mode="file", path="/etc/hs/policy.hujson"),
        )
        files = {"/etc/hs/policy.hujson": text}
        h = Harness(self, config=config, files=files)
        return h, files

    def test_file_mode_reload(self):
        """A changed file applies on reload; a broken one is logged and the old stays."""
        h, files = self._file_harness("{}")  # no acls: Tailscale's default allow-all ACL
        a, _ = h.register("a")
        b, _ = h.register("b")
        sa = h.stream(a)
        self.assertEqual(set(sa.applier.peers), {b.id})
        files["/etc/hs/policy.hujson"] = '{"acls": []}'
        self.assertTrue(h.run(h.reload_policy()))
        self.assertEqual(sa.applier.peers, {})
        self.assertEqual(sa.applier.packet_filter, [])
        files["/etc/hs/policy.hujson"] = '{"acls": ['
        self.assertFalse(h.run(h.reload_policy()))
        self.assertEqual(h.policy.get_policy(), '{"acls": []}')
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_file_mode_missing_file_on_reload(self):
        """A file that disappeared keeps the old policy."""
        h, files = self._file_harness('{"acls": []}')
        del files["/etc/hs/policy.hujson"]
        self.assertFalse(h.run(h.reload_policy()))
        self.assertEqual(h.policy.get_policy(), '{"acls": []}')

    def test_file_mode_invalid_at_start(self):
        """An invalid policy file at start is an error naming the problem."""
        from twisted.internet.defer import Deferred

        from headscale_tw.control.policy import PolicySource, TailnetPolicy

        h, files = self._file_harness("{}")
        files["/etc/hs/policy.hujson"] = '{"acls": [{"action": "deny"}]}'
        fresh = TailnetPolicy(h.state, PolicySource(h.config, read_file=h.read_file))
        e = self.failureResultOf(Deferred.fromCoroutine(fresh.load()), PolicyRejected).value
        self.assertIn("acls[0]", str(e))

    def test_file_mode_set_refused(self):
        """set_policy in file mode is refused with a clear message."""
        h, _ = self._file_harness("{}")
        from twisted.internet.defer import Deferred

        e = self.failureResultOf(Deferred.fromCoroutine(h.set_policy("{}")), PolicyUpdateRefused).value
        self.assertIn("policy.mode", str(e))

    def test_database_set_get_persisted(self):
        """set stores a row, get returns it, and a new manager loads it."""
        h = Harness(self, policy="")
        h.run(h.set_policy(A_TO_B))
        self.assertEqual(h.policy.get_policy(), A_TO_B)
        self.assertEqual(h.run(h.db.policies.get_latest()).data, A_TO_B)
        again = Harness(self, db=h.db, policy=None, config=h.config)
        self.assertEqual(again.policy.get_policy(), A_TO_B)

    def test_database_rejected_not_stored(self):
        """A rejected policy is not stored."""
        h = Harness(self, policy=A_TO_B)
        from twisted.internet.defer import Deferred

        self.failureResultOf(Deferred.fromCoroutine(h.set_policy("{")), PolicyRejected)
        self.assertEqual(h.run(h.db.policies.get_latest()).data, A_TO_B)


class UserPolicyTests(unittest.TestCase):
    """Users, groups, SSH and node attributes reach the right nodes."""

    def setUp(self):
        self.h = Harness(self, policy="")
        self.bob = self.h.add_user("bob")
        self.h.make_key("bob", user_id=self.bob.id, reusable=True)
        self.a, _ = self.h.register("alice-laptop")
        self.b, _ = self.h.register("bob-laptop", auth="bob")
        self.sa = self.h.stream(self.a)
        self.sb = self.h.stream(self.b)

    def test_ssh_and_caps(self):
        """An ssh rule gives the destination an SSHPolicy; nodeAttrs reach the self CapMap."""
        text = json.dumps({
            "acls": [{"action": "accept", "src": ["bob@"], "dst": ["alice@:22"]}],
            "ssh": [{"action": "accept", "src": ["bob@"], "dst": ["alice@"], "users": ["root"]}],
            "nodeAttrs": [{"target": ["alice@"], "attr": ["magicdns-aaaa"]}],
        })
        # ssh dst as a user requires the same user as source in Tailscale; use autogroup:member instead
        text = text.replace('"dst": ["alice@"], "users"', '"dst": ["autogroup:member"], "users"')
        self.h.run(self.h.set_policy(text))
        ssh = self.sa.applier.fields.get("SSHPolicy")
        self.assertTrue(ssh and ssh["rules"])
        self.assertIn("magicdns-aaaa", self.sa.applier.node["CapMap"])
        self.assertIn("disable-captive-portal-detection", self.sa.applier.node["CapMap"])
        self.assertNotIn("magicdns-aaaa", self.sb.applier.node.get("CapMap", {}))
        self.h.run(self.h.set_policy(json.dumps({"acls": []})))
        self.assertEqual(self.sa.applier.fields["SSHPolicy"], {"rules": []})
        self.assertNotIn("magicdns-aaaa", self.sa.applier.node["CapMap"])

    def test_user_rename_recompiles(self):
        """A policy naming a user applies once that user exists with that name."""
        text = json.dumps({"acls": [{"action": "accept", "src": ["carol@"], "dst": ["alice@:*"]}]})
        self.h.run(self.h.set_policy(text))
        self.assertEqual(self.sa.applier.peers, {})
        self.h.run(self.h.db.users.rename(self.bob.id, "carol"))
        self.h.run(self.h.state.refresh_user(self.bob.id))
        self.h.notifier.user_changed(self.bob.id)
        self.assertEqual(set(self.sa.applier.peers), {self.b.id})


class PolicyWorkTests(unittest.TestCase):
    """With a policy, work follows the nodes whose view changes."""

    N = 20

    def setUp(self):
        self.h = Harness(self, policy=A_TO_B)
        for tag in ("a", "b", "c"):
            self.h.make_key(tag, reusable=True, tags=(f"tag:{tag}",))
        self.a, _ = self.h.register("a", auth="a")
        self.b, _ = self.h.register("b", auth="b")
        self.others = [self.h.register(f"c{i}", auth="c")[0] for i in range(self.N)]
        self.streams = [self.h.stream(n) for n in [self.a, self.b] + self.others]
        self.h.mapper.serializations.clear()
        self.h.notifier.frames_built = 0
        self.counts = [len(s.writes) for s in self.streams]

    def _new_writes(self):
        return [len(s.writes) - c for s, c in zip(self.streams, self.counts)]

    def test_unrelated_policy_change(self):
        """Letting tag:c reach tag:c sends one message to each tag:c node and nothing to A or B."""
        text = policy([
            {"action": "accept", "src": ["tag:a"], "dst": ["tag:b:*"]},
            {"action": "accept", "src": ["tag:c"], "dst": ["tag:c:22"]},
        ])
        self.h.run(self.h.set_policy(text))
        self.assertEqual(self._new_writes(), [0, 0] + [1] * self.N)
        for stream in self.streams[2:]:
            self.assertEqual(len(stream.applier.peers), self.N - 1)
        # each tag:c node gets its own peer set, but every entry is serialized once
        self.assertEqual(set(self.h.mapper.serializations.values()), {1})
        self.assertEqual(set(self.h.mapper.serializations), {n.id for n in self.others})

    def test_hostinfo_change_of_invisible_node(self):
        """A Hostinfo change of a node nobody sees sends nothing and recompiles nothing."""
        compiles = self.h.policy.compilation.recompiles
        node = self.h.state.get(self.others[0].id)
        self.h.lite(node, Hostinfo=dict(node.hostinfo, OSVersion="2"))
        self.assertEqual(self._new_writes(), [0] * (self.N + 2))
        self.assertEqual(self.h.policy.compilation.recompiles, compiles)
        self.assertEqual(self.h.notifier.frames_built, 0)
