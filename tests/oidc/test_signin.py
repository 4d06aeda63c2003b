# -*- test-case-name: tests.oidc.test_signin -*-
"""Tests for :mod:`headscale_tw.oidc.signin` and the web pages of :mod:`headscale_tw.web.oidc_pages`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.claims import Identity, user_name_for
from headscale_tw.oidc.client import RelyingParty
from headscale_tw.oidc.login import new_login_record
from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.oidc.signin import Confirmation, PendingLogins, SignIn
from headscale_tw.testing.db import open_test_database, resolve
from headscale_tw.testing.oidc_browser import parse_forms
from headscale_tw.testing.oidc_fake_provider import FAKE_ISSUER as ISSUER
from headscale_tw.testing.oidc_fake_provider import FakeProvider, shared_signers
from headscale_tw.web.oidc_pages import OIDCCallbackPage, OIDCRegisterPage

__all__ = ["AwaitablePendingTests", "PendingLoginsTests", "SignInPagesTests", "SignInTests", "UserSignInStoreTests"]

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
NOW = 1_800_000_000.0
REDIRECT = "https://hs.example.test/oidc/callback"


class PendingLoginsTests(unittest.TestCase):
    """Started logins and confirmations kept in the database, bounded and taken once."""

    def setUp(self) -> None:
        self.db = open_test_database(self)

    def test_login_taken_once(self) -> None:
        """A login is found by its state once, whole; the second take finds nothing."""
        pending = PendingLogins(self.db.oidc_logins)
        record = new_login_record("a1", T0, pkce_enabled=True)
        resolve(pending.add_login(record))
        self.assertEqual(resolve(pending.take_login(record.state)), record)
        self.assertIsNone(resolve(pending.take_login(record.state)))

    def test_confirmation_taken_once(self) -> None:
        """A confirmation comes back with the whole identity once."""
        pending = PendingLogins(self.db.oidc_logins)
        identity = Identity("https://idp", "alice", "a@x", True, "Alice", "ali", "https://p", ("eng", "ops"))
        confirmation = Confirmation("a1", "token", identity, T0 + timedelta(minutes=15))
        resolve(pending.add_confirmation(confirmation, T0))
        self.assertEqual(resolve(pending.take_confirmation("token")), confirmation)
        self.assertIsNone(resolve(pending.take_confirmation("token")))

    def test_bounded(self) -> None:
        """Past the limit the oldest entries go; the table stays at the limit."""
        pending = PendingLogins(self.db.oidc_logins, limit=3)
        records = [new_login_record("a1", T0, pkce_enabled=False) for _ in range(5)]
        for record in records:
            resolve(pending.add_login(record))
        self.assertEqual(resolve(pending.count()), 3)
        self.assertIsNone(resolve(pending.take_login(records[0].state)))
        self.assertEqual(resolve(pending.take_login(records[4].state)), records[4])

    def test_forget_expired(self) -> None:
        """Expired logins and confirmations are dropped; fresh ones stay."""
        pending = PendingLogins(self.db.oidc_logins)
        old = new_login_record("a1", T0, pkce_enabled=False)
        resolve(pending.add_login(old))
        resolve(pending.add_confirmation(Confirmation("a1", "t", Identity("i", "s"), old.expires_at), T0))
        fresh = new_login_record("a1", old.expires_at, pkce_enabled=False)
        resolve(pending.add_login(fresh))
        self.assertEqual(resolve(pending.forget_expired(old.expires_at)), 2)
        self.assertEqual(resolve(pending.count()), 1)


class UserSignInStoreTests(unittest.TestCase):
    """``UserStore.sign_in``: users identified by (issuer, subject)."""

    def setUp(self) -> None:
        self.db = open_test_database(self)

    def test_created_then_kept_current(self) -> None:
        """The first login creates the user; the next updates email, name and picture, not the user name."""
        first = resolve(self.db.users.sign_in("https://idp/alice", "alice", "a@x", "Alice", "https://p/1", now=T0))
        self.assertEqual((first.name, first.provider, first.provider_identifier), ("alice", "oidc", "https://idp/alice"))
        again = resolve(self.db.users.sign_in("https://idp/alice", "alice2", "new@x", "Alice B", "https://p/2"))
        self.assertEqual(again.id, first.id)
        self.assertEqual((again.name, again.email, again.display_name, again.profile_pic_url),
                         ("alice", "new@x", "Alice B", "https://p/2"))

    def test_name_taken_by_another_user(self) -> None:
        """A person whose name an existing user has gets a suffixed name, never that user."""
        local = resolve(self.db.users.create("alice"))
        person = resolve(self.db.users.sign_in("https://idp/alice", "alice"))
        self.assertNotEqual(person.id, local.id)
        self.assertTrue(person.name.startswith("alice-"), person.name)
        self.assertEqual(len(person.name), len("alice-") + 6)

    def test_user_name_for(self) -> None:
        """The user name is the username, else the verified email, else one made from the identifier."""
        self.assertEqual(user_name_for(Identity("i", "s", "a@x.org", True, preferred_username="ali")), "ali")
        self.assertEqual(user_name_for(Identity("i", "s", "a@x.org", True, preferred_username="no spaces")), "a@x.org")
        made = user_name_for(Identity("i", "s", "a@x.org", False))
        self.assertTrue(made.startswith("oidc-") and len(made) == 17, made)


class _Registrations:
    """Pending registrations and the calls that finish them."""

    def __init__(self, *pending: str) -> None:
        self.pending = set(pending)
        self.finished: list[tuple[str, Any]] = []
        self.expiries: list[datetime | None] = []

    def is_pending(self, auth_id: str) -> bool:
        """Whether ``auth_id`` still waits."""
        return auth_id in self.pending

    async def finish(self, auth_id: str, user: Any, expires_at: datetime | None) -> Any:
        """Record the call and return a stand-in node."""
        self.pending.discard(auth_id)
        self.finished.append((auth_id, user))
        self.expiries.append(expires_at)
        return type("Node", (), {"given_name": "laptop"})()


class _SignInFixture(unittest.TestCase):
    """A :class:`SignIn` over the fake provider, a test database and fake registrations."""

    def setUp(self) -> None:
        self.signer, _ = shared_signers()
        self.provider = FakeProvider(self.signer)
        self.http = StubTreq(self.provider)
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.db = open_test_database(self)
        self.registrations = _Registrations("auth-1")
        config = OIDCConfig(issuer=ISSUER, client_id="headscale", client_secret="s", pkce_enabled=True,
                            allowed_domains=("example.com",))
        rp = RelyingParty(config, REDIRECT, "s", self.http, self.clock)
        self.sign_in = SignIn(rp, self.db.users, self.registrations.is_pending, self.registrations.finish, self.clock,
                              PendingLogins(self.db.oidc_logins))

    def settle(self, d: defer.Deferred) -> defer.Deferred:
        """Let the stub provider answer everything ``d`` waits for."""
        self.http.flush()
        return d

    def begin(self) -> dict[str, str]:
        """Start a login for ``auth-1``, sign the provider's token for it; the callback parameters."""
        url = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.begin("auth-1"))))
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.nonce = query["nonce"]
        self.provider.id_token = self.signer.token(self.clock.seconds(), query["nonce"])
        return {"state": query["state"], "code": "good-code"}


class SignInTests(_SignInFixture):
    """The three steps, and what each refuses."""

    def refusal(self, coroutine: Any) -> Reason:
        """The reason ``coroutine`` is refused for."""
        d = self.settle(defer.ensureDeferred(coroutine))
        return self.failureResultOf(d, LoginRefused).value.reason

    def test_whole_flow(self) -> None:
        """begin, callback, confirm: the registration is finished for the person's new user."""
        params = self.begin()
        confirmation = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.callback(params))))
        self.assertEqual(self.registrations.finished, [], "nothing is registered before the person confirms")
        user, node = self.successResultOf(defer.ensureDeferred(self.sign_in.confirm("auth-1", confirmation.token)))
        self.assertEqual((user.provider_identifier, user.email, user.display_name),
                         (ISSUER + "/user-1", "alice@example.com", "Alice"))
        self.assertEqual(self.registrations.finished, [("auth-1", user)])

    def sign_in_with(self, auth_id: str = "auth-1", **claims: Any) -> Any:
        """One whole login of ``auth_id`` whose ID token has ``claims`` changed; the user it was registered to."""
        self.registrations.pending.add(auth_id)
        url = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.begin(auth_id))))
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.provider.id_token = self.signer.token(self.clock.seconds(), query["nonce"], **claims)
        params = {"state": query["state"], "code": "good-code"}
        confirmation = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.callback(params))))
        user, _ = self.successResultOf(defer.ensureDeferred(self.sign_in.confirm(auth_id, confirmation.token)))
        return user

    def test_groups_replaced_at_each_login(self) -> None:
        """The user keeps the groups of the last login only; the node expiry is left to ``node.expiry``."""
        user = self.sign_in_with(groups=["engineering", "ops"])
        self.assertEqual(user.idp_groups, ("engineering", "ops"))
        again = self.sign_in_with("auth-2", groups=["ops"])
        self.assertEqual((again.id, again.idp_groups), (user.id, ("ops",)))
        gone = self.sign_in_with("auth-3", groups=None)
        self.assertEqual(resolve(self.db.users.get(user.id)).idp_groups, gone.idp_groups)
        self.assertEqual(gone.idp_groups, ())
        self.assertEqual(self.registrations.expiries, [None, None, None])

    def test_groups_cut_logged(self) -> None:
        """A token with too many groups is cut to the cap and the cut is logged as a warning."""
        from twisted.logger import globalLogPublisher

        from headscale_tw.oidc.claims import MAX_GROUPS

        seen: list[dict] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        user = self.sign_in_with(groups=[f"g{i}" for i in range(MAX_GROUPS + 3)])
        self.assertEqual(len(user.idp_groups), MAX_GROUPS)
        cut = [e for e in seen if "dropped" in e.get("log_format", "")]
        self.assertEqual(len(cut), 1)
        self.assertEqual(cut[0]["dropped"], f"3 beyond the first {MAX_GROUPS}")

    def test_expiry_from_token(self) -> None:
        """With ``use_expiry_from_token`` the node expires at the ID token's ``exp``; an expired token refuses."""
        self.sign_in = SignIn(self.sign_in.relying_party, self.db.users, self.registrations.is_pending,
                              self.registrations.finish, self.clock, self.sign_in.pending,
                              use_expiry_from_token=True)
        exp = int(self.clock.seconds()) + 120
        self.sign_in_with(exp=exp)
        self.assertEqual(self.registrations.expiries, [datetime.fromtimestamp(exp, timezone.utc)])
        self.registrations.pending.add("auth-2")
        url = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.begin("auth-2"))))
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.provider.id_token = self.signer.token(self.clock.seconds(), query["nonce"], exp=exp)
        confirmation = self.successResultOf(self.settle(defer.ensureDeferred(
            self.sign_in.callback({"state": query["state"], "code": "good-code"}))))
        self.clock.advance(121)
        self.assertEqual(self.refusal(self.sign_in.confirm("auth-2", confirmation.token)), Reason.LOGIN_EXPIRED)
        self.assertEqual(len(self.registrations.finished), 1)

    def test_unknown_registration(self) -> None:
        """A login for a registration that is not pending is not started."""
        self.assertEqual(self.refusal(self.sign_in.begin("nope")), Reason.REGISTRATION_UNKNOWN)

    def test_callback_used_once(self) -> None:
        """A replayed callback is refused as unknown state, without a second code exchange."""
        params = self.begin()
        self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.callback(params))))
        self.assertEqual(self.refusal(self.sign_in.callback(params)), Reason.UNKNOWN_STATE)
        self.assertEqual(len(self.provider.token_requests), 1)

    def test_refused_person_not_registered(self) -> None:
        """A person the policy refuses gets no confirmation and nothing is registered."""
        params = self.begin()
        self.provider.id_token = self.signer.token(self.clock.seconds(), self.nonce, email="eve@evil.org")
        self.assertEqual(self.refusal(self.sign_in.callback(params)), Reason.DOMAIN_NOT_ALLOWED)
        self.assertEqual((self.registrations.finished, resolve(self.sign_in.pending.count())), ([], 0))

    def test_confirmation_token_checked(self) -> None:
        """A wrong token, a token for another registration, or one used twice registers nothing more."""
        params = self.begin()
        confirmation = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.callback(params))))
        self.assertEqual(self.refusal(self.sign_in.confirm("auth-1", "forged")), Reason.UNKNOWN_STATE)
        self.assertEqual(self.refusal(self.sign_in.confirm("auth-2", confirmation.token)), Reason.UNKNOWN_STATE)
        self.assertEqual(self.registrations.finished, [])

    def test_registration_gone_before_confirm(self) -> None:
        """When the registration expired meanwhile, confirming is refused and no user is made."""
        params = self.begin()
        confirmation = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.callback(params))))
        self.registrations.pending.clear()
        self.assertEqual(self.refusal(self.sign_in.confirm("auth-1", confirmation.token)),
                         Reason.REGISTRATION_UNKNOWN)
        self.assertEqual(resolve(self.db.users.list()), [])


class SignInPagesTests(_SignInFixture):
    """``/register/<id>``, ``/oidc/callback`` and ``/register/confirm/<id>`` over HTTP."""

    def setUp(self) -> None:
        super().setUp()
        root = Resource()
        root.putChild(b"register", OIDCRegisterPage(self.sign_in))
        oidc = Resource()
        oidc.putChild(b"callback", OIDCCallbackPage(self.sign_in))
        root.putChild(b"oidc", oidc)
        self.web = StubTreq(root)

    def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any, str]:
        """One request to our pages; ``(status, headers, body text)``."""
        d = getattr(self.web, method)("https://hs.example.test" + url, allow_redirects=False, **kwargs)
        for _ in range(3):
            self.web.flush()
            self.http.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.web.content(response)).decode()
        return response.code, response.headers, body

    def test_register_redirects_to_provider(self) -> None:
        """A pending registration's page redirects to the provider with a fresh state."""
        status, headers, _ = self.request("get", "/register/auth-1")
        self.assertEqual(status, 302)
        location = headers.getRawHeaders("location")[0]
        self.assertTrue(location.startswith(ISSUER + "/auth?"), location)
        self.assertEqual(resolve(self.sign_in.pending.count()), 1)

    def test_unknown_registration_page(self) -> None:
        """An unknown or malformed registration id gets a 404 page that says so."""
        for path in ("/register/nope", "/register/a%20b", "/register/a/b"):
            status, _, body = self.request("get", path)
            self.assertEqual(status, 404, path)
            self.assertIn("tailscale up", body)

    def test_callback_confirm_register(self) -> None:
        """The callback shows who signed in and a form; posting it registers the machine."""
        params = self.begin()
        status, _, body = self.request("get", f"/oidc/callback?state={params['state']}&code=good-code")
        self.assertEqual(status, 200, body)
        self.assertIn("alice@example.com", body)
        [form] = parse_forms(body)
        self.assertEqual(form.method, "post")
        self.assertTrue(form.action.startswith("/register/confirm/auth-1?token="), form.action)
        self.assertEqual(form.fields, {}, "the confirmation posts no body")
        status, _, body = self.request("post", form.action)
        self.assertEqual(status, 200, body)
        self.assertIn("laptop", body)
        self.assertEqual(len(self.registrations.finished), 1)

    def test_refusal_pages(self) -> None:
        """A forged state is a 400 page; a provider error is a 400 page; neither shows the detail."""
        status, _, body = self.request("get", "/oidc/callback?state=forged&code=x")
        self.assertEqual(status, 400)
        self.assertIn(Reason.UNKNOWN_STATE.message, body)
        status, _, body = self.request("get", "/oidc/callback?code=x")
        self.assertEqual(status, 400)

    def test_confirm_without_token(self) -> None:
        """A confirmation post without a token is refused and registers nothing."""
        status, _, _ = self.request("post", "/register/confirm/auth-1")
        self.assertEqual(status, 400)
        self.assertEqual(self.registrations.finished, [])

    def test_confirm_token_in_form_body(self) -> None:
        """The token is also read from a form body (for a listener that accepts bodies)."""
        params = self.begin()
        confirmation = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.callback(params))))
        status, _, _ = self.request("post", "/register/confirm/auth-1", data={"token": confirmation.token})
        self.assertEqual(status, 200)
        self.assertEqual(len(self.registrations.finished), 1)

    def test_markup_escaped(self) -> None:
        """Claims are shown escaped: a name with markup cannot inject HTML."""
        params = self.begin()
        self.provider.id_token = self.signer.token(self.clock.seconds(), self.nonce, name="<script>x</script>")
        _, _, body = self.request("get", f"/oidc/callback?state={params['state']}&code=good-code")
        self.assertNotIn("<script>", body)
        self.assertIn("&lt;script&gt;", body)


class AwaitablePendingTests(_SignInFixture):
    """A registrar whose pending check is a coroutine (pending registrations in the database)."""

    def test_awaitable_is_pending(self) -> None:
        """``is_pending`` may return an awaitable; a false one refuses, a true one lets the login start."""
        async def is_pending(auth_id: str) -> bool:
            return auth_id == "auth-1"

        self.sign_in = SignIn(self.sign_in.relying_party, self.db.users, is_pending, self.registrations.finish,
                              self.clock, self.sign_in.pending)
        d = self.settle(defer.ensureDeferred(self.sign_in.begin("other")))
        self.assertEqual(self.failureResultOf(d, LoginRefused).value.reason, Reason.REGISTRATION_UNKNOWN)
        url = self.successResultOf(self.settle(defer.ensureDeferred(self.sign_in.begin("auth-1"))))
        self.assertTrue(url.startswith(ISSUER + "/auth?"))
