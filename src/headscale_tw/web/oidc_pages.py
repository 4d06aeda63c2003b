# -*- test-case-name: tests.oidc.test_signin -*-
"""
The sign-in pages on Headscale's paths, when ``oidc.issuer`` is set.

- ``GET /register/<auth_id>``: 302 to the provider (:meth:`SignIn.begin`).
- ``GET /oidc/callback?code=&state=``: validates, then shows a confirmation page
  naming the person and a button that posts the one-time token.
- ``POST /register/confirm/<auth_id>?token=`` (with no body; a ``token`` form
  field is read too): registers the machine to the person and says so.
- ``GET /auth/<auth_id>`` (:class:`OIDCCheckPage`): 302 to the provider for a
  pending SSH check; its callback (same path as above) approves the check when
  the person owns the connecting machine (:mod:`headscale_tw.oidc.ssh_check`).

Every refusal is a small HTML page with the reason's status and sentence
(:mod:`headscale_tw.oidc.refusals`); the detail goes to the log only. An
unexpected error is a 500 page and a logged failure. Handlers parse, call one
:class:`~headscale_tw.oidc.signin.SignIn` method and format.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.oidc.signin import Confirmation, SignIn
from headscale_tw.oidc.ssh_check import SSHCheckSignIn
from headscale_tw.web.client_address import NO_PROXIES, TrustedProxies, client_address

__all__ = ["OIDCCallbackPage", "OIDCCheckPage", "OIDCRegisterPage"]

_AUTH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAX_PARAM = 4096
_MAX_FORM = 16 * 1024

_LAYOUT = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""

log = Logger()


def _page(request: Request, status: int, title: str, body: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")
    return _LAYOUT.format(title=html.escape(title), body=body).encode("utf-8")


def _refusal_page(request: Request, refusal: LoginRefused) -> bytes:
    log.info("OIDC sign-in refused: {reason}: {detail}", reason=refusal.reason.name, detail=refusal.detail)
    title = "Sign-in refused" if refusal.reason.is_policy else "Sign-in failed"
    return _page(request, refusal.reason.status, title, f"<p>{html.escape(refusal.reason.message)}</p>")


def _respond(request: Request, work: Callable[[], Coroutine[Any, Any, bytes]]) -> object:
    """Run ``work`` and write its page; refusals and failures become pages too."""
    finished: list[object] = []
    request.notifyFinish().addBoth(finished.append)

    def write(body: bytes) -> None:
        if not finished:
            request.write(body)
            request.finish()

    def failed(failure: Failure) -> None:
        if isinstance(failure.value, LoginRefused):
            write(_refusal_page(request, failure.value))
            return
        log.failure("OIDC sign-in page failed", failure)
        write(_page(request, 500, "Sign-in failed", "<p>Something went wrong on this server. Try again.</p>"))

    d = defer.ensureDeferred(work())
    d.addCallbacks(write, failed)
    return NOT_DONE_YET


def _one(request: Request, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    value = values[0]
    if len(value) > _MAX_PARAM:
        raise LoginRefused(Reason.MISSING_PARAMETER, f"parameter {name.decode()!r} is longer than {_MAX_PARAM} bytes")
    return value.decode("utf-8", "replace")


class OIDCRegisterPage(Resource):
    """``/register/<auth_id>`` (redirect to the provider) and ``/register/confirm/<auth_id>`` (POST).

    ``proxies`` are the trusted proxies, for the confirming person's address in the audit log.
    """

    isLeaf = True

    def __init__(self, sign_in: SignIn, proxies: TrustedProxies = NO_PROXIES) -> None:
        super().__init__()
        self._sign_in = sign_in
        self._proxies = proxies

    def _auth_id(self, request: Request, prefix: tuple[bytes, ...] = ()) -> str | None:
        parts = [p for p in request.postpath or () if p]
        if tuple(parts[:len(prefix)]) != prefix or len(parts) != len(prefix) + 1:
            return None
        auth_id = parts[-1].decode("ascii", "replace")
        return auth_id if _AUTH_ID.match(auth_id) else None

    def render_GET(self, request: Request) -> object:
        """Send the person to the provider for a pending registration."""
        auth_id = self._auth_id(request)
        if auth_id is None:
            return _refusal_page(request, LoginRefused(Reason.REGISTRATION_UNKNOWN, "malformed registration path"))

        async def work() -> bytes:
            url = await self._sign_in.begin(auth_id)
            request.redirect(url.encode("ascii"))
            request.setHeader(b"cache-control", b"no-store")
            return b""

        return _respond(request, work)

    def render_POST(self, request: Request) -> object:
        """Register the machine after the person confirmed."""
        auth_id = self._auth_id(request, (b"confirm",))
        if auth_id is None:
            return _refusal_page(request, LoginRefused(Reason.REGISTRATION_UNKNOWN, "malformed confirmation path"))
        length = int(request.getHeader(b"content-length") or 0)
        if length > _MAX_FORM:
            return _refusal_page(request, LoginRefused(Reason.MISSING_PARAMETER, f"form over {_MAX_FORM} bytes"))

        async def work() -> bytes:
            token = _one(request, b"token")
            if not token:
                raise LoginRefused(Reason.MISSING_PARAMETER, "the confirmation has no token")
            user, node = await self._sign_in.confirm(auth_id, token, client_address(request, self._proxies))
            who = html.escape(user.display_name or user.name)
            machine = html.escape(getattr(node, "given_name", "") or getattr(node, "hostname", "") or "")
            return _page(request, 200, "Machine registered",
                         f"<p>The machine <strong>{machine}</strong> is now registered to <strong>{who}</strong>"
                         f" (user <code>{html.escape(user.name)}</code>). You can close this window.</p>")

        return _respond(request, work)


def _confirmation_body(confirmation: Confirmation) -> str:
    identity = confirmation.identity
    who = html.escape(identity.name or identity.preferred_username or identity.subject)
    email = f" ({html.escape(identity.email)})" if identity.email else ""
    # The one-time token rides in the action's query, so the POST has no body: the
    # public listener refuses request bodies that do not carry an API key.
    action = html.escape(f"/register/confirm/{confirmation.auth_id}?{urlencode({'token': confirmation.token})}")
    return (
        f"<p>You signed in as <strong>{who}</strong>{email}.</p>\n"
        "<p>Register the machine that asked to join this network to your account? "
        "Only continue if you just ran <code>tailscale up</code> (or <code>tailscale login</code>) yourself.</p>\n"
        f'<form method="post" action="{action}">\n'
        '<button type="submit">Register this machine</button>\n'
        "</form>"
    )


class OIDCCallbackPage(Resource):
    """``/oidc/callback``: where the provider sends the person back."""

    isLeaf = True

    def __init__(self, sign_in: SignIn, ssh_check: SSHCheckSignIn | None = None) -> None:
        super().__init__()
        self._sign_in = sign_in
        self._ssh_check = ssh_check

    def render_GET(self, request: Request) -> object:
        """Validate the callback and ask the person to confirm (or approve their SSH check)."""
        async def work() -> bytes:
            params = {name: _one(request, name.encode())
                      for name in ("state", "code", "error", "error_description", "iss")
                      if name.encode() in request.args}
            if self._ssh_check is not None:
                approved = await self._ssh_check.callback(params)
                if approved is not None:
                    return _check_approved_page(request, *approved)
            confirmation = await self._sign_in.callback(params)
            return _page(request, 200, "Confirm machine registration", _confirmation_body(confirmation))

        return _respond(request, work)


def _check_approved_page(request: Request, user: Any, row: Any) -> bytes:
    who = html.escape(user.display_name or user.name)
    machine = html.escape(row.hostname or "your machine")
    return _page(request, 200, "SSH connection approved",
                 f"<p>Thank you, <strong>{who}</strong>. The SSH connection from <strong>{machine}</strong>"
                 " proceeds now. You can close this window.</p>")


class OIDCCheckPage(Resource):
    """``/auth/<auth_id>``: send the person to the provider to approve a pending SSH check."""

    isLeaf = True

    def __init__(self, ssh_check: SSHCheckSignIn) -> None:
        super().__init__()
        self._ssh_check = ssh_check

    def render_GET(self, request: Request) -> object:
        """Redirect to the provider for a pending SSH check."""
        parts = [p for p in request.postpath or () if p]
        auth_id = parts[0].decode("ascii", "replace") if len(parts) == 1 else ""
        if not _AUTH_ID.match(auth_id):
            return _refusal_page(request, LoginRefused(Reason.CHECK_UNKNOWN, "malformed SSH check path"))

        async def work() -> bytes:
            url = await self._ssh_check.begin(auth_id)
            request.redirect(url.encode("ascii"))
            request.setHeader(b"cache-control", b"no-store")
            return b""

        return _respond(request, work)
