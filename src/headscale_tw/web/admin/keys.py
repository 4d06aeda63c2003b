# -*- test-case-name: tests.web.test_admin_api,tests.web.test_admin_hostile -*-
"""
``/api/v1/preauthkey`` and ``/api/v1/apikey``::

    GET    /api/v1/preauthkey[?user=]               -> {"preAuthKeys": [PreAuthKey]}
    POST   /api/v1/preauthkey {user, reusable, ephemeral, expiration, aclTags}
                                                    -> {"preAuthKey": PreAuthKey}  (full key, once)
    POST   /api/v1/preauthkey/expire {id}           -> {}
    DELETE /api/v1/preauthkey?id=                   -> {}
    GET    /api/v1/apikey                           -> {"apiKeys": [ApiKey]}
    POST   /api/v1/apikey {expiration}              -> {"apiKey": "hskey-api-..."}  (once)
    POST   /api/v1/apikey/expire {prefix | id}      -> {}
    DELETE /api/v1/apikey/{prefix}  or  ?id=        -> {}
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from headscale_tw.web.admin import validate as v
from headscale_tw.web.admin.routing import Handlers, app, endpoint
from headscale_tw.web.admin.shapes import apikey_json, preauthkey_json

__all__ = ["PreAuthKeyHandlers", "ApiKeyHandlers"]


class PreAuthKeyHandlers(Handlers):
    """The pre-auth key routes."""

    @app.route("/v1/preauthkey", methods=["GET"])
    @endpoint
    async def list_preauthkeys(self, request: IRequest) -> dict:
        keys = await self.services.preauthkeys.list(v.parse_id(v.query(request, "user", 20), "user"))
        return {"preAuthKeys": [preauthkey_json(k.key, k.user) for k in keys]}

    @app.route("/v1/preauthkey", methods=["POST"])
    @endpoint
    async def create_preauthkey(self, request: IRequest) -> dict:
        body = v.json_body(request)
        created = await self.services.preauthkeys.create(
            v.parse_id(v.field(body, "user"), "user"),
            reusable=v.flag(v.field(body, "reusable"), "reusable"),
            ephemeral=v.flag(v.field(body, "ephemeral"), "ephemeral"),
            expiration=v.timestamp(v.field(body, "expiration"), "expiration"),
            tags=v.tags(v.field(body, "acl_tags") or [], "aclTags"),
        )
        return {"preAuthKey": preauthkey_json(created.key, created.user, full_key=created.full_text)}

    @app.route("/v1/preauthkey/expire", methods=["POST"])
    @endpoint
    async def expire_preauthkey(self, request: IRequest) -> dict:
        await self.services.preauthkeys.expire(v.required_id(v.field(v.json_body(request), "id"), "id"))
        return {}

    @app.route("/v1/preauthkey", methods=["DELETE"])
    @endpoint
    async def delete_preauthkey(self, request: IRequest) -> dict:
        await self.services.preauthkeys.delete(v.required_id(v.query(request, "id", 20), "id"))
        return {}


class ApiKeyHandlers(Handlers):
    """The API key routes."""

    @app.route("/v1/apikey", methods=["GET"])
    @endpoint
    async def list_apikeys(self, request: IRequest) -> dict:
        return {"apiKeys": [apikey_json(k) for k in await self.services.apikeys.list()]}

    @app.route("/v1/apikey", methods=["POST"])
    @endpoint
    async def create_apikey(self, request: IRequest) -> dict:
        expiration = v.timestamp(v.field(v.json_body(request), "expiration"), "expiration")
        return {"apiKey": await self.services.apikeys.create(expiration)}

    @app.route("/v1/apikey/expire", methods=["POST"])
    @endpoint
    async def expire_apikey(self, request: IRequest) -> dict:
        body = v.json_body(request)
        await self.services.apikeys.expire(v.parse_id(v.field(body, "id"), "id"),
                                           v.text(v.field(body, "prefix"), "prefix", v.MAX_KEY_TEXT))
        return {}

    @app.route("/v1/apikey/<prefix>", methods=["DELETE"])
    @endpoint
    async def delete_apikey(self, request: IRequest, prefix: str) -> dict:
        await self.services.apikeys.delete(v.parse_id(v.query(request, "id", 20), "id"),
                                           v.text(prefix, "prefix", v.MAX_KEY_TEXT))
        return {}

    @app.route("/v1/apikey", methods=["DELETE"])
    @endpoint
    async def delete_apikey_by_id(self, request: IRequest) -> dict:
        await self.services.apikeys.delete(v.required_id(v.query(request, "id", 20), "id"))
        return {}
