# -*- test-case-name: tests.web.test_admin_api,tests.nodesapi.test_api -*-
"""
The ``/api/v1`` Klein application: Headscale's paths and JSON shapes.

Headscale serves this API through grpc-gateway, so its JSON is protobuf's:
camelCase field names (snake_case accepted in requests), 64-bit ids as
strings (numbers accepted in requests), RFC 3339 timestamps, every field
present. Errors are ``{"code": <gRPC code>, "message": "...", "details": []}``
with the HTTP status grpc-gateway would use. The routes are listed in the
handler modules (:mod:`.users`, :mod:`.keys`, :mod:`.nodes`, :mod:`.policy`, :mod:`.audit`)
and here::

    GET    /api/v1/health                           -> {"databaseConnectivity": true}

Authentication: ``Authorization: Bearer <API key>``, checked by
:meth:`~headscale_tw.control.authkeys.ApiKeyAdmin.authenticate` (prefix lookup,
keyed hash, expiry). An instance built with ``trust_all=True`` skips the check:
it is the one mounted on the local unix socket, whose file permissions are
the access control.

Mount :meth:`AdminAPI.resource` as the child ``api`` of the site's root
(:func:`mount`); routes are relative to that child.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from headscale_tw.control.admin import AdminServices
from headscale_tw.control.audit import Actor
from headscale_tw.errors import Unauthenticated
from headscale_tw.throttle import FailureThrottle, guarded
from headscale_tw.web.admin.audit import AuditHandlers
from headscale_tw.web.admin.early import bearer_token
from headscale_tw.web.admin.errors import NOT_FOUND, UNAVAILABLE, ApiError
from headscale_tw.web.admin.keys import ApiKeyHandlers, PreAuthKeyHandlers
from headscale_tw.web.admin.nodes import NodeHandlers
from headscale_tw.web.admin.peer import socket_peer_user
from headscale_tw.web.admin.policy import PolicyHandlers
from headscale_tw.web.admin.routing import app, endpoint
from headscale_tw.web.admin.users import UserHandlers
from headscale_tw.web.client_address import NO_PROXIES, TrustedProxies, client_address

__all__ = ["AdminAPI", "mount"]


class AdminAPI(UserHandlers, PreAuthKeyHandlers, ApiKeyHandlers, NodeHandlers, PolicyHandlers, AuditHandlers):
    """The ``/api/v1`` Klein application over the admin services.

    :param services: the :class:`~headscale_tw.control.admin.AdminServices`
        (built by the control plane, or by ``build_admin_services(db, now)``
        for a users-and-keys-only API; node and policy routes answer 501 then).
    :param trust_all: skip API-key checks (only for the local unix socket).
    :param throttle: counts refused API keys per client address and refuses a
        throttled address with 429 (``None``: not throttled).
    :param proxies: the trusted proxies, for the client address.
    """

    app = app

    def __init__(self, services: AdminServices, *, trust_all: bool = False,
                 throttle: FailureThrottle | None = None, proxies: TrustedProxies = NO_PROXIES) -> None:
        self.services = services
        self.trust_all = trust_all
        self.throttle = throttle
        self.proxies = proxies

    def resource(self) -> IResource:
        """The Klein resource; mount it as the ``api`` child of the root (see :func:`mount`)."""
        return self.app.resource()

    async def authenticate(self, request: IRequest) -> Actor:
        """Accept the request and return its actor, or raise (``UNAUTHENTICATED``); never logs the key.

        The actor is the API key, by its prefix, or on the trusted unix socket
        the peer's user (``SO_PEERCRED``).
        """
        if self.trust_all:
            return Actor("unix_socket", socket_peer_user(request) or "local", "unix")
        source = client_address(request, self.proxies)

        async def check():
            return await self.services.apikeys.authenticate(bearer_token(request.getHeader(b"authorization")))

        # each refusal (a missing key too) counts against the client's address;
        # a throttled address gets 429 without its key being looked at
        key = await guarded(self.throttle, source, check(), (Unauthenticated, ApiError))
        return Actor("api_key", f"hskey-api-{key.prefix}", source)

    @app.route("/v1/health", methods=["GET"])
    @endpoint
    async def health(self, request: IRequest) -> dict:
        try:
            await self.services.ping()
        except Exception as e:
            self.log.failure("health check: database unreachable")
            raise ApiError(UNAVAILABLE, f"pinging database: {e}") from None
        return {"databaseConnectivity": True}

    @app.route("/", branch=True)
    @endpoint
    async def not_found(self, request: IRequest) -> dict:
        method = request.method.decode("ascii", "replace")
        path = request.uri.decode("utf-8", "replace").split("?")[0][:200]
        raise ApiError(NOT_FOUND, f"no such endpoint: {method} {path}")


def mount(root: Resource, api: AdminAPI) -> None:
    """Serve ``api`` under ``/api`` of ``root`` (its routes start at ``/v1``)."""
    root.putChild(b"api", api.resource())
