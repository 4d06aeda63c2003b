# -*- test-case-name: tests.web.test_public_pages -*-
"""
Headscale's small public routes on the plain HTTP root.

* ``GET /version`` → the JSON of :func:`headscale_tw.version.version_info`
  (Headplane probes it every 30 s until it answers and picks its request
  shapes from ``version``).
* ``GET /robots.txt`` → disallow everything.
* ``GET /apple`` → a page on pointing Apple clients at this server, linking
  the configuration profiles; ``GET /apple/<platform>`` → the profile
  (``ios``, ``macos-app-store``, ``macos-standalone``) as
  ``application/x-apple-aspen-config``, any other platform → 400.
* ``GET /windows`` → a page on pointing the Windows client at this server.
* ``POST /verify`` → DERP client admission for external ``derper``\\ s started
  with ``--verify-client-url``: the body is a ``DERPAdmitClientRequest``
  (``{"NodePublic": "nodekey:…", "Source": "…"}``, at most
  :data:`VERIFY_BODY_LIMIT` bytes) and the answer ``{"Allow": true}`` exactly
  when the node key belongs to a registered node. A body that is too large is
  413, one that is not a JSON object or whose ``NodePublic`` is not a node key
  is 400, both with a message naming the problem.

:func:`mount_public_pages` puts them all on a root resource.
"""

from __future__ import annotations

import html
import json
import plistlib
import uuid
from collections.abc import Callable

from twisted.web.resource import Resource

from headscale_tw.errors import InvalidInput
from headscale_tw.keys import NodePublic
from headscale_tw.version import version_info

__all__ = [
    "VersionResource", "RobotsResource", "ApplePage", "WindowsPage", "VerifyResource",
    "mount_public_pages", "VERIFY_BODY_LIMIT", "APPLE_PAYLOAD_TYPES",
]

#: Largest ``/verify`` body read (a DERPAdmitClientRequest is about a hundred bytes).
VERIFY_BODY_LIMIT = 4 * 1024

#: ``/apple/<platform>`` → the ``PayloadType`` of the Tailscale app that reads the profile.
APPLE_PAYLOAD_TYPES = {
    "ios": "io.tailscale.ipn.ios",
    "macos-app-store": "io.tailscale.ipn.macos",
    "macos-standalone": "io.tailscale.ipn.macsys",
}

_PROFILE_ID = "com.github.juanfont.headscale"  # the identifier Headscale's profiles use: they replace each other


def _text(request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return message.encode("utf-8") + b"\n"


def _html(request, body: str) -> bytes:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return body.encode("utf-8")


class VersionResource(Resource):
    """``GET /version``: which Headscale release this server's API matches."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(version_info()).encode("utf-8") + b"\n"


class RobotsResource(Resource):
    """``GET /robots.txt``: crawlers are asked to index nothing."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"User-agent: *\nDisallow: /"


_APPLE_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Headscale: Apple devices</title></head>
<body>
<h1>Connect an Apple device to this Headscale server</h1>
<h2>iOS and iPadOS</h2>
<p>Install the Tailscale app, then download and install <a href="/apple/ios">the iOS profile</a>
(Settings → General → VPN &amp; Device Management). Or open the app's settings, choose
"Use a custom coordination server" and enter <code>{url}</code>.</p>
<h2>macOS</h2>
<p>Download the profile for your Tailscale app:
<a href="/apple/macos-app-store">App Store version</a> or
<a href="/apple/macos-standalone">standalone version</a>, open it, and approve it in
System Settings → Privacy &amp; Security → Profiles. Then quit and restart Tailscale and log in.</p>
<p>From a terminal instead:</p>
<pre><code>tailscale login --login-server {url}</code></pre>
</body>
</html>
"""

_WINDOWS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Headscale: Windows</title></head>
<body>
<h1>Connect a Windows machine to this Headscale server</h1>
<p>Install the Tailscale client, then in a command prompt or PowerShell run:</p>
<pre><code>tailscale login --login-server {url}</code></pre>
<p>A browser window opens; finish the login there (or ask an administrator to approve the
machine). To make the setting permanent for every user, set the registry value
<code>HKLM\\SOFTWARE\\Tailscale IPN\\LoginURL</code> (a string) to <code>{url}</code> and restart
the Tailscale service.</p>
</body>
</html>
"""


class ApplePage(Resource):
    """
    ``GET /apple`` (instructions) and ``GET /apple/<platform>`` (a configuration profile).

    ``new_uuid`` makes the profile's UUIDs (random by default; tests pass a fixed one).
    """

    isLeaf = True

    def __init__(self, server_url: str, new_uuid: Callable[[], uuid.UUID] = uuid.uuid4) -> None:
        super().__init__()
        self.server_url = server_url
        self.new_uuid = new_uuid

    def render_GET(self, request):
        parts = [p for p in request.postpath if p]
        if not parts:
            return _html(request, _APPLE_PAGE.format(url=html.escape(self.server_url)))
        platform = parts[0].decode("utf-8", "replace") if len(parts) == 1 else ""
        payload_type = APPLE_PAYLOAD_TYPES.get(platform)
        if payload_type is None:
            return _text(request, 400, "platform must be one of: " + ", ".join(APPLE_PAYLOAD_TYPES))
        request.setHeader(b"content-type", b"application/x-apple-aspen-config; charset=utf-8")
        request.setHeader(b"content-disposition", f'attachment; filename="headscale-{platform}.mobileconfig"'
                          .encode("ascii"))
        return self.profile(payload_type)

    def profile(self, payload_type: str) -> bytes:
        """A ``.mobileconfig`` property list setting the app's ``ControlURL`` to this server."""
        content = {
            "PayloadType": payload_type,
            "PayloadUUID": str(self.new_uuid()).upper(),
            "PayloadIdentifier": _PROFILE_ID,
            "PayloadVersion": 1,
            "PayloadEnabled": True,
            "ControlURL": self.server_url,
        }
        profile = {
            "PayloadUUID": str(self.new_uuid()).upper(),
            "PayloadDisplayName": "Headscale",
            "PayloadDescription": f"Configure Tailscale login server to: {self.server_url}",
            "PayloadIdentifier": _PROFILE_ID,
            "PayloadRemovalDisallowed": False,
            "PayloadType": "Configuration",
            "PayloadVersion": 1,
            "PayloadContent": [content],
        }
        return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=False)


class WindowsPage(Resource):
    """``GET /windows``: how to point the Windows client at this server."""

    isLeaf = True

    def __init__(self, server_url: str) -> None:
        super().__init__()
        self.server_url = server_url

    def render_GET(self, request):
        return _html(request, _WINDOWS_PAGE.format(url=html.escape(self.server_url)))


def parse_admit_request(body: bytes) -> str:
    """The node key text of a ``DERPAdmitClientRequest`` body; ``InvalidInput`` names the problem.

    A missing ``NodePublic`` is the zero key (Go's zero value), which no node has.
    """
    try:
        value = json.loads(body)
    except ValueError:
        raise InvalidInput("verify: body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidInput("verify: body must be a JSON object")
    key = value.get("NodePublic")
    if key is None or key == "":
        return NodePublic.zero().text
    if not isinstance(key, str):
        raise InvalidInput("verify: NodePublic must be a nodekey: string")
    try:
        return NodePublic.parse(key).text
    except InvalidInput as e:
        raise InvalidInput(f"verify: NodePublic: {e}") from None


class VerifyResource(Resource):
    """
    ``POST /verify``: may this node key use an external DERP server?

    ``is_registered(node_key_text)`` answers from the control plane's memory
    (no database query per DERP connection).
    """

    isLeaf = True

    def __init__(self, is_registered: Callable[[str], bool]) -> None:
        super().__init__()
        self.is_registered = is_registered

    def render_POST(self, request):
        body = request.content.read(VERIFY_BODY_LIMIT + 1) if request.content is not None else b""
        if len(body) > VERIFY_BODY_LIMIT:
            return _text(request, 413, f"verify: body larger than {VERIFY_BODY_LIMIT} bytes")
        try:
            node_key = parse_admit_request(body)
        except InvalidInput as e:
            return _text(request, 400, str(e))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"Allow": bool(self.is_registered(node_key))}).encode("utf-8") + b"\n"


def mount_public_pages(root: Resource, server_url: str, is_registered: Callable[[str], bool]) -> None:
    """Put ``/version``, ``/robots.txt``, ``/apple``, ``/windows`` and ``/verify`` on ``root``."""
    root.putChild(b"version", VersionResource())
    root.putChild(b"robots.txt", RobotsResource())
    root.putChild(b"apple", ApplePage(server_url))
    root.putChild(b"windows", WindowsPage(server_url))
    root.putChild(b"verify", VerifyResource(is_registered))
