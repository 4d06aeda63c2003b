# -*- test-case-name: tests.control.test_control_api -*-
"""
``GET /register/<auth_id>``: the page an interactive ``tailscale up`` points
the user at. It shows the exact command an admin runs to finish the login::

    headscale auth register --auth-id <auth_id> --user USERNAME
"""

from __future__ import annotations

import html
import re

from twisted.web.resource import Resource

__all__ = ["RegisterPage"]

_AUTH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

_PAGE = """<!DOCTYPE html>
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


class RegisterPage(Resource):
    """Mount on the plain HTTP root: ``root.putChild(b"register", RegisterPage())``.

    ``exists(auth_id)`` (optional) reports whether a registration is pending;
    unknown ids get 404.
    """

    isLeaf = True

    def __init__(self, exists=None) -> None:
        super().__init__()
        self.exists = exists

    def render_GET(self, request):
        parts = [p for p in request.postpath if p]
        auth_id = parts[0].decode("ascii", "replace") if len(parts) == 1 else ""
        if not _AUTH_ID.match(auth_id) or (self.exists is not None and not self.exists(auth_id)):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"unknown or expired registration id\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _PAGE.format(auth_id=html.escape(auth_id)).encode("utf-8")
