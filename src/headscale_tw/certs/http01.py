# -*- test-case-name: tests.certs.test_http01 -*-
"""
The plain-HTTP listener of ``tls_letsencrypt_listen``: HTTP-01 answers, and a redirect to https.

``GET /.well-known/acme-challenge/<token>`` answers the key authorization of a
challenge being validated (404 for any other token); every other request is
sent to the same path on ``server_url`` with a 301, so port 80 never serves
the API or the control protocol in the clear.
"""

from __future__ import annotations

from twisted.web import resource
from twisted.web.iweb import IRequest

from headscale_tw.certs.challenges import ChallengeResponses

__all__ = ["AcmeHTTPResource"]

_PREFIX = b"/.well-known/acme-challenge/"


class AcmeHTTPResource(resource.Resource):
    """The whole site of the HTTP-01 listener."""

    isLeaf = True

    def __init__(self, responses: ChallengeResponses, server_url: str) -> None:
        super().__init__()
        self._responses = responses
        self._https = server_url.rstrip("/").encode("ascii")

    def render(self, request: IRequest) -> bytes:
        path = request.path
        if path.startswith(_PREFIX) and request.method in (b"GET", b"HEAD"):
            answer = self._responses.http01(path[len(_PREFIX):])
            if answer is None:
                request.setResponseCode(404)
                return b"no such challenge\n"
            request.setHeader(b"content-type", b"application/octet-stream")
            return answer.encode("ascii")
        # Only an origin-form path is carried over: "//host" or an absolute URI
        # must not turn the redirect into one to another host.
        uri = request.uri
        target = uri if uri.startswith(b"/") and not uri.startswith(b"//") else b"/"
        request.setResponseCode(301)
        request.setHeader(b"location", self._https + target)
        return b""
