"""Tests for headscale_tw.control.ssh_check and the ``/machine/ssh/action`` resource."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred
from twisted.trial import unittest
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from headscale_tw.control.poll import Unauthorized
from headscale_tw.control.ssh_check import HOLD_TIMEOUT, ApprovalMemory, SSHChecks
from headscale_tw.errors import InvalidInput, NotFound
from headscale_tw.web.control_api import MachineResource
from headscale_tw.web.plane_resources import ssh_check_page
from tests.nodesapi._harness import NOW, PlaneHarness, new_key

CHECK = """{
  "tagOwners": {"tag:server": ["bob@"]},
  "ssh": [
    {"action": "check", "src": ["alice@"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "1h"},
  ],
}"""

ALWAYS = CHECK.replace('"1h"', '"always"')

SELF = """{
  "tagOwners": {"tag:server": ["bob@"]},
  "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}],
}"""


class _Pair:
    """A plane with alice's ``laptop`` and ``phone`` and ``server`` (tagged by bob), under ``policy``."""

    def setUp(self, policy: str = CHECK) -> None:
        self.h = PlaneHarness(self)
        self.bob = self.h.add_user("bob")
        self.h.run(self.h.plane.admin.policy.set(policy))
        self.laptop = self.h.register("laptop")
        self.phone = self.h.register("phone")
        self.server = self.h.register("server", key=self.h.auth_key(user_id=self.bob.id, tags=("tag:server",)))
        self.checks: SSHChecks = self.h.plane.ssh_checks

    def ask(self, src=None, dst=None, auth_id: str = "", machine_key: str | None = None) -> Deferred:
        """Fetch the action URL as the destination's tailscaled would; the Deferred of its answer."""
        src = self.laptop if src is None else src
        dst = self.server if dst is None else dst
        query = {"local_user": "root"}
        if auth_id:
            query["auth_id"] = auth_id
        key = dst.machine_key if machine_key is None else machine_key
        return Deferred.fromCoroutine(self.checks.action(key, str(src.id), str(dst.id), query, source="192.0.2.9"))

    def answer(self, *args, **kwargs) -> dict:
        """:meth:`ask`, which must answer at once."""
        return self.successResultOf(self.ask(*args, **kwargs))

    def hold(self, src=None, dst=None) -> str:
        """Open a check; return its auth id."""
        first = self.answer(src, dst)
        return parse_qs(urlsplit(first["holdAndDelegate"]).query)["auth_id"][0]


class FirstFetchTests(_Pair, unittest.TestCase):
    """The first fetch of a check opens a pending auth request and delegates."""

    def test_hold_and_delegate(self):
        """The answer delegates to the same route with an auth id, and tells the person where to approve."""
        first = self.answer()
        url = urlsplit(first["holdAndDelegate"])
        self.assertEqual(url.path, "/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID")
        auth_id = parse_qs(url.query)["auth_id"][0]
        self.assertIn("local_user=$LOCAL_USER", url.query)
        self.assertIn(f"https://hs.example.com/auth/{auth_id}", first["message"])
        self.assertIn(f"headscale auth approve --auth-id {auth_id}", first["message"])
        self.assertNotIn("accept", first)

    def test_pending_request_stored(self):
        """The pending request is an ssh_check bound to the pair, with the usual lifetime."""
        auth_id = self.hold()
        row = self.h.run(self.h.plane.auth_requests.get(auth_id))
        self.assertEqual((row.kind, row.state, row.source), ("ssh_check", "pending", "192.0.2.9"))
        self.assertEqual((row.details["src_node_id"], row.details["dst_node_id"]), (self.laptop.id, self.server.id))
        self.assertEqual(row.details["src_user_id"], self.h.user.id)
        self.assertEqual(row.expires_at - row.created_at, timedelta(seconds=self.h.plane.auth_requests.lifetime))
        self.assertIsNotNone(self.successResultOf(Deferred.fromCoroutine(self.checks.pending(auth_id))))

    def test_two_checks_coexist(self):
        """Two connections to one node wait on two requests: the second does not supersede the first."""
        first, second = self.hold(), self.hold(src=self.phone)
        self.assertNotEqual(first, second)
        for auth_id in (first, second):
            self.assertEqual(self.h.run(self.h.plane.auth_requests.get(auth_id)).state, "pending")

    def test_bounded_pending(self):
        """Past the cap of pending requests the connection is rejected, naming the limit."""
        self.checks.auth_requests.max_per_source = 2
        self.hold()
        self.hold()
        third = self.answer()
        self.assertTrue(third["reject"])
        self.assertIn("too many pending SSH checks from 192.0.2.9 (limit 2)", third["message"])


class FollowUpTests(_Pair, unittest.TestCase):
    """The follow-up fetch waits for an approval or a rejection, for a bounded time."""

    def test_approve_accepts(self):
        """`auth approve` releases the held follow-up with accept."""
        auth_id = self.hold()
        held = self.ask(auth_id=auth_id)
        self.assertNoResult(held)
        status, _ = self.h.request("POST", "/api/v1/auth/approve", {"authId": auth_id})
        self.assertEqual(status, 200)
        action = self.successResultOf(held)
        self.assertTrue(action["accept"])
        self.assertNotIn("reject", action)

    def test_reject_refuses(self):
        """`auth reject` releases the held follow-up with reject and a reason."""
        auth_id = self.hold()
        held = self.ask(auth_id=auth_id)
        self.assertEqual(self.h.request("POST", "/api/v1/auth/reject", {"authId": auth_id})[0], 200)
        action = self.successResultOf(held)
        self.assertTrue(action["reject"])
        self.assertIn("rejected by an administrator", action["message"])

    def test_timeout_delegates_again(self):
        """Still pending after the hold timeout, the same auth id is handed back without a new banner."""
        auth_id = self.hold()
        held = self.ask(auth_id=auth_id)
        self.h.clock.advance(HOLD_TIMEOUT)
        again = self.successResultOf(held)
        self.assertIn(f"auth_id={auth_id}", again["holdAndDelegate"])
        self.assertNotIn("message", again)
        self.assertEqual(self.checks.auth_requests.waiting, 0)

    def test_expired_request_rejected(self):
        """A follow-up on a check that expired unanswered is rejected: the wait is bounded by its lifetime."""
        auth_id = self.hold()
        self.h.clock.advance(self.h.plane.auth_requests.lifetime + 1)
        action = self.answer(auth_id=auth_id)
        self.assertTrue(action["reject"])
        self.assertIn("not approved in time", action["message"])

    def test_expires_while_held(self):
        """A check expiring while its follow-up is held is answered reject when the hold ends."""
        auth_id = self.hold()
        self.h.clock.advance(self.h.plane.auth_requests.lifetime - 1)
        held = self.ask(auth_id=auth_id)
        self.h.clock.advance(HOLD_TIMEOUT)
        self.assertTrue(self.successResultOf(held)["reject"])

    def test_unknown_auth_id_rejected(self):
        """A follow-up naming an auth id the server does not know (swept, or never issued) is rejected."""
        self.assertTrue(self.answer(auth_id="A" * 24)["reject"])

    def test_other_pair_rejected(self):
        """An auth id bound to another source is refused, and the check itself stays pending."""
        auth_id = self.hold()
        action = self.answer(src=self.phone, auth_id=auth_id)
        self.assertTrue(action["reject"])
        self.assertEqual(self.h.run(self.h.plane.auth_requests.get(auth_id)).state, "pending")

    def test_registration_id_rejected(self):
        """The auth id of a node registration is not an SSH check."""
        _, auth_id = self.h.start_interactive()
        self.assertTrue(self.answer(auth_id=auth_id)["reject"])

    def test_client_gone(self):
        """A follow-up whose client goes away leaves no waiter behind."""
        held = self.ask(auth_id=self.hold())
        held.cancel()
        self.failureResultOf(held)
        self.assertEqual(self.checks.auth_requests.waiting, 0)


class CheckPeriodTests(_Pair, unittest.TestCase):
    """Within checkPeriod of an approval the same user proceeds at once."""

    def approve_once(self, src=None) -> None:
        auth_id = self.hold(src)
        held = self.ask(src, auth_id=auth_id)
        self.h.run(self.h.plane.registrar.approve(auth_id))
        self.assertTrue(self.successResultOf(held)["accept"])

    def test_within_period(self):
        """A second connection within the period is accepted without a new request."""
        self.approve_once()
        before = self.h.run(self.h.db.auth_requests.count_pending())
        self.assertTrue(self.answer()["accept"])
        self.assertEqual(self.h.run(self.h.db.auth_requests.count_pending()), before)

    def test_same_user_other_node(self):
        """The approval covers the user's other nodes too (the check is of the person)."""
        self.approve_once()
        self.assertTrue(self.answer(src=self.phone)["accept"])

    def test_after_period(self):
        """An hour later the check is asked again."""
        self.approve_once()
        self.h.clock.advance(3600)
        self.assertIn("holdAndDelegate", self.answer())

    def test_policy_change_forgets(self):
        """A new policy forgets earlier approvals."""
        self.approve_once()
        self.h.run(self.h.plane.admin.policy.set(CHECK.replace('"1h"', '"2h"')))
        self.assertIn("holdAndDelegate", self.answer())

    def test_always(self):
        """With checkPeriod "always" every connection is checked."""
        self.h.run(self.h.plane.admin.policy.set(ALWAYS))
        self.approve_once()
        self.assertIn("holdAndDelegate", self.answer())

    def test_default_period(self):
        """A check rule without checkPeriod keeps an approval for 12 hours."""
        self.h.run(self.h.plane.admin.policy.set(CHECK.replace(', "checkPeriod": "1h"', "")))
        self.approve_once()
        self.h.clock.advance(11 * 3600)
        self.assertTrue(self.answer()["accept"])
        self.h.clock.advance(3600)
        self.assertIn("holdAndDelegate", self.answer())


class RefusalTests(_Pair, unittest.TestCase):
    """Requests the policy does not cover are rejected; malformed ones are errors."""

    def test_not_in_policy(self):
        """A pair no check rule covers (server to laptop) is rejected at once, and nothing is stored."""
        action = self.answer(src=self.server, dst=self.laptop)
        self.assertTrue(action["reject"])
        self.assertIn("no SSH check rule", action["message"])
        self.assertEqual(self.h.run(self.h.db.auth_requests.count_pending()), 0)

    def test_no_policy(self):
        """Without a policy (allow all, no ssh section) there is nothing to check: reject."""
        self.h.run(self.h.plane.admin.policy.set('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'))
        self.assertTrue(self.answer()["reject"])

    def test_unknown_source(self):
        """A source node id the server does not know is rejected."""
        d = Deferred.fromCoroutine(self.checks.action(self.server.machine_key, "999", str(self.server.id), {}))
        self.assertTrue(self.successResultOf(d)["reject"])

    def test_unknown_destination(self):
        """An unknown destination node is NotFound."""
        d = Deferred.fromCoroutine(self.checks.action(self.server.machine_key, str(self.laptop.id), "999", {}))
        self.failureResultOf(d, NotFound)

    def test_not_the_destination(self):
        """Only the destination node itself may ask."""
        self.failureResultOf(self.ask(machine_key=self.laptop.machine_key), Unauthorized)
        self.failureResultOf(self.ask(machine_key=new_key("mkey")), Unauthorized)

    def test_bad_ids(self):
        """Node ids must be positive decimal integers below 2**63; auth ids letters and digits."""
        for src, dst in (("x", "1"), ("1", "-2"), ("0", "1"), ("1", str(2**63)), ("1" * 20, "1"), ("", "1")):
            d = Deferred.fromCoroutine(self.checks.action(self.server.machine_key, src, dst, {}))
            self.failureResultOf(d, InvalidInput)
        self.failureResultOf(self.ask(auth_id="../x"), InvalidInput)
        self.failureResultOf(self.ask(auth_id="a" * 65), InvalidInput)


class SelfRuleTests(_Pair, unittest.TestCase):
    """autogroup:self covers a user's own nodes only."""

    def setUp(self):
        super().setUp(SELF)

    def test_own_node(self):
        """alice's laptop to alice's phone is a check."""
        self.assertIn("holdAndDelegate", self.answer(src=self.laptop, dst=self.phone))

    def test_other_users_node(self):
        """alice's laptop to the tagged server is not covered."""
        self.assertTrue(self.answer()["reject"])


class ApprovalMemoryTests(unittest.TestCase):
    """The approval memory is bounded and tied to one policy."""

    def test_bounded(self):
        """Past its limit the oldest approval is forgotten."""
        memory = ApprovalMemory(limit=2)
        policy = object()
        for n in range(3):
            memory.remember(("user", n, 1), NOW, policy)
        self.assertEqual(len(memory), 2)
        self.assertFalse(memory.recent(("user", 0, 1), NOW, 60, policy))
        self.assertTrue(memory.recent(("user", 2, 1), NOW, 60, policy))

    def test_other_policy(self):
        """An approval made under another policy does not count."""
        memory = ApprovalMemory()
        memory.remember(("node", 1, 2), NOW, object())
        self.assertFalse(memory.recent(("node", 1, 2), NOW, 60, object()))


class _Get(DummyRequest):
    def __init__(self, path: bytes, identity):
        super().__init__(path.lstrip(b"/").split(b"/")[1:])
        self.method = b"GET"
        self.uri = path
        self.content = io.BytesIO()
        self.identity = identity
        query = urlsplit(path.decode()).query
        self.postpath = [p for p in urlsplit(path.decode()).path.encode().lstrip(b"/").split(b"/")[1:]]
        for name, values in parse_qs(query).items():
            for value in values:
                self.addArg(name.encode(), value.encode())


class ResourceTests(_Pair, unittest.TestCase):
    """``GET /machine/ssh/action/<src>/to/<dst>`` inside the Noise channel."""

    def setUp(self):
        super().setUp()
        plane = self.h.plane
        self.root = MachineResource(plane.registrar, plane.poll, plane.notifier, identify=lambda r: r.identity,
                                    ssh_checks=plane.ssh_checks)

    def get(self, path: str, machine_key: str | None = None, identity=True) -> DummyRequest:
        key = self.server.machine_key if machine_key is None else machine_key
        request = _Get(path.encode(), (key, 133) if identity else None)
        child = getChildForRequest(self.root, request)
        result = child.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def test_json_answer(self):
        """A check answers 200 with the SSHAction as JSON."""
        request = self.get(f"/machine/ssh/action/{self.laptop.id}/to/{self.server.id}?local_user=root")
        self.assertEqual(request.responseCode or 200, 200)
        body = json.loads(b"".join(request.written))
        self.assertIn("holdAndDelegate", body)

    def test_held_until_approved(self):
        """The follow-up is answered only once the check is approved."""
        auth_id = self.hold()
        request = self.get(f"/machine/ssh/action/{self.laptop.id}/to/{self.server.id}?auth_id={auth_id}")
        self.assertEqual(request.written, [])
        self.h.run(self.h.plane.registrar.approve(auth_id))
        self.assertTrue(json.loads(b"".join(request.written))["accept"])

    def test_statuses(self):
        """Malformed ids 400, unknown destination 404, another machine 401, wrong shape 404, no Noise 401."""
        src, dst = self.laptop.id, self.server.id
        cases = [
            (f"/machine/ssh/action/x/to/{dst}", None, True, 400),
            (f"/machine/ssh/action/{src}/to/{dst}?auth_id=%2F", None, True, 400),
            (f"/machine/ssh/action/{src}/to/999", None, True, 404),
            (f"/machine/ssh/action/{src}/to/{dst}", self.laptop.machine_key, True, 401),
            (f"/machine/ssh/action/{src}/from/{dst}", None, True, 404),
            (f"/machine/ssh/action/{src}/to/{dst}/more", None, True, 404),
            (f"/machine/ssh/action/{src}/to/{dst}", None, False, 401),
        ]
        for path, machine_key, identity, status in cases:
            self.assertEqual(self.get(path, machine_key, identity).responseCode, status, path)

    def test_without_ssh_checks(self):
        """A MachineResource built without SSH checks answers 404 there."""
        plane = self.h.plane
        root = MachineResource(plane.registrar, plane.poll, plane.notifier, identify=lambda r: r.identity)
        request = _Get(f"/machine/ssh/action/{self.laptop.id}/to/{self.server.id}".encode(),
                       (self.server.machine_key, 133))
        child = getChildForRequest(root, request)
        child.render(request)
        self.assertEqual(request.responseCode, 404)


class CheckPageTests(_Pair, unittest.TestCase):
    """``GET /auth/<auth_id>`` shows how to approve a pending check."""

    def test_page(self):
        """A pending check's page names the approve and reject commands; once approved it is 404."""
        auth_id = self.hold()
        page = ssh_check_page(self.h.plane.ssh_checks)
        request = DummyRequest([auth_id.encode()])
        body = page.render_GET(request)
        self.assertIn(f"headscale auth approve --auth-id {auth_id}".encode(), body)
        self.assertIn(f"headscale auth reject --auth-id {auth_id}".encode(), body)
        self.h.run(self.h.plane.registrar.approve(auth_id))
        request = DummyRequest([auth_id.encode()])
        page.render_GET(request)
        self.assertEqual(request.responseCode, 404)

    def test_registration_is_not_a_check(self):
        """A registration's auth id has no SSH check page."""
        _, auth_id = self.h.start_interactive()
        request = DummyRequest([auth_id.encode()])
        ssh_check_page(self.h.plane.ssh_checks).render_GET(request)
        self.assertEqual(request.responseCode, 404)
