# -*- test-case-name: tests.control.test_control_api -*-
"""
``GET /register/<auth_id>``: the page an interactive ``tailscale up`` points
the user at. It shows the exact command an admin runs to finish the login::

    headscale auth register --auth-id <auth_id> --user USERNAME

``GET /auth/<auth_id>`` (the same class with :data:`SSH_CHECK_PAGE`): the page
an SSH check points the person at, with the command that approves it::

    headscale auth approve --auth-id <auth_id>
"""

from __future__ import annotations

import html
import re

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

__all__ = ["RegisterPage", "REGISTER_PAGE", "SSH_CHECK_PAGE"]

_log = Logger()

_AUTH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

REGISTER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Register this machine</title></head>
<body>
<h1>Machine registration</h1>
<p>Ask an administrator of this Headscale server to run:</p>
<pre><code>headscale auth register --auth-id {auth_id} --user USERNAME</code></pre>
<p>Replace <code>USERNAME</code> with the user that will own this machine.</p>
</body>
</html>
"""

SSH_CHECK_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Approve this SSH connection</title></head>
<body>
<h1>SSH check</h1>
<p>An SSH connection waits for approval. Ask an administrator of this Headscale server to run:</p>
<pre><code>headscale auth approve --auth-id {auth_id}</code></pre>
<p>or, to refuse it:</p>
<pre><code>headscale auth reject --auth-id {auth_id}</code></pre>
</body>
</html>
"""


class RegisterPage(Resource):
    """Mount on the plain HTTP root: ``root.putChild(b"register", RegisterPage())``.

    ``exists(auth_id)`` (optional) reports whether a registration is pending,
    as a bool or a coroutine/Deferred (the pending registrations live in the
    database); unknown ids get 404. ``template`` is the page, with ``{auth_id}``.
    """

    isLeaf = True

    def __init__(self, exists=None, template: str = REGISTER_PAGE) -> None:
        super().__init__()
        self.exists = exists
        self.template = template

    def render_GET(self, request):
        parts = [p for p in request.postpath if p]
        auth_id = parts[0].decode("ascii", "replace") if len(parts) == 1 else ""
        if not _AUTH_ID.match(auth_id):
            return self._page(request, auth_id, False)
        if self.exists is None:
            return self._page(request, auth_id, True)
        synchronous: list[bytes] = []
        later: list[bool] = []
        finished: list[bool] = []

        def deliver(body: bytes) -> None:
            if not later:
                synchronous.append(body)
            elif not finished:
                request.write(body)
                request.finish()

        rendered = maybeDeferred(self.exists, auth_id)
        rendered.addCallback(lambda exists: self._page(request, auth_id, bool(exists)))
        rendered.addErrback(self._lookup_failed, request)
        rendered.addCallback(deliver)
        if synchronous:
            return synchronous[0]
        later.append(True)
        request.notifyFinish().addBoth(lambda _: finished.append(True))
        return NOT_DONE_YET

    @staticmethod
    def _lookup_failed(failure, request) -> bytes:
        _log.failure("looking up registration for /register", failure)
        request.setResponseCode(503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"the registration could not be looked up; try again\n"

    def _page(self, request, auth_id: str, exists: bool) -> bytes:
        if not exists:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"unknown or expired auth id\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.template.format(auth_id=html.escape(auth_id)).encode("utf-8")
