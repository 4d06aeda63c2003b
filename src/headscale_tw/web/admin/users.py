# -*- test-case-name: tests.web.test_admin_api,tests.web.test_admin_hostile -*-
"""
``/api/v1/user``: list, create, rename and delete users::

    GET    /api/v1/user[?id=|name=|email=]         -> {"users": [User]}
    POST   /api/v1/user  {name, displayName, email} -> {"user": User}
    POST   /api/v1/user/{old_id}/rename/{new_name}  -> {"user": User}
    DELETE /api/v1/user/{id}                        -> {}
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from headscale_tw.web.admin import validate as v
from headscale_tw.web.admin.routing import Handlers, app, endpoint
from headscale_tw.web.admin.shapes import user_json

__all__ = ["UserHandlers"]


class UserHandlers(Handlers):
    """The user routes."""

    @app.route("/v1/user", methods=["GET"])
    @endpoint
    async def list_users(self, request: IRequest) -> dict:
        users = await self.services.users.list(
            user_id=v.parse_id(v.query(request, "id", 20), "id"),
            name=v.query(request, "name", v.MAX_USER_NAME),
            email=v.query(request, "email", v.MAX_EMAIL),
        )
        return {"users": [user_json(u) for u in users]}

    @app.route("/v1/user", methods=["POST"])
    @endpoint
    async def create_user(self, request: IRequest) -> dict:
        body = v.json_body(request)
        user = await self.services.users.create(
            v.user_name(v.field(body, "name")),
            display_name=v.text(v.field(body, "display_name"), "displayName", v.MAX_DISPLAY_NAME),
            email=v.text(v.field(body, "email"), "email", v.MAX_EMAIL),
        )
        return {"user": user_json(user)}

    @app.route("/v1/user/<old_id>/rename/<new_name>", methods=["POST"])
    @endpoint
    async def rename_user(self, request: IRequest, old_id: str, new_name: str) -> dict:
        user_id = v.required_id(old_id, "old_id")
        user = await self.services.users.rename(user_id, v.user_name(new_name, "new_name"))
        return {"user": user_json(user)}

    @app.route("/v1/user/<user_id>", methods=["DELETE"])
    @endpoint
    async def delete_user(self, request: IRequest, user_id: str) -> dict:
        await self.services.users.delete(v.required_id(user_id, "id"))
        return {}
