# -*- test-case-name: tests.web.test_admin_early -*-
"""
Refusals made before a request body is read, for the public listener.

The resources of the public site that take a request body are the admin API
under ``/api/v1`` and the small unauthenticated ``POST /verify`` of external
DERP servers; everything else there (``/key``, ``/ts2021``, ``/derp``,
``/register``, ``/health``) is answered from the request head. So the public
site uses :class:`GuardedRequest` as its request factory, and a request that
announces a body is refused from its head alone:

- with ``Content-Length`` above :data:`~.validate.MAX_BODY_BYTES`: 413;
- without ``Authorization: Bearer <API key>`` (a key in the API key form;
  whether it is a *stored* key is checked by the API itself) and a body larger
  than :data:`ANONYMOUS_BODY_BYTES` or of unknown length: 401. A body that
  declares a smaller ``Content-Length`` is read without a key, and the
  resource decides (``/verify`` answers, the API refuses with 401);
- a chunked body is counted while it arrives: past the limit, 413 (401 past
  :data:`ANONYMOUS_BODY_BYTES` without a key).

Over HTTP/1.1 the refusal is written as soon as the headers are in and the
connection is closed, so the body is never read (``Expect: 100-continue`` is
not answered). Over HTTP/2 (TLS with ALPN) the stream's body is dropped as it
arrives, never stored, and the refusal is the stream's answer. The answer is
grpc-gateway's error JSON, as the API's own errors. The local unix socket is
trusted and keeps Twisted's plain ``Request``.

Only public Twisted API is used: :meth:`~twisted.web.http.Request.gotLength`
(called when the head is complete), ``handleContentChunk``, ``requestHeaders``
and the channel's transport.
"""

from __future__ import annotations

from twisted.web import http, server

from headscale_tw import secrets
from headscale_tw.errors import InvalidInput
from headscale_tw.web.admin.errors import INVALID_ARGUMENT, UNAUTHENTICATED, ApiError, error_body, http_status
from headscale_tw.web.admin.validate import MAX_BODY_BYTES

__all__ = ["ANONYMOUS_BODY_BYTES", "GuardedRequest", "bearer_token"]

#: The largest body read without an API key (``POST /verify`` bodies are under it).
ANONYMOUS_BODY_BYTES = 4096


def bearer_token(header: bytes | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; ``ApiError(UNAUTHENTICATED)`` otherwise."""
    if not header:
        raise ApiError(UNAUTHENTICATED, "missing \"Authorization: Bearer <API key>\" header")
    scheme, _, token = header.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(UNAUTHENTICATED, "the Authorization header must be \"Bearer <API key>\"")
    return token.strip()


def _api_key_shaped(request: http.Request) -> ApiError | None:
    """``None`` if the request carries something shaped like an API key, else the 401 to answer."""
    try:
        token = bearer_token(request.getHeader(b"authorization"))
    except ApiError as e:
        return e
    try:
        kind, _, _ = secrets.parse_key(token)
    except InvalidInput:
        kind = ""
    if kind != "api":
        return ApiError(UNAUTHENTICATED, "invalid API key")
    return None


def _too_large() -> ApiError:
    return ApiError(INVALID_ARGUMENT, f"request body: at most {MAX_BODY_BYTES} bytes are allowed", status=413)


class GuardedRequest(server.Request):
    """A ``Request`` that refuses an oversized or unauthenticated body before reading it.

    ``body_bytes`` counts the body bytes this request accepted (stored for the
    resource); a refused body adds nothing.
    """

    max_body = MAX_BODY_BYTES

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.body_bytes = 0
        self.refusal: ApiError | None = None
        self._auth_checked = False
        #: No API key came with this body: it is read only up to ANONYMOUS_BODY_BYTES.
        self._anonymous_refusal: ApiError | None = None
        self._declared: int | None = None

    def _http1(self) -> bool:
        return isinstance(self.channel, http.HTTPChannel)

    def gotLength(self, length: int | None) -> None:
        """The head is in: refuse a body that is too large or comes without an API key."""
        refusal = None
        self._declared = length
        if length != 0:
            if length is not None and length > self.max_body:
                refusal = _too_large()
            elif self._http1():
                # HTTP/1.1 calls this once every header is in; HTTP/2 may call it
                # before the Authorization header, so there the first chunk checks.
                self._auth_checked = True
                self._anonymous_refusal = _api_key_shaped(self)
                if length is None or length > ANONYMOUS_BODY_BYTES:
                    refusal = self._anonymous_refusal
        if refusal is not None:
            super().gotLength(0)
            self._refuse(refusal)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a chunk of the body while it is within the limit and the request is not refused."""
        if self.refusal is not None:
            return
        if not self._auth_checked:
            self._auth_checked = True
            self._anonymous_refusal = _api_key_shaped(self)
        if self._anonymous_refusal is not None and (
                self._declared is None or self._declared > ANONYMOUS_BODY_BYTES
                or self.body_bytes + len(data) > ANONYMOUS_BODY_BYTES):
            self._refuse(self._anonymous_refusal)
            return
        if self.body_bytes + len(data) > self.max_body:
            self._refuse(_too_large())
            return
        self.body_bytes += len(data)
        super().handleContentChunk(data)

    def _refuse(self, error: ApiError) -> None:
        self.refusal = error
        if not self._http1():
            return  # answered by process() when the stream ends
        # Not answered "100 Continue", and the connection ends with this answer.
        self.requestHeaders.removeHeader(b"expect")
        body = error_body(error.code, str(error))
        status = http_status(error)
        head = [f"HTTP/1.1 {status} {http.RESPONSES.get(status, b'Error').decode('ascii')}",
                "Content-Type: application/json", "Cache-Control: no-store", f"Content-Length: {len(body)}",
                "Connection: close"]
        if error.code == UNAUTHENTICATED:
            head.append('WWW-Authenticate: Bearer realm="headscale"')
        transport = self.channel.transport
        if transport is None:  # the connection is already gone: nobody to answer
            return
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        transport.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request unless it was refused over HTTP/1.1 (already answered)."""
        if self.refusal is not None and self._http1():
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """Answer a refused HTTP/2 stream with its error; anything else as usual."""
        if self.refusal is None:
            super().process()
            return
        self.setResponseCode(http_status(self.refusal))
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"cache-control", b"no-store")
        if self.refusal.code == UNAUTHENTICATED:
            self.setHeader(b"www-authenticate", b'Bearer realm="headscale"')
        self.write(error_body(self.refusal.code, str(self.refusal)))
        self.finish()
