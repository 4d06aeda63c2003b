"""Builds the control plane over an in-memory database and a Clock, for tests."""

from __future__ import annotations

import os
from dataclasses import replace as attrs_evolve
from datetime import datetime, timezone

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from headscale_tw import secrets as keysecrets
from headscale_tw.config.model import Config, DNSConfig, PolicyConfig
from headscale_tw.control.dns_challenges import DNSChallenges
from headscale_tw.control.election import RouteElection
from headscale_tw.control.framing import ZSTD
from headscale_tw.control.ipalloc import IPAllocator
from headscale_tw.control.lifecycle import NodeLifecycle
from headscale_tw.control.mapper import Mapper
from headscale_tw.control.nodes import NodeAdmin
from headscale_tw.control.notifier import MapNotifier
from headscale_tw.control.policy import PolicySource, TailnetPolicy
from headscale_tw.control.policy_admin import PolicyAdmin
from headscale_tw.control.poll import PollService
from headscale_tw.control.presence import NodePresence
from headscale_tw.control.registration import Registrar
from headscale_tw.control.state import ControlState
from headscale_tw.control.users import UserAdmin
from headscale_tw.testing.db import open_test_database
from headscale_tw.testing.netmap import NetmapApplier

START = 1_800_000_000


def key(kind: str) -> str:
    return f"{kind}:{os.urandom(32).hex()}"


def run(testcase, coroutine):
    """Run a coroutine that must finish synchronously; return its result."""
    return testcase.successResultOf(Deferred.fromCoroutine(coroutine))


class Stream:
    """A fake streaming response feeding a NetmapApplier."""

    def __init__(self, encoding=ZSTD):
        self.applier = NetmapApplier(encoding)
        self.writes = []
        self.finished = False

    def write(self, data):
        self.writes.append(data)
        self.applier.feed(data)

    def finish(self):
        self.finished = True


class Harness:
    def __init__(self, testcase, config: Config | None = None, db=None, grace=10.0, policy: str | None = None,
                 files: dict | None = None, dns_provider=None, cluster=None):
        self.testcase = testcase
        self.config = config or Config(
            server_url="https://hs.example.com", dns=DNSConfig(base_domain="tail.example")
        )
        self.clock = Clock()
        self.clock.advance(START)
        self.db = db or open_test_database(testcase)
        self.keys: dict[str, str] = {}
        self.allocator = IPAllocator(self.config.prefixes.v4, self.config.prefixes.v6, self.config.prefixes.allocation)
        self.state = ControlState(self.db, self.allocator, self.now)
        self.files = files if files is not None else {}
        if policy is not None:
            self.run(self.db.policies.set(policy))
            self.config = attrs_evolve(self.config, policy=PolicyConfig(mode="database"))
        # cluster: a ClusterLink, built as ControlPlane builds it (shared presence, ranked election).
        self.presence = None if cluster is None else NodePresence(cluster.sessions, cluster.instance_id,
                                                                   cluster.publish, self.state, self.clock)
        election = None if self.presence is None else RouteElection(rank=self.presence.rank)
        self.policy = TailnetPolicy(self.state, PolicySource(self.config, store=self.db.policies,
                                                             read_file=self.read_file), election=election)
        base_domain = self.config.dns.base_domain if self.config.dns.magic_dns else ""
        self.dns_challenges = DNSChallenges(self.state, dns_provider, base_domain, self.clock)
        self.mapper = Mapper(self.state, self.config, policy=self.policy, https=self.dns_challenges.available)
        self.notifier = MapNotifier(self.state, self.mapper, self.policy, self.clock, offline_grace=grace,
                                    interval=lambda: 55.0, presence=self.presence)
        self.registrar = Registrar(
            self.state, self.notifier, self.mapper, self.config, self.clock, policy=self.policy
        )
        self.poll = PollService(self.state, self.notifier, self.policy)
        #: Sets and reloads the policy the way the admin API and SIGHUP do: applied, then pushed.
        self.policy_admin = PolicyAdmin(self.policy, self.db.policies, self.notifier)
        self.admin = NodeAdmin(self.state, self.notifier, self.registrar,
                               UserAdmin(self.db.users, self.state.now, self.state, self.notifier),
                               self.db.preauthkeys, policy=self.policy)
        self.lifecycle = NodeLifecycle(self.state, self.notifier, self.registrar, self.config,
                                       lease_for=None if cluster is None else cluster.lease_for)
        self.run(self.state.load())
        if self.state.users:
            self.user = self.state.users[min(self.state.users)]
        else:
            self.user = self.run(self.db.users.create("alice", display_name="Alice", email="alice@example.com"))
            self.state.users[self.user.id] = self.user
        self.run(self.policy.load())

    async def set_policy(self, text):
        """Set the policy through :class:`PolicyAdmin` (stored, applied, pushed to the sessions)."""
        return await self.policy_admin.set(text)

    async def reload_policy(self) -> bool:
        """Re-read the policy source as SIGHUP does; whether the policy changed."""
        return await self.policy_admin.reload()

    def add_user(self, name):
        user = self.run(self.db.users.create(name, display_name=name.title(), email=f"{name}@example.com"))
        self.state.users[user.id] = user
        return user

    def read_file(self, path):
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", path) from None

    def now(self):
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    def run(self, coroutine):
        return run(self.testcase, coroutine)

    def make_key(self, label="test", user_id=None, **options):
        """Create a real pre-auth key known to tests as ``label``; return its row."""
        text, prefix, secret = keysecrets.generate_key("auth")
        pepper = self.run(keysecrets.get_pepper(self.db.server_state))
        values = dict(reusable=False, ephemeral=False, tags=(), expiration=None)
        values.update(options)
        row = self.run(
            self.db.preauthkeys.create(
                self.user.id if user_id is None else user_id,
                prefix,
                keysecrets.hash_secret(secret, pepper),
                now=self.now(),
                **values,
            )
        )
        self.keys[label] = text
        return row

    def register(self, hostname="node", auth="reusable", machine_key=None, node_key=None, **extra):
        """Register a node with a (reusable, created on demand) auth key; return (node, response)."""
        if auth == "reusable" and auth not in self.keys:
            self.make_key(auth, reusable=True)
        machine_key = machine_key or key("mkey")
        node_key = node_key or key("nodekey")
        body = {
            "Version": 133,
            "NodeKey": node_key,
            "OldNodeKey": "nodekey:" + "0" * 64,
            "Auth": {"AuthKey": self.keys.get(auth, auth)},
            "Expiry": "0001-01-01T00:00:00Z",
            "Followup": "",
            "Hostinfo": {"Hostname": hostname, "OS": "linux"},
        }
        body.update(extra)
        response = self.run(self.registrar.register(machine_key, body))
        return self.state.by_machine_key(machine_key), response

    def map_request(self, node, **extra):
        body = {
            "Version": 133,
            "Compress": "zstd",
            "KeepAlive": True,
            "NodeKey": node.node_key,
            "DiscoKey": node.disco_key or key("discokey"),
            "Hostinfo": dict(node.hostinfo),
        }
        body.update(extra)
        return body

    def stream(self, node, **extra) -> Stream:
        """Open a streaming map session for ``node`` the way the web layer does."""
        from headscale_tw.control.poll import parse_map_request

        request = parse_map_request(self.map_request(node, Stream=True, **extra))
        node = self.poll.authenticate(node.machine_key, request)
        self.run(self.poll.apply(node, request))
        out = Stream(request.compress)
        out.session = self.notifier.open_stream(node.id, out.write, out.finish, encoding=request.compress)
        return out

    def lite(self, node, **extra):
        from headscale_tw.control.poll import parse_map_request

        request = parse_map_request(self.map_request(node, OmitPeers=True, **extra))
        current = self.poll.authenticate(node.machine_key, request)
        return self.run(self.poll.apply(current, request))
