# -*- test-case-name: tests.web.test_admin_audit -*-
"""
The audit log end to end over a real control plane and database: every admin
action through ``/api/v1`` (as the CLI sends it over the unix socket, or with an
API key), registrations, expiry, ephemeral deletion, OIDC sign-in, failed
attempt summaries, ``GET /api/v1/audit`` and retention.
"""

import os
import pwd
import socket
from datetime import timedelta

from treq.testing import StubTreq
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource
from zope.interface import implementer

from headscale_tw import secrets as keysecrets
from headscale_tw.config.model import AuditConfig, Config, DerpConfig, NoiseConfig
from headscale_tw.control.audit import MAX_DETAIL_BYTES, Actor, Target, acting_as
from headscale_tw.control.plane import AUDIT_PRUNE_INTERVAL, ControlPlane
from headscale_tw.keys import MachinePrivate
from headscale_tw.oidc.claims import Identity
from headscale_tw.oidc.signin import Confirmation, PendingLogins, SignIn
from headscale_tw.service import _build_on_database
from headscale_tw.testing.db import create_postgres_database, open_test_database
from headscale_tw.throttle import SUMMARY_LINES
from headscale_tw.web.admin.peer import socket_peer_user
from headscale_tw.web.admin_api import AdminAPI, mount
from tests.nodesapi._harness import NOW, PlaneHarness

POLICY = '{"tagOwners": {"tag:web": ["alice@"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


def rows(harness, **filters):
    """Every audit event (newest first) matching ``filters``."""
    return harness.run(harness.db.audit.list(limit=1000, **filters))


def raw_rows(harness):
    """Every stored audit row as text, as a database dump would show it."""
    return harness.run(harness.db.pool.run_interaction("dump", lambda txn: txn.query("SELECT * FROM audit_events")))


class AuditTestCase(unittest.TestCase):
    """A plane whose API is reached as the CLI reaches it over the unix socket."""

    def setUp(self):
        self.h = PlaneHarness(self)

    def only(self, action):
        """The one event recorded for ``action``."""
        found = rows(self.h, action=action)
        self.assertEqual(len(found), 1, f"{action}: {found}")
        return found[0]

    def assertRecorded(self, action, target_kind, target_id, actor_kind="unix_socket"):
        """One ``action`` event on the target, by the given actor kind, successful."""
        event = self.only(action)
        self.assertEqual((event.target_kind, event.target_id, event.actor_kind, event.result),
                         (target_kind, str(target_id), actor_kind, "ok"))
        return event


class UserActionTests(AuditTestCase):
    """User changes are recorded with the socket peer as actor."""

    def test_create_rename_delete(self):
        """users create, rename and destroy each leave one event naming the user."""
        status, body = self.h.request("POST", "/api/v1/user", {"name": "bob"})
        self.assertEqual(status, 200)
        uid = body["user"]["id"]
        self.h.request("POST", f"/api/v1/user/{uid}/rename/robert")
        self.h.request("DELETE", f"/api/v1/user/{uid}")
        created = self.assertRecorded("user.create", "user", uid)
        self.assertEqual((created.target_name, created.actor, created.source), ("bob", "local", "unix"))
        self.assertEqual(self.assertRecorded("user.rename", "user", uid).detail, {"new_name": "robert"})
        self.assertEqual(self.assertRecorded("user.delete", "user", uid).target_name, "robert")

    def test_refused_action_recorded_as_refused(self):
        """A refused change (duplicate user) records no user.create but one admin.refused naming the operation."""
        status, _ = self.h.request("POST", "/api/v1/user", {"name": "alice"})
        self.assertEqual(status, 409)
        self.assertEqual(rows(self.h, action="user.create"), [])
        refused = self.only("admin.refused")
        self.assertEqual((refused.actor_kind, refused.target_id, refused.target_name),
                         ("unix_socket", "create_user", "POST /api/v1/user"))
        self.assertTrue(refused.result.startswith("refused: "), refused.result)
        self.assertIn("alice", refused.result)
        self.assertEqual(refused.detail, {"status": 409, "code": 6})

    def test_refused_reads_and_unauthenticated_not_recorded(self):
        """A failing read, a refused policy check, and a request whose API key is refused, leave no row."""
        self.h.request("GET", "/api/v1/node/999")
        self.assertEqual(self.h.request("POST", "/api/v1/policy/check", {"policy": "{bad"})[0], 400)
        root = Resource()
        mount(root, AdminAPI(self.h.plane.admin, trust_all=False))
        response = self.successResultOf(StubTreq(root).post("http://headscale.test/api/v1/user", json={"name": "x"}))
        self.assertEqual(response.code, 401)
        self.assertEqual(rows(self.h), [])


class KeyActionTests(AuditTestCase):
    """Pre-auth key and API key changes are recorded by prefix, never with the secret."""

    def test_preauth_keys(self):
        """create, expire and delete of a pre-auth key each leave one event; the key text is in none."""
        status, body = self.h.request("POST", "/api/v1/preauthkey",
                                      {"user": str(self.h.user.id), "reusable": True, "aclTags": []})
        self.assertEqual(status, 200)
        full, kid = body["preAuthKey"]["key"], body["preAuthKey"]["id"]
        self.h.request("POST", "/api/v1/preauthkey/expire", {"id": kid})
        self.h.request("DELETE", "/api/v1/preauthkey", query={"id": kid})
        created = self.assertRecorded("preauth_key.create", "preauth_key", kid)
        prefix = full.split("-")[2]
        self.assertEqual(created.target_name, f"hskey-auth-{prefix}")
        self.assertEqual((created.detail["user"], created.detail["reusable"]), ("alice", True))
        self.assertRecorded("preauth_key.expire", "preauth_key", kid)
        self.assertRecorded("preauth_key.delete", "preauth_key", kid)
        self.assertNotIn(full.split("-", 3)[3], repr(raw_rows(self.h)))

    def test_api_keys(self):
        """create, expire and delete of an API key each leave one event naming its prefix."""
        status, body = self.h.request("POST", "/api/v1/apikey", {})
        self.assertEqual(status, 200)
        full = body["apiKey"]
        prefix = full.split("-")[2]
        self.h.request("POST", "/api/v1/apikey/expire", {"prefix": prefix})
        self.h.request("DELETE", f"/api/v1/apikey/{prefix}")
        for action in ("api_key.create", "api_key.expire", "api_key.delete"):
            self.assertEqual(self.only(action).target_name, f"hskey-api-{prefix}")
        self.assertNotIn(full.split("-", 3)[3], repr(raw_rows(self.h)))


class NodeActionTests(AuditTestCase):
    """Node changes are recorded with the node as target."""

    def setUp(self):
        super().setUp()
        self.run_policy()
        self.node = self.h.register("web")

    def run_policy(self):
        status, _ = self.h.request("PUT", "/api/v1/policy", {"policy": POLICY})
        self.assertEqual(status, 200)

    def test_policy_set(self):
        """policy set is recorded with its size and digest, not its text."""
        event = self.assertRecorded("policy.set", "policy", "")
        self.assertEqual(event.detail["bytes"], len(POLICY))
        self.assertEqual(len(event.detail["sha256"]), 64)

    def test_each_node_action(self):
        """rename, expire, disable expiry, tag, approve routes, move and delete: one event each."""
        nid = self.node.id
        bob = self.h.add_user("bob")
        for method, path, body in (
                ("POST", f"/api/v1/node/{nid}/rename/www", None),
                ("POST", f"/api/v1/node/{nid}/expire", {}),
                ("POST", f"/api/v1/node/{nid}/expire", {"disableExpiry": True}),
                ("POST", f"/api/v1/node/{nid}/approve_routes", {"routes": ["10.0.0.0/8"]}),
                ("POST", f"/api/v1/node/{nid}/user", {"user": "bob"}),
                ("POST", f"/api/v1/node/{nid}/tags", {"tags": ["tag:web"]}),
                ("DELETE", f"/api/v1/node/{nid}", None)):
            status, answer = self.h.request(method, path, body)
            self.assertEqual(status, 200, (path, answer))
        self.assertEqual(self.assertRecorded("node.rename", "node", nid).target_name, "www")
        self.assertRecorded("node.expire", "node", nid)
        self.assertRecorded("node.disable_expiry", "node", nid)
        self.assertEqual(self.assertRecorded("node.approve_routes", "node", nid).detail, {"routes": ["10.0.0.0/8"]})
        self.assertEqual(self.assertRecorded("node.move", "node", nid).detail["to_user"], bob.name)
        self.assertEqual(self.assertRecorded("node.tag", "node", nid).detail, {"tags": ["tag:web"]})
        self.assertRecorded("node.delete", "node", nid)


class RegistrationTests(AuditTestCase):
    """Successful registrations are recorded; the actor says how the node got in."""

    def test_with_preauth_key(self):
        """A registration with a pre-auth key names the key's prefix (not the key) and the client's source."""
        key = self.h.auth_key()
        machine_key = "mkey:" + "ab" * 32
        self.h.run(self.h.plane.registrar.register(machine_key, self.h.register_body("laptop", key), "198.51.100.7"))
        node = self.h.plane.state.by_machine_key(machine_key)
        event = self.assertRecorded("node.register", "node", node.id, actor_kind="preauth_key")
        self.assertEqual(event.actor, "hskey-auth-" + key.split("-")[2])
        self.assertEqual((event.source, event.detail["method"], event.detail["machine_key"]),
                         ("198.51.100.7", "authkey", machine_key))
        self.assertNotIn(key.split("-", 3)[3], repr(raw_rows(self.h)))

    def test_interactive_by_admin(self):
        """auth register finishes an interactive registration; the admin is the actor."""
        _, auth_id = self.h.start_interactive("laptop")
        status, body = self.h.request("POST", "/api/v1/auth/register", {"user": "alice", "authId": auth_id})
        self.assertEqual(status, 200)
        event = self.assertRecorded("node.register", "node", body["node"]["id"])
        self.assertEqual((event.detail["method"], event.detail["auth_id"], event.detail["user"]),
                         ("interactive", auth_id, "alice"))

    def test_reject(self):
        """auth reject is recorded with the auth id as target."""
        _, auth_id = self.h.start_interactive("laptop")
        self.h.request("POST", "/api/v1/auth/reject", {"authId": auth_id})
        self.assertEqual(self.assertRecorded("auth.reject", "auth_request", auth_id).target_name, "laptop")

    def test_logout(self):
        """A client logging out (expiry in the past) is recorded with the node as actor."""
        node = self.h.register("laptop")
        body = self.h.register_body("laptop")
        body.update(NodeKey=node.node_key, Expiry="2001-01-01T00:00:00Z")
        self.h.run(self.h.plane.registrar.register(node.machine_key, body, "192.0.2.9"))
        event = self.assertRecorded("node.logout", "node", node.id, actor_kind="node")
        self.assertEqual(event.source, "192.0.2.9")

    def test_oidc_sign_in(self):
        """An OIDC sign-in records the login and the registration it finishes, both by the OIDC user."""
        _, auth_id = self.h.start_interactive("laptop")
        registrar = self.h.plane.registrar

        async def finish(aid, user, expires_at=None):
            return await registrar.complete(aid, user.name)

        async def pending(aid):
            return await registrar.get_pending(aid) is not None

        sign_in = SignIn(None, self.h.db.users, pending, finish, self.h.clock, PendingLogins(self.h.db.oidc_logins),
                         audit=self.h.plane.audit)
        identity = Identity("https://idp.example", "sub-1", email="carol@example.com", email_verified=True,
                            preferred_username="carol")
        self.h.run(sign_in.pending.add_confirmation(Confirmation(auth_id, "tok", identity, NOW + timedelta(minutes=5)),
                                                    NOW))
        user, node = self.h.run(sign_in.confirm(auth_id, "tok", "203.0.113.5"))
        login = self.assertRecorded("user.login", "user", user.id, actor_kind="oidc")
        registered = self.assertRecorded("node.register", "node", node.id, actor_kind="oidc")
        for event in (login, registered):
            self.assertEqual(event.actor, f"{user.name} (https://idp.example/sub-1)")
            self.assertEqual(event.source, "203.0.113.5")


class SystemEventTests(unittest.TestCase):
    """Expiry and ephemeral garbage collection are recorded as the system's."""

    def test_policy_file_reload(self):
        """A SIGHUP that loads a changed policy file records policy.reload; an unchanged one records nothing."""
        h = PlaneHarness(self, policy_mode="file", policy_path="/etc/acl.hujson", files={"/etc/acl.hujson": POLICY})
        h.run(h.plane.reload())
        self.assertEqual(h.run(h.db.audit.list()), [])
        h.files["/etc/acl.hujson"] = POLICY.replace("tag:web", "tag:www")
        h.run(h.plane.reload())
        [event] = h.run(h.db.audit.list())
        self.assertEqual((event.action, event.actor_kind, event.target_name), ("policy.reload", "system", "file"))
        self.assertEqual(len(event.detail["sha256"]), 64)

    def test_expiry_and_ephemeral_deletion(self):
        """A node whose expiry passes and an idle ephemeral node each leave one system event."""
        h = PlaneHarness(self)
        h.plane.lifecycle.inactivity = 120.0
        node = h.register("old")
        eph = h.register("eph", key=h.auth_key(ephemeral=True))
        h.run(h.plane.nodes.expire(node.id, NOW + timedelta(seconds=10)))
        h.clock.advance(130)
        h.run(h.plane.lifecycle.expire_due())
        h.run(h.plane.lifecycle.collect_ephemeral())
        [expired] = h.run(h.db.audit.list(action="node.expired"))
        self.assertEqual((expired.actor_kind, expired.target_id), ("system", str(node.id)))
        deleted = [e for e in h.run(h.db.audit.list(action="node.delete")) if e.target_id == str(eph.id)]
        self.assertEqual([(e.actor_kind, e.detail["reason"]) for e in deleted], [("system", "ephemeral node inactive")])


class ApiKeyActorTests(unittest.TestCase):
    """Over the public listener the actor is the API key, by prefix, and the client's address."""

    def test_api_key_actor(self):
        """A user created with an API key names the key's prefix; the secret is stored nowhere."""
        h = PlaneHarness(self)
        full, prefix, secret = keysecrets.generate_key("api")
        pepper = h.run(keysecrets.get_pepper(h.db.server_state))
        h.run(h.db.apikeys.create(prefix, keysecrets.hash_secret(secret, pepper), None, now=NOW))
        root = Resource()
        mount(root, AdminAPI(h.plane.admin, trust_all=False))
        response = self.successResultOf(StubTreq(root).post(
            "http://headscale.test/api/v1/user", json={"name": "dave"},
            headers={b"Authorization": [f"Bearer {full}".encode()]}))
        self.assertEqual(response.code, 200)
        [event] = h.run(h.db.audit.list(action="user.create"))
        self.assertEqual((event.actor_kind, event.actor), ("api_key", f"hskey-api-{prefix}"))
        self.assertTrue(event.source)
        self.assertNotIn(secret, repr(raw_rows(h)))


class FailureSummaryTests(unittest.TestCase):
    """Failed attempts become one row per source and interval: bounded writes whatever the flood."""

    def test_flood_of_wrong_keys(self):
        """1000 wrong pre-auth keys from 100 sources cost one write of at most SUMMARY_LINES + 1 rows."""
        h = PlaneHarness(self)
        writes = []
        real = h.db.pool.run_interaction

        async def counting(desc, fn, *args):
            if desc.startswith("add_audit_event"):
                writes.append(desc)
            return await real(desc, fn, *args)

        h.db.pool.run_interaction = counting
        for i in range(1000):
            body = h.register_body("x", "hskey-auth-" + "a" * 12 + "-" + "b" * 43)
            h.run(h.plane.registrar.register(f"mkey:{i:064x}", body, f"192.0.2.{i % 100}"))
        self.assertEqual(writes, [])  # nothing written per attempt
        h.run(h.plane._summarize_throttles())
        self.assertEqual(writes, ["add_audit_events"])
        failed = h.run(h.db.audit.list(action="auth.failed"))
        self.assertEqual(len(failed), SUMMARY_LINES + 1)
        self.assertEqual(sum(e.detail["failures"] + e.detail["refused"] for e in failed), 1000)
        self.assertEqual({e.detail["secret"] for e in failed}, {"preauth_key"})
        self.assertIn("80 more sources", {e.target_id for e in failed})
        self.assertNotIn("b" * 43, repr(raw_rows(h)))

    def test_quiet_interval_writes_nothing(self):
        """A summary with no failures writes no row."""
        h = PlaneHarness(self)
        h.run(h.plane._summarize_throttles())
        self.assertEqual(h.run(h.db.audit.list()), [])


class AuditRouteTests(AuditTestCase):
    """``GET /api/v1/audit`` lists events with validated filters."""

    def setUp(self):
        super().setUp()
        for name in ("bob", "carol"):
            self.h.request("POST", "/api/v1/user", {"name": name})
            self.h.clock.advance(60)

    def test_list_and_filters(self):
        """Events come newest first with their fields; actor, action, target and time filters apply."""
        status, body = self.h.request("GET", "/api/v1/audit")
        self.assertEqual(status, 200)
        self.assertEqual([e["targetName"] for e in body["events"]], ["carol", "bob"])
        first = body["events"][1]
        self.assertEqual(sorted(first), sorted(["id", "time", "actorKind", "actor", "action", "targetKind",
                                                "targetId", "targetName", "source", "result", "detail",
                                                "instance"]))
        self.assertEqual(len(self.h.request("GET", "/api/v1/audit", query={"target": "bob"})[1]["events"]), 1)
        self.assertEqual(len(self.h.request("GET", "/api/v1/audit", query={"action": "user"})[1]["events"]), 2)
        self.assertEqual(len(self.h.request("GET", "/api/v1/audit", query={"actor": "system"})[1]["events"]), 0)
        self.assertEqual(len(self.h.request("GET", "/api/v1/audit", query={"limit": "1"})[1]["events"]), 1)
        since = self.h.request("GET", "/api/v1/audit", query={"since": first["time"]})[1]["events"]
        until = self.h.request("GET", "/api/v1/audit", query={"until": body["events"][0]["time"]})[1]["events"]
        self.assertEqual(([e["targetName"] for e in since], [e["targetName"] for e in until]),
                         (["carol", "bob"], ["bob"]))

    def test_bad_filters(self):
        """A bad limit, time or window is a 400 naming the parameter."""
        for query, word in (({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "x"}, "limit"),
                            ({"since": "yesterday"}, "since"),
                            ({"since": "2027-01-02T00:00:00Z", "until": "2027-01-01T00:00:00Z"}, "until"),
                            ({"actor": "a" * 201}, "actor")):
            status, body = self.h.request("GET", "/api/v1/audit", query=query)
            self.assertEqual(status, 400, query)
            self.assertIn(word, body["message"])


class RetentionTests(unittest.TestCase):
    """Events older than ``audit.retention`` are pruned by a periodic job on the injected clock."""

    def test_prune(self):
        """The prune job is among the plane's periodic jobs and deletes only events past the retention."""
        h = PlaneHarness(self)
        h.plane.audit.retention = 3600.0
        self.assertIn(AUDIT_PRUNE_INTERVAL, [interval for interval, _ in h.plane.periodic_jobs()])
        with acting_as(Actor("test", "t")):
            h.run(h.plane.audit.record("user.create", Target("user", "1", "old")))
            h.clock.advance(3000)
            h.run(h.plane.audit.record("user.create", Target("user", "2", "new")))
        h.clock.advance(700)
        self.assertEqual(h.run(h.plane.audit.prune()), 1)
        self.assertEqual([e.target_name for e in h.run(h.db.audit.list())], ["new"])

    def test_zero_keeps_forever(self):
        """Retention 0 deletes nothing."""
        h = PlaneHarness(self)
        h.plane.audit.retention = 0
        h.run(h.plane.audit.record("user.create", Target("user", "1", "x")))
        h.clock.advance(10 ** 9)
        self.assertEqual(h.run(h.plane.audit.prune()), 0)


class RecorderTests(AuditTestCase):
    """What the recorder keeps out of the log."""

    def test_secrets_in_text_are_cut(self):
        """A key text passed in a target name or detail is stored as its prefix only."""
        secret = "S" * 43
        h = self.h
        h.run(h.plane.audit.record("test.secret", Target("x", "1", f"hskey-api-abcdefghijkl-{secret}"),
                                   detail={"note": f"hskey-auth-abcdefghijkl-{secret}"}))
        self.assertNotIn(secret, repr(raw_rows(h)))
        [event] = rows(h, action="test.secret")
        self.assertEqual(event.target_name, "hskey-api-abcdefghijkl-***")

    def test_large_detail_left_out(self):
        """A detail over the size limit is replaced by a note saying so."""
        self.h.run(self.h.plane.audit.record("test.big", detail={"x": "y" * (MAX_DETAIL_BYTES + 1)}))
        self.assertIn("truncated", self.only("test.big").detail)

    def test_outside_a_request(self):
        """An action with no request context is recorded with the unknown actor rather than lost."""
        self.h.run(self.h.plane.audit.record("test.orphan"))
        self.assertEqual(self.only("test.orphan").actor_kind, "unknown")

    def test_store_failure_does_not_fail_the_action(self):
        """A failing write is logged, not raised to the action's caller."""
        async def broken(event):
            raise RuntimeError("disk full")

        self.h.plane.audit.store = type("Broken", (), {"add": staticmethod(broken)})()
        self.h.run(self.h.plane.audit.record("test.lost"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


@implementer(ISystemHandle)
class _SocketTransport:
    """A transport whose system handle is a real socket."""

    def __init__(self, sock):
        self.sock = sock

    def getHandle(self):
        return self.sock


class SocketPeerTests(unittest.TestCase):
    """The unix socket peer is named by SO_PEERCRED."""

    def test_peer_user(self):
        """The peer of a real unix socket pair is this process's user, with its uid."""

        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        request = type("Req", (), {})()
        request.channel = type("Chan", (), {})()
        request.channel.transport = _SocketTransport(left)
        uid = os.getuid()
        self.assertEqual(socket_peer_user(request), f"{pwd.getpwuid(uid).pw_name} (uid {uid})")

    def test_not_a_unix_socket(self):
        """A TCP socket (or no transport) gives no name."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        request = type("Req", (), {})()
        request.channel = type("Chan", (), {})()
        request.channel.transport = _SocketTransport(sock)
        self.assertEqual(socket_peer_user(request), "")
        self.assertEqual(socket_peer_user(type("Req", (), {})()), "")


class SharedDatabaseTests(unittest.TestCase):
    """Two control planes on one PostgreSQL database each write their own rows to the shared table."""

    def test_two_instances(self):
        """Users created through two planes' APIs are both listed by either, each row naming its instance."""


        config = create_postgres_database(self)
        planes = []
        for name in ("hs-a", "hs-b"):
            clock = Clock()
            clock.advance(1_800_000_000 + len(planes))
            plane = ControlPlane(Config(), open_test_database(self, config), clock, instance=name)
            self.successResultOf(Deferred.fromCoroutine(plane.start()))
            self.addCleanup(plane.stop)
            planes.append(plane)
        for plane, user in zip(planes, ("bob", "carol")):
            with acting_as(Actor("api_key", "hskey-api-x", "192.0.2.1")):
                self.successResultOf(Deferred.fromCoroutine(plane.admin.users.create(user)))
        for plane in planes:
            events = self.successResultOf(Deferred.fromCoroutine(plane.audit.list(action="user.create")))
            self.assertEqual([(e.instance, e.target_name) for e in events], [("hs-b", "carol"), ("hs-a", "bob")])


class ServiceWiringTests(unittest.TestCase):
    """The service builds the audit log with its retention and instance, and a pruning timer it stops."""

    def test_prune_timer(self):
        """The prune TimerService runs on the injected clock, prunes past the retention, and leaves no call behind on stop."""



        tmp = self.mktemp()
        os.makedirs(tmp)
        config = Config(server_url="http://headscale.test", unix_socket="", metrics_listen_addr="",
                        noise=NoiseConfig(private_key_path=os.path.join(tmp, "noise.key")),
                        derp=DerpConfig(urls=(), paths=()), audit=AuditConfig(retention=7200.0))
        clock = Clock()
        clock.advance(1_800_000_000)
        db = open_test_database(self)
        components = self.successResultOf(Deferred.fromCoroutine(
            _build_on_database(config, clock, db, MachinePrivate.generate(), None)))
        plane = components.plane
        self.addCleanup(plane.stop)
        self.assertEqual(plane.audit.retention, 7200.0)
        self.assertTrue(plane.audit.instance.endswith(f":{os.getpid()}"))
        [timer] = [s for s in components.services if isinstance(s, TimerService) and s.step == AUDIT_PRUNE_INTERVAL]
        self.assertIs(timer.clock, clock)
        self.successResultOf(Deferred.fromCoroutine(plane.audit.record("user.create", Target("user", "1", "old"))))
        clock.advance(7200 + 1)
        timer.startService()  # runs the job at once
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(plane.audit.list())), [])
        self.assertTrue(clock.getDelayedCalls())
        self.successResultOf(timer.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
