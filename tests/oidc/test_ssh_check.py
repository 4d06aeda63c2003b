# -*- test-case-name: tests.oidc.test_ssh_check -*-
"""Tests for :mod:`headscale_tw.oidc.ssh_check` and ``/auth/<auth_id>`` with OIDC (fake provider)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.client import RelyingParty
from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.oidc.signin import PendingLogins, SignIn
from headscale_tw.oidc.ssh_check import SSHCheckSignIn
from headscale_tw.testing.oidc_fake_provider import FAKE_ISSUER as ISSUER
from headscale_tw.testing.oidc_fake_provider import FakeProvider, shared_signers
from headscale_tw.web.oidc_pages import OIDCCallbackPage, OIDCCheckPage
from tests.nodesapi._harness import NOW, PlaneHarness

POLICY = """{
  "tagOwners": {"tag:server": ["alice@"]},
  "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["root"]}],
}"""

REDIRECT = "https://hs.example.com/oidc/callback"


class _Fixture(unittest.TestCase):
    """A control plane with the person's ``laptop`` (user from the provider), a local user's ``desk``
    and a tagged ``server``; the SSH check sign-in over the fake provider; the pages on a root."""

    def setUp(self) -> None:
        self.h = PlaneHarness(self)
        self.h.run(self.h.plane.admin.policy.set(POLICY))
        self.person = self.h.run(self.h.db.users.sign_in(ISSUER + "/user-1", "person", "alice@example.com",
                                                         "Alice", now=NOW))
        self.laptop = self.h.register("laptop", key=self.h.auth_key(user_id=self.person.id))
        self.desk = self.h.register("desk")  # the local user alice's
        self.server = self.h.register("server", key=self.h.auth_key(tags=("tag:server",)))
        self.signer, _ = shared_signers()
        self.provider = FakeProvider(self.signer)
        self.http = StubTreq(self.provider)
        config = OIDCConfig(issuer=ISSUER, client_id="headscale", client_secret="s", pkce_enabled=True)
        rp = RelyingParty(config, REDIRECT, "s", self.http, self.h.clock)
        self.checks = self.h.plane.ssh_checks
        self.ssh_check = SSHCheckSignIn(rp, self.h.db.users, self.checks, self.h.clock,
                                        PendingLogins(self.h.db.oidc_logins, login_kind="ssh_check"),
                                        audit=self.h.plane.audit)
        registrations = SignIn(rp, self.h.db.users, lambda auth_id: False, self._no_registration, self.h.clock,
                               PendingLogins(self.h.db.oidc_logins))
        root = Resource()
        root.putChild(b"auth", OIDCCheckPage(self.ssh_check))
        oidc = Resource()
        oidc.putChild(b"callback", OIDCCallbackPage(registrations, self.ssh_check))
        root.putChild(b"oidc", oidc)
        self.web = StubTreq(root)

    async def _no_registration(self, auth_id: str, user: Any, expires_at: Any = None) -> Any:
        raise AssertionError("no registration is finished by an SSH check")

    def hold(self, src) -> tuple[str, defer.Deferred]:
        """Open a check from ``src`` to the server and start its follow-up; ``(auth_id, held answer)``."""
        first = self.h.run(self.checks.action(self.server.machine_key, str(src.id), str(self.server.id), {}))
        auth_id = parse_qs(urlsplit(first["holdAndDelegate"]).query)["auth_id"][0]
        held = defer.ensureDeferred(self.checks.action(self.server.machine_key, str(src.id), str(self.server.id),
                                                       {"auth_id": auth_id}))
        return auth_id, held

    def request(self, url: str) -> tuple[int, Any, str]:
        """GET one of our pages; ``(status, headers, body text)``."""
        d = self.web.get("https://hs.example.com" + url, allow_redirects=False)
        for _ in range(4):
            self.web.flush()
            self.http.flush()
        response = self.successResultOf(d)
        return response.code, response.headers, self.successResultOf(self.web.content(response)).decode()

    def sign_in(self, auth_id: str, **claims: Any) -> tuple[int, str]:
        """Follow ``/auth/<auth_id>`` to the provider and back as the person (``claims`` override); the page."""
        status, headers, _ = self.request(f"/auth/{auth_id}")
        self.assertEqual(status, 302)
        location = headers.getRawHeaders("location")[0]
        self.assertTrue(location.startswith(ISSUER + "/auth?"), location)
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        self.provider.id_token = self.signer.token(self.h.clock.seconds(), query["nonce"], **claims)
        self.provider.userinfo = {"sub": claims.get("sub", "user-1")}
        status, _, body = self.request(f"/oidc/callback?state={query['state']}&code=good-code")
        return status, body


class SSHCheckSignInTests(_Fixture):
    """The person who owns the connecting machine approves the check by signing in again."""

    def test_owner_approves(self) -> None:
        """The laptop's owner signs in: the page says so and the held fetch is accepted."""
        auth_id, held = self.hold(self.laptop)
        self.assertNoResult(held)
        status, body = self.sign_in(auth_id)
        self.assertEqual(status, 200, body)
        self.assertIn("SSH connection approved", body)
        self.assertIn("laptop", body)
        self.assertTrue(self.successResultOf(held)["accept"])
        row = self.h.run(self.h.plane.auth_requests.get(auth_id))
        self.assertEqual((row.state, row.user_id), ("approved", self.person.id))

    def test_approval_audited(self) -> None:
        """An approval at the provider is in the audit log as ``auth.approve`` by the signed-in person."""
        auth_id, held = self.hold(self.laptop)
        status, body = self.sign_in(auth_id)
        self.assertEqual(status, 200, body)
        self.successResultOf(held)
        [event] = self.h.run(self.h.db.audit.list(action="auth.approve"))
        self.assertEqual((event.actor_kind, event.target_id), ("oidc", auth_id))
        self.assertIn(ISSUER + "/user-1", event.actor)

    def test_other_person_refused(self) -> None:
        """Somebody else signing in cannot approve the laptop's check; it stays pending."""
        auth_id, held = self.hold(self.laptop)
        status, body = self.sign_in(auth_id, sub="user-2", email="bob@example.com", name="Bob")
        self.assertEqual(status, 403, body)
        self.assertIn(Reason.NOT_SOURCE_OWNER.message, body)
        self.assertNoResult(held)
        self.assertEqual(self.h.run(self.h.plane.auth_requests.get(auth_id)).state, "pending")
        held.cancel()
        self.failureResultOf(held)

    def test_not_owner_of_desk(self) -> None:
        """The person cannot approve a check from a node of the local user alice."""
        auth_id, held = self.hold(self.desk)
        status, _ = self.sign_in(auth_id)
        self.assertEqual(status, 403)
        held.cancel()
        self.failureResultOf(held)

    def test_unknown_check(self) -> None:
        """An unknown or malformed check id is a 404 page, and no sign-in starts."""
        for path in ("/auth/" + "A" * 24, "/auth/a%20b", "/auth/a/b"):
            status, _, body = self.request(path)
            self.assertEqual(status, 404, path)
            self.assertIn(Reason.CHECK_UNKNOWN.message, body)
        self.assertEqual(self.h.run(self.ssh_check.pending.count()), 0)

    def test_answered_meanwhile(self) -> None:
        """A check rejected while the person was at the provider is refused at the callback."""
        auth_id, held = self.hold(self.laptop)
        status, headers, _ = self.request(f"/auth/{auth_id}")
        query = {k: v[0] for k, v in parse_qs(urlsplit(headers.getRawHeaders("location")[0]).query).items()}
        self.h.run(self.h.plane.registrar.reject(auth_id))
        self.assertTrue(self.successResultOf(held)["reject"])
        self.provider.id_token = self.signer.token(self.h.clock.seconds(), query["nonce"])
        status, _, body = self.request(f"/oidc/callback?state={query['state']}&code=good-code")
        self.assertEqual(status, 404, body)

    def test_registration_callback_passes_through(self) -> None:
        """A callback whose state is not an SSH check's goes to the registration sign-in."""
        result = self.successResultOf(defer.ensureDeferred(self.ssh_check.callback({"state": "other"})))
        self.assertIsNone(result)
        status, _, body = self.request("/oidc/callback?state=forged-state&code=x")
        self.assertEqual(status, 400)
        self.assertIn(Reason.UNKNOWN_STATE.message, body)

    def test_begin_refuses_unknown(self) -> None:
        """begin() for an id that is no pending check is refused as CHECK_UNKNOWN."""
        _, auth_id = self.h.start_interactive()
        d = defer.ensureDeferred(self.ssh_check.begin(auth_id))
        self.assertEqual(self.failureResultOf(d, LoginRefused).value.reason, Reason.CHECK_UNKNOWN)
