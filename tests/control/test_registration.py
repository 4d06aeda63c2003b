"""Tests for headscale_tw.control.registration."""

from datetime import timedelta

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from headscale_tw.config.model import Config, DNSConfig, NodeConfig
from headscale_tw.control.audit import AuditLog
from headscale_tw.control.authrequests import REJECTED, AuthRequests
from headscale_tw.control.registration import MAX_DETAILS_BYTES, MachineKeyMismatch, Registrar
from headscale_tw.control.state import TAGGED_DEVICES_USER_ID
from headscale_tw.errors import Conflict, InvalidInput, NotFound
from tests.control._harness import Harness, key


def _body(node_key, **extra):
    body = {
        "Version": 133,
        "NodeKey": node_key,
        "OldNodeKey": "nodekey:" + "0" * 64,
        "Expiry": "0001-01-01T00:00:00Z",
        "Followup": "",
        "Hostinfo": {"Hostname": "laptop"},
    }
    body.update(extra)
    return body


class AuthKeyTests(unittest.TestCase):
    """Pre-auth keys: single-use, reusable, expired, ephemeral, tagged."""

    def setUp(self):
        self.h = Harness(self)

    def test_success_response(self):
        """A valid key registers the node and answers User, Login and MachineAuthorized."""
        self.h.make_key("one")
        node, response = self.h.register("laptop", auth="one")
        self.assertEqual(response["User"]["ID"], self.h.user.id)
        self.assertEqual(response["Login"]["LoginName"], "alice@example.com")
        self.assertTrue(response["MachineAuthorized"])
        self.assertNotIn("AuthURL", response)
        self.assertEqual((node.given_name, node.user_id, node.register_method), ("laptop", self.h.user.id, "authkey"))
        self.assertTrue(self.h.run(self.h.db.preauthkeys.get(node.auth_key_id)).used)

    def test_single_use_other_machine(self):
        """A used single-use key is refused for another machine with a readable Error."""
        self.h.make_key("one")
        self.h.register("a", auth="one")
        node, response = self.h.register("b", auth="one")
        self.assertEqual(response, {"Error": "authkey already used"})
        self.assertIsNone(node)

    def test_single_use_same_machine_idempotent(self):
        """The same machine may retry with its used single-use key (fresh node key too)."""
        self.h.make_key("one")
        mkey = key("mkey")
        first, _ = self.h.register("a", auth="one", machine_key=mkey)
        again, response = self.h.register("a", auth="one", machine_key=mkey)
        self.assertTrue(response["MachineAuthorized"])
        self.assertEqual(first.id, again.id)
        self.assertEqual(len(self.h.state.nodes), 1)

    def test_reusable(self):
        """A reusable key registers several machines."""
        self.h.make_key("many", reusable=True)
        a, _ = self.h.register("a", auth="many")
        b, _ = self.h.register("b", auth="many")
        self.assertNotEqual(a.id, b.id)

    def test_invalid(self):
        """An unknown key gives Error "invalid auth key"."""
        _, response = self.h.register("a", auth="nope")
        self.assertEqual(response, {"Error": "invalid auth key"})

    def test_expired(self):
        """An expired key gives Error "authkey expired"."""
        self.h.make_key("old", expiration=self.h.now() - timedelta(seconds=1))
        _, response = self.h.register("a", auth="old")
        self.assertEqual(response, {"Error": "authkey expired"})

    def test_ephemeral(self):
        """An ephemeral key makes an ephemeral node."""
        self.h.make_key("eph", ephemeral=True)
        node, _ = self.h.register("a", auth="eph")
        self.assertTrue(node.ephemeral)

    def test_tagged(self):
        """A tagged key makes a tagged node owned by no user and never expiring."""
        h = Harness(self, config=Config(node=NodeConfig(expiry=3600.0), dns=DNSConfig(base_domain="t.example")))
        h.make_key("tag", tags=("tag:server",))
        node, response = h.register("srv", auth="tag")
        self.assertEqual(node.tags, ("tag:server",))
        self.assertIsNone(node.user_id)
        self.assertIsNone(node.expiry)
        self.assertEqual(response["User"]["ID"], TAGGED_DEVICES_USER_ID)

    def test_node_expiry(self):
        """node.expiry sets the key expiry; a sooner requested Expiry wins."""
        h = Harness(self, config=Config(node=NodeConfig(expiry=3600.0), dns=DNSConfig(base_domain="t.example")))
        node, _ = h.register("a")
        self.assertEqual(node.expiry, h.now() + timedelta(hours=1))
        sooner = h.now() + timedelta(minutes=5)
        node, _ = h.register("b", Expiry=sooner.strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.assertEqual(node.expiry, sooner)

    def test_collision_names(self):
        """Two nodes with one hostname get name and name-1."""
        a, _ = self.h.register("box")
        b, _ = self.h.register("box")
        self.assertEqual((a.given_name, b.given_name), ("box", "box-1"))


class KnownNodeTests(unittest.TestCase):
    """Restarts, rotation, logout and machine-key binding."""

    def setUp(self):
        self.h = Harness(self)
        self.mkey = key("mkey")
        self.node, _ = self.h.register("a", machine_key=self.mkey)

    def test_restart_idempotent(self):
        """Re-registering the current node key without auth succeeds and creates nothing."""
        response = self.h.run(self.h.registrar.register(self.mkey, _body(self.node.node_key)))
        self.assertTrue(response["MachineAuthorized"])
        self.assertEqual(len(self.h.state.nodes), 1)

    def test_other_machine_rejected(self):
        """A node key presented by another machine key is refused."""
        d = Deferred.fromCoroutine(self.h.registrar.register(key("mkey"), _body(self.node.node_key)))
        self.failureResultOf(d, MachineKeyMismatch)

    def test_rotation(self):
        """OldNodeKey rotation keeps the node and its addresses and tells peers the new key."""
        peer, _ = self.h.register("peer")
        stream = self.h.stream(peer)
        new_key = key("nodekey")
        response = self.h.run(
            self.h.registrar.register(self.mkey, _body(new_key, OldNodeKey=self.node.node_key))
        )
        self.assertTrue(response["MachineAuthorized"])
        rotated = self.h.state.get(self.node.id)
        self.assertEqual((rotated.node_key, rotated.ipv4), (new_key, self.node.ipv4))
        self.assertIsNone(self.h.state.by_node_key(self.node.node_key))
        self.assertEqual(stream.applier.peers[self.node.id]["Key"], new_key)

    def test_rotation_other_machine(self):
        """Another machine cannot rotate this node's key; it is sent to interactive login."""
        response = self.h.run(
            self.h.registrar.register(key("mkey"), _body(key("nodekey"), OldNodeKey=self.node.node_key))
        )
        self.assertIn("AuthURL", response)
        self.assertEqual(self.h.state.get(self.node.id).node_key, self.node.node_key)

    def test_logout(self):
        """A past Expiry expires the node (even with Auth present) and peers see it expired."""
        peer, _ = self.h.register("peer")
        stream = self.h.stream(peer)
        body = _body(self.node.node_key, Expiry="1970-01-01T00:02:03Z", Auth={"AuthKey": self.h.keys["reusable"]})
        response = self.h.run(self.h.registrar.register(self.mkey, body))
        self.assertTrue(response["NodeKeyExpired"])
        self.assertEqual(self.h.state.get(self.node.id).expiry, self.h.now())
        self.assertTrue(stream.applier.peers[self.node.id]["Expired"])
        # Re-registering the expired key without auth now needs a login.
        again = self.h.run(self.h.registrar.register(self.mkey, _body(self.node.node_key)))
        self.assertIn("AuthURL", again)

    def test_logout_ephemeral_deletes(self):
        """Logging out an ephemeral node deletes it."""
        self.h.make_key("eph", ephemeral=True)
        mkey = key("mkey")
        node, _ = self.h.register("e", auth="eph", machine_key=mkey)
        self.h.run(self.h.registrar.register(mkey, _body(node.node_key, Expiry="1970-01-01T00:02:03Z")))
        self.assertNotIn(node.id, self.h.state.nodes)

    def test_malformed(self):
        """A body without a valid NodeKey is rejected naming the field."""
        d = Deferred.fromCoroutine(self.h.registrar.register(self.mkey, {"NodeKey": "nodekey:zz"}))
        self.assertIn("NodeKey", str(self.failureResultOf(d, InvalidInput).value))


class InteractiveTests(unittest.TestCase):
    """Interactive login: AuthURL, held Followup, admin completion, timeout."""

    def setUp(self):
        self.h = Harness(self)
        self.mkey = key("mkey")
        self.nkey = key("nodekey")

    def _start(self):
        response = self.h.run(self.h.registrar.register(self.mkey, _body(self.nkey)))
        url = response["AuthURL"]
        self.assertTrue(url.startswith("https://hs.example.com/register/"), url)
        return url, url.rpartition("/")[2]

    def test_auth_url_stable(self):
        """Asking again before completing returns the same AuthURL."""
        first, _ = self._start()
        second, _ = self._start()
        self.assertEqual(first, second)

    def test_followup_released_by_auth_register(self):
        """The held Followup answers success once the admin registers the id to a user."""
        url, auth_id = self._start()
        held = Deferred.fromCoroutine(self.h.registrar.register(self.mkey, _body(self.nkey, Followup=url)))
        self.assertNoResult(held)
        node = self.h.run(self.h.admin.register(auth_id, "alice"))
        response = self.successResultOf(held)
        self.assertTrue(response["MachineAuthorized"])
        self.assertEqual(response["Login"]["LoginName"], "alice@example.com")
        self.assertEqual((node.node_key, node.user_id, node.register_method), (self.nkey, self.h.user.id, "cli"))
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_granted_until_replaces_node_expiry(self):
        """A completion with ``granted_until`` (an ID token's expiry) sets the node's expiry instead of ``node.expiry``."""
        h = self.h = Harness(self, config=Config(node=NodeConfig(expiry=3600.0), dns=DNSConfig(base_domain="t.example"),
                                                 server_url="https://hs.example.com"))
        _, auth_id = self._start()
        until = h.now() + timedelta(minutes=7)
        node = h.run(h.registrar.complete(auth_id, "alice", granted_until=until))
        self.assertEqual(node.expiry, until)
        self.assertEqual(h.state.get(node.id).expiry, until)

    def test_register_method_recorded(self):
        """A completion by an OIDC sign-in is stored with register method ``oidc`` (Headscale's REGISTER_METHOD_OIDC)."""
        _, auth_id = self._start()
        node = self.h.run(self.h.registrar.complete(auth_id, "alice", register_method="oidc"))
        self.assertEqual(node.register_method, "oidc")
        self.assertEqual(self.h.state.get(node.id).register_method, "oidc")

    def test_followup_after_completion(self):
        """A Followup arriving after completion is answered at once."""
        url, auth_id = self._start()
        self.h.run(self.h.admin.register(auth_id, "alice"))
        response = self.h.run(self.h.registrar.register(self.mkey, _body(self.nkey, Followup=url)))
        self.assertTrue(response["MachineAuthorized"])

    def test_followup_timeout(self):
        """A held Followup ends with the same AuthURL after the timeout."""
        url, _ = self._start()
        held = Deferred.fromCoroutine(self.h.registrar.register(self.mkey, _body(self.nkey, Followup=url)))
        self.h.clock.advance(self.h.registrar.followup_timeout)
        self.assertEqual(self.successResultOf(held), {"AuthURL": url})

    def test_unknown_user_or_id(self):
        """Completing with an unknown user or id raises NotFound."""
        _, auth_id = self._start()
        self.failureResultOf(Deferred.fromCoroutine(self.h.admin.register(auth_id, "nobody")), NotFound)
        self.failureResultOf(Deferred.fromCoroutine(self.h.admin.register("nope", "alice")), NotFound)

    def test_pending_forgotten(self):
        """Stale pending registrations are dropped by the sweep."""
        _, auth_id = self._start()
        self.h.clock.advance(self.h.registrar.auth_requests.lifetime + 1)
        self.assertEqual(self.h.run(self.h.lifecycle.forget_stale_registrations()), 1)
        self.assertIsNone(self.h.run(self.h.registrar.get_pending(auth_id)))
        self.assertIsNone(self.h.run(self.h.db.auth_requests.get(auth_id)))


def _registrar(h, **limits):
    """A Registrar over ``h``'s state whose auth requests have the given caps."""
    requests = AuthRequests(h.db.auth_requests, h.clock, h.state.now, **limits)
    return Registrar(h.state, h.notifier, h.mapper, h.config, h.clock, auth_requests=requests, policy=h.policy)


class PendingRegistrationTests(unittest.TestCase):
    """Interactive registrations are database rows: capped, expiring, small, rejectable, restart-safe."""

    def setUp(self):
        self.h = Harness(self)

    def start(self, registrar=None, source="192.0.2.10", machine_key=None, node_key=None, **hostinfo):
        registrar = registrar or self.h.registrar
        info = {"Hostname": "laptop", "OS": "linux"}
        info.update(hostinfo)
        return self.h.run(registrar.register(machine_key or key("mkey"), _body(node_key or key("nodekey"),
                                                                              Hostinfo=info), source=source))

    def held(self, registrar, machine_key, node_key, url, source="192.0.2.10"):
        return Deferred.fromCoroutine(registrar.register(machine_key, _body(node_key, Followup=url), source=source))

    def test_per_source_cap(self):
        """A source's N+1th registration is refused with an error naming the limit; other sources still register."""
        registrar = _registrar(self.h, max_per_source=3, max_total=100)
        for _ in range(3):
            self.assertIn("AuthURL", self.start(registrar))
        refused = self.start(registrar)
        self.assertEqual(list(refused), ["Error"])
        self.assertIn("limit 3", refused["Error"])
        self.assertIn("AuthURL", self.start(registrar, source="198.51.100.20"))
        self.assertEqual(self.h.run(self.h.db.auth_requests.count_pending("192.0.2.10")), 3)

    def test_total_cap(self):
        """Past the total cap every source is refused, naming the server-wide limit."""
        registrar = _registrar(self.h, max_per_source=100, max_total=4)
        for n in range(4):
            self.assertIn("AuthURL", self.start(registrar, source=f"192.0.2.{n}"))
        self.assertIn("on this server (limit 4)", self.start(registrar, source="203.0.113.1")["Error"])

    def test_asking_again_is_not_counted(self):
        """A client asking again gets its own URL back even when its source is at the cap."""
        registrar = _registrar(self.h, max_per_source=1, max_total=100)
        mkey, nkey = key("mkey"), key("nodekey")
        first = self.start(registrar, machine_key=mkey, node_key=nkey)
        self.assertEqual(self.start(registrar, machine_key=mkey, node_key=nkey), first)
        self.assertIn("Error", self.start(registrar))

    def test_expiry(self):
        """After its lifetime a registration can no longer be finished and the client gets a new URL."""
        mkey, nkey = key("mkey"), key("nodekey")
        url = self.start(machine_key=mkey, node_key=nkey)["AuthURL"]
        auth_id = url.rpartition("/")[2]
        self.h.clock.advance(self.h.registrar.auth_requests.lifetime)
        self.assertIsNone(self.h.run(self.h.registrar.get_pending(auth_id)))
        error = self.failureResultOf(Deferred.fromCoroutine(self.h.admin.register(auth_id, "alice")), NotFound)
        self.assertIn("expired", str(error.value))
        again = self.successResultOf(self.held(self.h.registrar, mkey, nkey, url))
        self.assertNotEqual(again["AuthURL"], url)
        self.assertEqual(self.h.run(self.h.lifecycle.forget_stale_registrations()), 1)

    def test_reject_tells_the_waiting_client(self):
        """auth reject answers the held Followup with the rejection, and later Followups too."""
        mkey, nkey = key("mkey"), key("nodekey")
        url = self.start(machine_key=mkey, node_key=nkey)["AuthURL"]
        auth_id = url.rpartition("/")[2]
        held = self.held(self.h.registrar, mkey, nkey, url)
        self.assertNoResult(held)
        row = self.h.run(self.h.registrar.reject(auth_id))
        self.assertEqual((row.state, row.reason), ("rejected", REJECTED))
        self.assertEqual(self.successResultOf(held), {"Error": REJECTED})
        self.assertEqual(self.successResultOf(self.held(self.h.registrar, mkey, nkey, url)), {"Error": REJECTED})
        self.failureResultOf(Deferred.fromCoroutine(self.h.admin.register(auth_id, "alice")), NotFound)
        self.assertIsNone(self.h.state.by_machine_key(mkey))
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_approve_registration_refused(self):
        """auth approve does not finish a node registration (that needs a user): Conflict, still pending."""
        auth_id = self.start()["AuthURL"].rpartition("/")[2]
        error = self.failureResultOf(Deferred.fromCoroutine(self.h.registrar.approve(auth_id)), Conflict)
        self.assertIn("auth register", str(error.value))
        self.assertEqual(self.h.run(self.h.registrar.get_pending(auth_id)).state, "pending")

    def test_failed_node_write_leaves_it_pending(self):
        """When the node cannot be written (e.g. no free address) the login stays open and a retry finishes it."""
        mkey, nkey = key("mkey"), key("nodekey")
        url = self.start(machine_key=mkey, node_key=nkey)["AuthURL"]
        auth_id = url.rpartition("/")[2]
        held = self.held(self.h.registrar, mkey, nkey, url)

        async def no_address(**fields):
            raise RuntimeError("no free address")

        original = self.h.state.create_node
        self.patch(self.h.state, "create_node", no_address)
        self.failureResultOf(Deferred.fromCoroutine(self.h.admin.register(auth_id, "alice")), RuntimeError)
        self.assertEqual(self.h.run(self.h.registrar.get_pending(auth_id)).user_id, None)
        self.assertNoResult(held)
        self.patch(self.h.state, "create_node", original)
        self.h.run(self.h.admin.register(auth_id, "alice"))
        self.assertTrue(self.successResultOf(held)["MachineAuthorized"])

    def test_timeout_rereads_the_row(self):
        """A change whose wake-up never arrived is seen when the held Followup's timeout re-reads the row."""
        mkey, nkey = key("mkey"), key("nodekey")
        url = self.start(machine_key=mkey, node_key=nkey)["AuthURL"]
        held = self.held(self.h.registrar, mkey, nkey, url)
        # Written straight to the store, as another instance would, without a notification here.
        self.h.run(self.h.db.auth_requests.finish(url.rpartition("/")[2], "rejected", reason="refused elsewhere"))
        self.assertNoResult(held)
        self.h.clock.advance(self.h.registrar.followup_timeout)
        self.assertEqual(self.successResultOf(held), {"Error": "refused elsewhere"})

    def test_survives_restart(self):
        """A registration opened before a restart is finished after it, and the client's Followup succeeds."""
        mkey, nkey = key("mkey"), key("nodekey")
        url = self.start(machine_key=mkey, node_key=nkey)["AuthURL"]
        self.h.registrar.stop()
        restarted = Harness(self, db=self.h.db)
        restarted.clock.advance(60)
        node = restarted.run(restarted.admin.register(url.rpartition("/")[2], "alice"))
        self.assertEqual((node.machine_key, node.node_key, node.hostname), (mkey, nkey, "laptop"))
        response = self.successResultOf(self.held(restarted.registrar, mkey, nkey, url))
        self.assertTrue(response["MachineAuthorized"])

    def test_stored_size_is_bounded(self):
        """The largest Hostinfo accepted leaves a row of a few hundred bytes: only the kept fields are stored."""
        # (a 0.9 MB Hostinfo is refused before this: control/limits.HOSTINFO_MAX_BYTES)
        junk = "x" * 40_000
        url = self.start(Services=[{"Proto": "tcp", "Port": 1, "Description": junk}], Userspace=True,
                         RoutableIPs=["10.0.0.0/8"] * 1000, RequestTags=["tag:a"])["AuthURL"]
        row = self.h.run(self.h.db.auth_requests.get(url.rpartition("/")[2]))
        self.assertEqual(row.details["Hostinfo"], {"Hostname": "laptop", "OS": "linux", "RequestTags": ["tag:a"]})
        stored = self.h.run(self.h.db.pool.run_interaction(
            "size", lambda txn: txn.query_one(
                "SELECT length(details) + length(machine_key) + length(node_key) + length(hostname)"
                " + length(source) FROM auth_requests WHERE id = ?", (row.id,))[0]))
        self.assertLess(stored, 512)
        self.assertLess(stored, MAX_DETAILS_BYTES)

    def test_kept_fields_have_limits(self):
        """An over-long kept Hostinfo field or too many requested tags is refused naming the field and limit."""
        long_model = self.h.run(self._refused(DeviceModel="d" * 256))
        self.assertIn("Hostinfo.DeviceModel is longer than 255 characters", long_model)
        # Hostname is refused earlier, at Tailscale's 253 (control/limits.HOSTNAME_MAX_LENGTH)
        long_name = self.h.run(self._refused(Hostname="h" * 256))
        self.assertIn("Hostinfo.Hostname is 256 characters long; the limit is 253", long_name)
        many_tags = self.h.run(self._refused(RequestTags=[f"tag:t{n}" for n in range(33)]))
        self.assertIn("Hostinfo.RequestTags has more than 32 tags", many_tags)
        self.assertEqual(self.h.run(self.h.db.auth_requests.count_pending()), 0)

    async def _refused(self, **hostinfo):
        try:
            await self.h.registrar.register(key("mkey"), _body(key("nodekey"), Hostinfo=hostinfo), source="x")
        except InvalidInput as e:
            return str(e)
        self.fail("the registration was accepted")


class AuthIdTests(unittest.TestCase):
    """Interactive login ids are safe to pass on a command line."""

    def test_alphanumeric(self):
        """Ids are 24 letters or digits, so none can be mistaken for a CLI option."""
        from headscale_tw.control.authrequests import new_auth_id

        ids = {new_auth_id() for _ in range(2000)}
        self.assertEqual(len(ids), 2000)
        for auth_id in ids:
            self.assertRegex(auth_id, r"^[A-Za-z0-9]{24}$")


class RegisterInteractionsTests(unittest.TestCase):
    """The register step with a reusable key: its database interactions are counted."""

    def setUp(self):
        self.h = Harness(self)
        self.audit = AuditLog(self.h.db.audit, self.h.now)
        self.registrar = Registrar(self.h.state, self.h.notifier, self.h.mapper, self.h.config, self.h.clock,
                                   audit=self.audit, policy=self.h.policy)
        self.h.make_key("reusable", reusable=True)
        self.interactions: list[str] = []
        pool = self.h.db.pool
        original = pool.run_interaction

        def counting(desc, fn, *args):
            self.interactions.append(desc)
            return original(desc, fn, *args)

        self.patch(pool, "run_interaction", counting)
        self._register(key("mkey"))  # warm-up: the server's pepper is read once, as on a running server
        del self.interactions[:]

    def _register(self, machine_key: str):
        body = _body(key("nodekey"), Auth={"AuthKey": self.h.keys["reusable"]})
        return self.h.run(self.registrar.register(machine_key, body, source="192.0.2.7"))

    def test_new_node_and_its_audit_row_are_one_interaction(self):
        """A new node costs the key lookup and one interaction holding the node and its audit row (was three)."""
        mkey = key("mkey")
        self.assertTrue(self._register(mkey)["MachineAuthorized"])
        self.assertEqual(self.interactions, ["get_preauthkey_by_prefix", "create_node"])
        node = self.h.state.by_machine_key(mkey)
        events = self.h.run(self.audit.list(action="node.register"))
        self.assertEqual([(e.target_id, e.target_name, e.actor_kind, e.source) for e in events
                          if e.target_id == str(node.id)],
                         [(str(node.id), node.given_name, "preauth_key", "192.0.2.7")])
        self.assertEqual(events[0].detail["machine_key"], mkey)

    def test_update_records_its_audit_row_after(self):
        """Re-registering an existing machine updates the node and still records its audit row."""
        mkey = key("mkey")
        self._register(mkey)
        self._register(mkey)
        events = self.h.run(self.audit.list(action="node.register"))
        self.assertEqual(len([e for e in events if e.detail["machine_key"] == mkey]), 2)
        self.assertIn("add_audit_event", self.interactions)
