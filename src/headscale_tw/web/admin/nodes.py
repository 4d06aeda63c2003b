# -*- test-case-name: tests.nodesapi.test_api,tests.web.test_admin_hostile -*-
"""
``/api/v1/node`` and ``/api/v1/auth``: nodes and interactive registration.

They need the control plane (501 without). Changes go through
:class:`~headscale_tw.control.nodes.NodeAdmin`, so that peers are told::

    GET    /api/v1/node[?user=NAME]                 -> {"nodes": [Node]}
    GET    /api/v1/node/{id}                        -> {"node": Node}
    DELETE /api/v1/node/{id}                        -> {}
    POST   /api/v1/node/{id}/expire[?expiry=|disableExpiry=true]  -> {"node": Node}
    POST   /api/v1/node/{id}/rename/{new_name}      -> {"node": Node}
    POST   /api/v1/node/{id}/tags {tags}            -> {"node": Node}
    POST   /api/v1/node/{id}/approve_routes {routes} -> {"node": Node}
    POST   /api/v1/node/{id}/user {user}            -> {"node": Node}   (pre-0.23 MoveNode)
    POST   /api/v1/node/register?user=&key=         -> {"node": Node}   (deprecated form)
    POST   /api/v1/auth/register {user, authId}     -> {"node": Node}
    POST   /api/v1/auth/approve {authId}            -> {}  (SSH check requests; 400 for a registration)
    POST   /api/v1/auth/reject {authId}             -> {}  (the waiting client is told)
    POST   /api/v1/node/backfillips?confirmed=true  -> {"changes": [str]}  (400 unless confirmed)
    POST   /api/v1/debug/node {user, key, name, routes} -> {"node": Node}   (a pending registration)

Routes are part of ``Node``: ``availableRoutes`` (announced),
``approvedRoutes`` and ``subnetRoutes`` (served now: HA primary subnets plus
approved exit routes).
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.iweb import IRequest

from headscale_tw.control import limits
from headscale_tw.control.nodes import NodeAdmin
from headscale_tw.storage.models import Node
from headscale_tw.web.admin import validate as v
from headscale_tw.web.admin.errors import INVALID_ARGUMENT, UNIMPLEMENTED, ApiError
from headscale_tw.web.admin.routing import Handlers, app, endpoint
from headscale_tw.web.admin.shapes import details_json
from headscale_tw.web.client_address import client_address

__all__ = ["NodeHandlers", "NO_PLANE"]

NO_PLANE = "this API instance has no control plane: node, policy and auth endpoints are unavailable"


class NodeHandlers(Handlers):
    """The node and auth routes."""

    def _nodes(self) -> NodeAdmin:
        if self.services.nodes is None:
            raise ApiError(UNIMPLEMENTED, NO_PLANE)
        return self.services.nodes

    async def _reply(self, nodes: Iterable[Node], one: bool = True) -> dict:
        rendered = [details_json(d) for d in await self._nodes().describe(nodes)]
        return {"node": rendered[0]} if one else {"nodes": rendered}

    def _node_id(self, node_id: str) -> int:
        self._nodes()
        return v.required_id(node_id, "node_id")

    @app.route("/v1/node", methods=["GET"])
    @endpoint
    async def list_nodes(self, request: IRequest) -> dict:
        nodes = await self._nodes().list_of(v.query(request, "user", v.MAX_USER_NAME))
        return await self._reply(nodes, one=False)

    @app.route("/v1/node/register", methods=["POST"])
    @endpoint
    async def register_node(self, request: IRequest) -> dict:
        body = v.json_body(request)
        user = v.query(request, "user", v.MAX_USER_NAME) or v.text(v.field(body, "user"), "user", v.MAX_USER_NAME)
        key = v.query(request, "key", v.MAX_AUTH_ID) or v.text(v.field(body, "key"), "key", v.MAX_AUTH_ID)
        return await self._register(key, user, "key")

    @app.route("/v1/auth/register", methods=["POST"])
    @endpoint
    async def auth_register(self, request: IRequest) -> dict:
        body = v.json_body(request)
        user = v.text(v.field(body, "user"), "user", v.MAX_USER_NAME) or (v.query(request, "user", v.MAX_USER_NAME)
                                                                          or "")
        auth_id = (v.text(v.field(body, "auth_id"), "authId", v.MAX_AUTH_ID)
                   or (v.query(request, "auth_id", v.MAX_AUTH_ID) or ""))
        return await self._register(auth_id, user, "authId")

    async def _register(self, auth_id: str, user: str, id_name: str) -> dict:
        nodes = self._nodes()
        if not auth_id.strip():
            raise ApiError(INVALID_ARGUMENT, f"{id_name}: the auth id from the client's login URL is required")
        if not user:
            raise ApiError(INVALID_ARGUMENT, "user: a user name is required")
        node = await nodes.register(auth_id, user)
        self.log.info("registered node {id} ({name})", id=node.id, name=node.given_name)
        return await self._reply([node])

    def _auth_id(self, request: IRequest) -> str:
        body = v.json_body(request)
        auth_id = (v.text(v.field(body, "auth_id"), "authId", v.MAX_AUTH_ID)
                   or (v.query(request, "auth_id", v.MAX_AUTH_ID) or ""))
        if not auth_id.strip():
            raise ApiError(INVALID_ARGUMENT, "authId: the auth id from the client's login URL is required")
        return auth_id

    @app.route("/v1/auth/approve", methods=["POST"])
    @endpoint
    async def auth_approve(self, request: IRequest) -> dict:
        auth_id = self._auth_id(request)
        await self._nodes().approve(auth_id)
        self.log.info("approved auth request {auth_id}", auth_id=auth_id)
        return {}

    @app.route("/v1/auth/reject", methods=["POST"])
    @endpoint
    async def auth_reject(self, request: IRequest) -> dict:
        auth_id = self._auth_id(request)
        await self._nodes().reject(auth_id)
        self.log.info("rejected auth request {auth_id}", auth_id=auth_id)
        return {}

    @app.route("/v1/node/backfillips", methods=["POST"])
    @endpoint
    async def backfill_ips(self, request: IRequest) -> dict:
        nodes = self._nodes()
        confirmed = v.query(request, "confirmed", 5)
        if confirmed is None:
            confirmed_flag = v.flag(v.field(v.json_body(request), "confirmed"), "confirmed")
        elif confirmed.lower() in ("true", "false", "1", "0"):
            confirmed_flag = confirmed.lower() in ("true", "1")
        else:
            raise ApiError(INVALID_ARGUMENT, "confirmed: expected true or false")
        if not confirmed_flag:
            raise ApiError(INVALID_ARGUMENT, "not confirmed, aborting (send confirmed=true to change node addresses)")
        changes = await nodes.backfill_ips()
        self.log.info("backfilled node addresses: {count} change(s)", count=len(changes))
        return {"changes": changes}

    @app.route("/v1/debug/node", methods=["POST"])
    @endpoint
    async def debug_create_node(self, request: IRequest) -> dict:
        nodes = self._nodes()
        body = v.json_body(request)
        user = v.user_ident(v.field(body, "user"), "user")
        key = v.text(v.field(body, "key"), "key", v.MAX_AUTH_ID)
        name = v.text(v.field(body, "name"), "name", limits.HOSTNAME_MAX_LENGTH)
        routes = v.routes(v.field(body, "routes"), "routes")
        details = await nodes.debug_create(name, user, key, routes, client_address(request, self.proxies))
        self.log.info("debug: pending registration {auth_id} for a made-up node {name}", auth_id=key, name=name)
        return {"node": details_json(details)}

    @app.route("/v1/node/<node_id>", methods=["GET"])
    @endpoint
    async def get_node(self, request: IRequest, node_id: str) -> dict:
        return await self._reply([self._nodes().get(self._node_id(node_id))])

    @app.route("/v1/node/<node_id>", methods=["DELETE"])
    @endpoint
    async def delete_node(self, request: IRequest, node_id: str) -> dict:
        node = await self._nodes().delete(self._node_id(node_id))
        self.log.info("deleted node {id} ({name})", id=node.id, name=node.given_name)
        return {}

    @app.route("/v1/node/<node_id>/expire", methods=["POST"])
    @endpoint
    async def expire_node(self, request: IRequest, node_id: str) -> dict:
        nid = self._node_id(node_id)
        body = v.json_body(request)
        expiry = v.timestamp(v.query(request, "expiry", 64) or v.field(body, "expiry"), "expiry")
        disable = v.query(request, "disable_expiry", 5)
        if disable is not None:
            if disable.lower() not in ("true", "false", "1", "0"):
                raise ApiError(INVALID_ARGUMENT, "disableExpiry: expected true or false")
            disable_expiry = disable.lower() in ("true", "1")
        else:
            disable_expiry = v.flag(v.field(body, "disable_expiry"), "disableExpiry")
        if disable_expiry and expiry is not None:
            raise ApiError(INVALID_ARGUMENT, "cannot set both disableExpiry and expiry")
        if disable_expiry:
            return await self._reply([await self._nodes().disable_expiry(nid)])
        return await self._reply([await self._nodes().expire(nid, expiry)])

    @app.route("/v1/node/<node_id>/rename/<new_name>", methods=["POST"])
    @endpoint
    async def rename_node(self, request: IRequest, node_id: str, new_name: str) -> dict:
        nid = self._node_id(node_id)
        name = v.text(new_name, "new_name", v.MAX_NODE_NAME)
        return await self._reply([await self._nodes().rename(nid, name)])

    @app.route("/v1/node/<node_id>/tags", methods=["POST"])
    @endpoint
    async def set_node_tags(self, request: IRequest, node_id: str) -> dict:
        nid = self._node_id(node_id)
        tags = v.tags(v.field(v.json_body(request), "tags"), "tags")
        return await self._reply([await self._nodes().set_tags(nid, tags)])

    @app.route("/v1/node/<node_id>/approve_routes", methods=["POST"])
    @endpoint
    async def approve_node_routes(self, request: IRequest, node_id: str) -> dict:
        nid = self._node_id(node_id)
        routes = v.routes(v.field(v.json_body(request), "routes"), "routes")
        return await self._reply([await self._nodes().approve_routes(nid, routes)])

    @app.route("/v1/node/<node_id>/user", methods=["POST"])
    @endpoint
    async def move_node(self, request: IRequest, node_id: str) -> dict:
        nid = self._node_id(node_id)
        body = v.json_body(request)
        ident = v.field(body, "user")
        if ident is None:
            ident = v.query(request, "user", v.MAX_USER_NAME)
        return await self._reply([await self._nodes().move_to(nid, v.user_ident(ident, "user"))])
