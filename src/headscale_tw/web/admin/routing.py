# -*- test-case-name: tests.web.test_admin_api -*-
"""
The one Klein application of ``/api/v1`` and the wrapper every handler goes through.

Handler modules (:mod:`.users`, :mod:`.keys`, :mod:`.nodes`, :mod:`.policy`)
register their routes on :data:`app` from mixin classes;
:class:`~headscale_tw.web.admin.app.AdminAPI` combines them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from headscale_tw.control.admin import AdminServices
from headscale_tw.control.audit import Actor, Target, acting_as
from headscale_tw.errors import HeadscaleError
from headscale_tw.web.admin.errors import INTERNAL, UNAUTHENTICATED, ApiError, error_body, from_domain, http_status
from headscale_tw.web.client_address import TrustedProxies

__all__ = ["app", "endpoint", "read_only", "Handlers"]

#: Every ``/api/v1`` route, relative to the ``api`` child of the site's root.
app = Klein()

Handler = Callable[..., Awaitable[dict]]


class Handlers:
    """What the handler mixins use: the admin services and a logger."""

    services: AdminServices
    proxies: TrustedProxies
    log = Logger()

    async def authenticate(self, request: IRequest) -> Actor:
        """Accept the request and return who makes it (for the audit log), or raise."""
        raise NotImplementedError

    def error(self, request: IRequest, error: ApiError) -> bytes:
        """Set the status (and the challenge for 401) and return grpc-gateway's error JSON."""
        request.setResponseCode(http_status(error))
        if error.code == UNAUTHENTICATED:
            request.setHeader(b"www-authenticate", b'Bearer realm="headscale"')
        return error_body(error.code, str(error))


def read_only(fn: Handler) -> Handler:
    """Mark a handler that changes nothing although its method is not ``GET`` (its refusals are not audited)."""
    fn.read_only = True  # type: ignore[attr-defined]  # a marker attribute on the function
    return fn


def endpoint(fn: Handler) -> Callable[..., Awaitable[bytes]]:
    """Authenticate, run the handler as the authenticated actor, encode the result or the error as JSON.

    The actor (API key prefix or socket peer, and the client address) is the
    :func:`~headscale_tw.control.audit.current_actor` of everything the handler
    awaits, so the admin services record it without knowing about requests.
    A change (any method but ``GET``, unless marked :func:`read_only`) that an
    authenticated caller asked for and that was refused or failed is recorded
    as ``admin.refused``, naming the operation and the answer; a refused API
    key is not (the throttle's summary counts it).
    """

    @functools.wraps(fn)
    async def wrapper(self: Handlers, request: IRequest, **kw: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        actor = None
        try:
            actor = await self.authenticate(request)
            with acting_as(actor):
                result = await fn(self, request, **kw)
        except ApiError as e:
            error = e
        except HeadscaleError as e:
            error = from_domain(e)
        except Exception:
            self.log.failure("admin API {method} {path} failed", method=request.method.decode("ascii", "replace"),
                             path=request.path.decode("ascii", "replace"))
            error = ApiError(INTERNAL, "internal error (see the server log)")
        else:
            return json.dumps(result, separators=(",", ":")).encode("utf-8")
        if actor is not None and request.method != b"GET" and not getattr(fn, "read_only", False):
            await self.services.audit.record(
                "admin.refused", Target("operation", fn.__name__, request.method.decode("ascii", "replace") + " "
                                        + request.path.decode("utf-8", "replace")),
                actor=actor, result=f"refused: {error}", detail={"status": http_status(error), "code": error.code})
        return self.error(request, error)

    return wrapper
