# -*- test-case-name: tests.web.test_openapi -*-
"""
``/swagger`` and ``/swagger/v1/openapiv2.json``, where Headscale serves its API document.

Headscale answers both without authentication: ``/swagger/v1/openapiv2.json``
is its Swagger 2.0 document (``application/json; charset=utf-8``) and
``/swagger`` a page that loads Swagger UI from a CDN. Ours serves the document
of :mod:`headscale_tw.web.openapi` at the same path, and at ``/swagger`` a
small page of its own, with no script and nothing fetched from elsewhere: the
list of operations and a link to the document. Both are fixed bytes, built
once; only ``GET`` and ``HEAD`` are served (other methods get 405, never
Twisted's 501).
"""

from __future__ import annotations

from html import escape

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, NoResource, Resource

from headscale_tw.web.openapi import document_bytes, operations

__all__ = ["DOCUMENT_PATH", "FixedResource", "swagger_page", "swagger_resource"]

#: Where the document is served (Headscale's path).
DOCUMENT_PATH = "/swagger/v1/openapiv2.json"


class FixedResource(Resource):
    """A leaf that answers ``GET`` and ``HEAD`` with fixed bytes of one media type."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes):
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: IRequest) -> bytes:
        """The bytes, with their type and length; none for ``HEAD``."""
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-length", b"%d" % len(self.body))
        request.setHeader(b"x-content-type-options", b"nosniff")
        return b"" if request.method == b"HEAD" else self.body

    render_HEAD = render_GET

    def render(self, request: IRequest) -> bytes:
        """``GET`` and ``HEAD``; any other method is a 405 (Twisted would answer 501 to most)."""
        if self.isLeaf and request.postpath:
            return NoResource().render(request)
        if request.method in (b"GET", b"HEAD"):
            return self.render_GET(request)
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, HEAD")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"405 Method Not Allowed: only GET and HEAD\n"


class _Folder(Resource):
    """A path segment that only holds children: itself a 404."""

    def render(self, request: IRequest) -> bytes:
        """Not found, for any method."""
        return NoResource().render(request)


def swagger_page() -> bytes:
    """The HTML of ``/swagger``: every operation of ``/api/v1`` and a link to the document."""
    rows = "\n".join(
        f"<tr><td><code>{escape(method)}</code></td><td><code>{escape(path)}</code></td>"
        f"<td>{escape(summary)}</td></tr>"
        for method, path, summary in operations())
    link = escape(DOCUMENT_PATH)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>headscale-tw API</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td {{ border-bottom: 1px solid #ccc; padding: 0.3em 1em 0.3em 0; vertical-align: top; }}
</style>
</head>
<body>
<h1>headscale-tw admin API (<code>/api/v1</code>)</h1>
<p>The Swagger 2.0 document: <a href="{link}">{link}</a>.
Requests need the header <code>Authorization: Bearer &lt;API key&gt;</code>
(make a key with <code>headscale apikeys create</code>).
JSON uses camelCase names, 64-bit ids as strings and RFC 3339 times; errors are
<code>{{"code", "message", "details"}}</code>.</p>
<table>
{rows}
</table>
</body>
</html>
""".encode("utf-8")


def swagger_resource() -> IResource:
    """The ``swagger`` child of the root: the page, and the document at ``v1/openapiv2.json``."""
    page = _SwaggerPage(swagger_page(), b"text/html; charset=utf-8")
    version = _Folder()
    version.putChild(b"openapiv2.json", FixedResource(document_bytes(), b"application/json; charset=utf-8"))
    page.putChild(b"v1", version)
    return page


class _SwaggerPage(FixedResource):
    """The page at ``/swagger`` (and ``/swagger/``), with children below it."""

    isLeaf = False

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        """``/swagger/`` is the page too; anything unknown is a 404."""
        if path == b"":
            return self
        return super().getChild(path, request)
