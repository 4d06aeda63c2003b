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
from headscale_tw.control.audit import Actor, acting_as
from headscale_tw.errors import HeadscaleError
from headscale_tw.web.admin.errors import INTERNAL, UNAUTHENTICATED, ApiError, error_body, from_domain, http_status

__all__ = ["app", "endpoint", "Handlers"]

#: Every ``/api/v1`` route, relative to the ``api`` child of the site's root.
app = Klein()

Handler = Callable[..., Awaitable[dict]]


class Handlers:
    """What the handler mixins use: the admin services and a logger."""

    services: AdminServices
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


def endpoint(fn: Handler) -> Callable[..., Awaitable[bytes]]:
    """Authenticate, run the handler as the authenticated actor, encode the result or the error as JSON.

    The actor (API key prefix or socket peer, and the client address) is the
    :func:`~headscale_tw.control.audit.current_actor` of everything the handler
    awaits, so the admin services record it without knowing about requests.
    """

    @functools.wraps(fn)
    async def wrapper(self: Handlers, request: IRequest, **kw: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        try:
            actor = await self.authenticate(request)
            with acting_as(actor):
                result = await fn(self, request, **kw)
        except ApiError as e:
            return self.error(request, e)
        except HeadscaleError as e:
            return self.error(request, from_domain(e))
        except Exception:
            self.log.failure("admin API {method} {path} failed", method=request.method.decode("ascii", "replace"),
                             path=request.path.decode("ascii", "replace"))
            return self.error(request, ApiError(INTERNAL, "internal error (see the server log)"))
        return json.dumps(result, separators=(",", ":")).encode("utf-8")

    return wrapper
