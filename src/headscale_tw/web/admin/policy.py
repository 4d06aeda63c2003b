# -*- test-case-name: tests.nodesapi.test_api,tests.web.test_admin_hostile -*-
"""
``/api/v1/policy``: read, set and check the policy (501 without a control plane)::

    GET    /api/v1/policy                           -> {"policy": text, "updatedAt": ts|null}
    PUT    /api/v1/policy {policy}                  -> {"policy": text, "updatedAt": ts}
    POST   /api/v1/policy/check {policy}            -> {}

With no policy in force, ``GET`` is a 404 whose message contains ``acl policy
not found`` (what Headplane reads as "no policy yet"); in file mode ``PUT`` is
refused with a message containing ``update is disabled``.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from headscale_tw.control.policy_admin import PolicyAdmin, PolicyText
from headscale_tw.web.admin import validate as v
from headscale_tw.web.admin.errors import INVALID_ARGUMENT, UNIMPLEMENTED, ApiError
from headscale_tw.web.admin.nodes import NO_PLANE
from headscale_tw.web.admin.routing import Handlers, app, endpoint, read_only
from headscale_tw.web.admin.shapes import timestamp_json

__all__ = ["PolicyHandlers"]


def _policy_json(policy: PolicyText) -> dict:
    return {"policy": policy.text, "updatedAt": timestamp_json(policy.updated_at)}


class PolicyHandlers(Handlers):
    """The policy routes."""

    def _policy(self) -> PolicyAdmin:
        if self.services.policy is None:
            raise ApiError(UNIMPLEMENTED, NO_PLANE)
        return self.services.policy

    def _policy_text(self, request: IRequest) -> str:
        text = v.field(v.json_body(request), "policy")
        if not isinstance(text, str):
            raise ApiError(INVALID_ARGUMENT, "policy: the policy text (HuJSON) is required as a string")
        return v.text(text, "policy", v.MAX_BODY_BYTES, printable=False)

    @app.route("/v1/policy", methods=["GET"])
    @endpoint
    async def get_policy(self, request: IRequest) -> dict:
        return _policy_json(await self._policy().current())

    @app.route("/v1/policy", methods=["PUT"])
    @endpoint
    async def set_policy(self, request: IRequest) -> dict:
        policy = self._policy()
        updated = await policy.set(self._policy_text(request))
        self.log.info("policy updated through the API")
        return _policy_json(updated)

    @app.route("/v1/policy/check", methods=["POST"])
    @endpoint
    @read_only
    async def check_policy(self, request: IRequest) -> dict:
        policy = self._policy()
        policy.check(self._policy_text(request))
        return {}
