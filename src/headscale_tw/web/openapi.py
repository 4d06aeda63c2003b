# -*- test-case-name: tests.web.test_openapi,tests.web.test_api_fuzz -*-
"""
The OpenAPI description of ``/api/v1``, in the version Headscale serves.

Headscale (up to 0.29) serves ``/swagger/v1/openapiv2.json``, the document
``protoc-gen-openapiv2`` writes from its gRPC service: **Swagger 2.0**, no
``basePath``, every path spelled from ``/api/v1``, one ``200`` response and one
``default`` response (``rpcStatus``) per operation, and definitions named
``v1<Message>``. This document follows the same version and conventions, so
the tools that read Headscale's read ours, and it describes what *this* server
does (see :mod:`headscale_tw.web.admin_api`):

- JSON is protobuf's: camelCase names, 64-bit ids as decimal strings
  (``format: uint64``), times as RFC 3339 strings (``format: date-time``);
- every response field is always present, so response objects list them all
  as ``required``; a time that is not set, and a message field that is absent
  (a pre-auth key's user, a node's pre-auth key), is ``null``, marked with the
  ``x-nullable`` extension that Swagger 2.0 tooling reads;
- an error is ``{"code": <gRPC code>, "message": "...", "details": []}``;
- the health check declares its ``503``;
- operations beyond Headscale 0.29's are marked ``x-headscale-tw`` (the
  pre-0.23 ``MoveNode`` and ``DELETE /api/v1/apikey?id=``); the ``user`` filter
  of the pre-auth key list says so in its description.

Requests authenticate with ``Authorization: Bearer <API key>``; Swagger 2.0
can only say this as an ``apiKey`` in the ``Authorization`` header.

The document is built once from the small description below; :func:`document`
returns a fresh copy and :func:`document_bytes` its JSON.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

__all__ = ["document", "document_bytes", "operations"]

_TAG = "HeadscaleService"

# ---------------------------------------------------------------- schema pieces


def _ref(name: str, nullable: bool = False) -> dict:
    schema: dict[str, Any] = {"$ref": f"#/definitions/{name}"}
    if nullable:
        schema["x-nullable"] = True
    return schema


_STRING: dict = {"type": "string"}
_BOOL: dict = {"type": "boolean"}
_STRINGS: dict = {"type": "array", "items": {"type": "string"}}
#: A 64-bit id as protobuf JSON writes it: a decimal string.
_ID: dict = {"type": "string", "format": "uint64"}
#: A time that may be unset (``null``).
_TIME: dict = {"type": "string", "format": "date-time", "x-nullable": True}
#: An id as a request parameter: decimal digits, at most 2^63 - 1.
_ID_PARAM: dict = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_ID_TEXT = "A decimal id (uint64, as protobuf JSON writes 64-bit integers)."


def _message(properties: dict, required: bool = True, description: str = "") -> dict:
    """An object schema; response messages list every property as required (all are always sent)."""
    schema: dict[str, Any] = {"type": "object"}
    if description:
        schema["description"] = description
    if properties:
        schema["properties"] = properties
        if required:
            schema["required"] = list(properties)
    return schema


def _request(properties: dict, description: str = "") -> dict:
    """A request body: every field optional, as grpc-gateway reads them (snake_case names also accepted)."""
    return _message(properties, required=False, description=description)


_DEFINITIONS: dict[str, dict] = {
    "protobufAny": {"type": "object", "properties": {"@type": _STRING}, "additionalProperties": {}},
    "rpcStatus": _message({
        "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
        "message": _STRING,
        "details": {"type": "array", "items": _ref("protobufAny")},
    }, description="An error: the gRPC code, a message naming the field and the limit, no details."),
    "v1User": _message({
        "id": _ID, "name": _STRING, "createdAt": _TIME, "displayName": _STRING, "email": _STRING,
        "providerId": _STRING, "provider": _STRING, "profilePicUrl": _STRING,
        "idpGroups": {**_STRINGS, "description": "Not in Headscale: the groups the OpenID provider sent at the "
                                                  "user's last sign-in, named idpgroup:<name> in the policy."},
    }),
    "v1PreAuthKey": _message({
        "user": _ref("v1User", nullable=True), "id": _ID,
        "key": {"type": "string", "description": "The whole key only in the creation answer; "
                                                "hskey-auth-<prefix>-*** afterwards."},
        "reusable": _BOOL, "ephemeral": _BOOL, "used": _BOOL, "expiration": _TIME, "createdAt": _TIME,
        "aclTags": _STRINGS,
    }),
    "v1ApiKey": _message({
        "id": _ID, "prefix": {"type": "string", "description": "hskey-api-<prefix>-***"},
        "expiration": _TIME, "createdAt": _TIME, "lastSeen": _TIME,
    }),
    "v1RegisterMethod": {
        "type": "string",
        "enum": ["REGISTER_METHOD_UNSPECIFIED", "REGISTER_METHOD_AUTH_KEY", "REGISTER_METHOD_CLI",
                 "REGISTER_METHOD_OIDC"],
        "default": "REGISTER_METHOD_UNSPECIFIED",
    },
    "v1Node": _message({
        "id": _ID, "machineKey": _STRING, "nodeKey": _STRING, "discoKey": _STRING, "ipAddresses": _STRINGS,
        "name": {"type": "string", "description": "The hostname the client reported."},
        "user": _ref("v1User"), "lastSeen": _TIME, "expiry": _TIME,
        "preAuthKey": _ref("v1PreAuthKey", nullable=True), "createdAt": _TIME,
        "registerMethod": _ref("v1RegisterMethod"),
        "givenName": {"type": "string", "description": "The MagicDNS name."},
        "online": _BOOL, "approvedRoutes": _STRINGS,
        "availableRoutes": {**_STRINGS, "description": "The routes the node announces."},
        "subnetRoutes": {**_STRINGS, "description": "The routes it serves now (HA primaries and approved exit "
                                                    "routes)."},
        "tags": _STRINGS,
    }, description="A node; a tagged node is shown as owned by the user tagged-devices."),
    # requests
    "v1CreateUserRequest": _request({"name": _STRING, "displayName": _STRING, "email": _STRING,
                                     "pictureUrl": {"type": "string", "description": "Accepted and ignored."}}),
    "v1CreatePreAuthKeyRequest": _request({
        "user": {**_ID, "description": "The owner's id; may be left out for a tagged key."},
        "reusable": _BOOL, "ephemeral": _BOOL, "expiration": {"type": "string", "format": "date-time"},
        "aclTags": _STRINGS,
    }),
    "v1ExpirePreAuthKeyRequest": _request({"id": _ID}),
    "v1CreateApiKeyRequest": _request({"expiration": {"type": "string", "format": "date-time"}}),
    "v1ExpireApiKeyRequest": _request({"prefix": _STRING, "id": _ID}, description="Exactly one of prefix and id."),
    "HeadscaleServiceSetTagsBody": _request({"tags": _STRINGS}),
    "HeadscaleServiceSetApprovedRoutesBody": _request({"routes": _STRINGS}),
    "HeadscaleServiceMoveNodeBody": _request({"user": {"type": "string", "description": "A user name or id."}}),
    "v1AuthRegisterRequest": _request({"user": _STRING, "authId": _STRING}),
    "v1DebugCreateNodeRequest": _request({
        "user": {"type": "string", "description": "An existing user's name or id."},
        "key": {"type": "string", "description": "The auth id to register the node under: 24 letters and "
                                                "digits, or hskey-authreq- and 24 URL-safe characters."},
        "name": {"type": "string", "description": "The node's host name."},
        "routes": {**_STRINGS, "description": "Prefixes the node announces once registered."},
    }),
    "v1AuthApproveRequest": _request({"authId": _STRING}),
    "v1AuthRejectRequest": _request({"authId": _STRING}),
    "v1SetPolicyRequest": _request({"policy": {"type": "string", "description": "The policy text (HuJSON)."}}),
    "v1CheckPolicyRequest": _request({"policy": {"type": "string", "description": "The policy text (HuJSON)."}}),
    # responses
    "v1ListUsersResponse": _message({"users": {"type": "array", "items": _ref("v1User")}}),
    "v1CreateUserResponse": _message({"user": _ref("v1User")}),
    "v1RenameUserResponse": _message({"user": _ref("v1User")}),
    "v1DeleteUserResponse": _message({}),
    "v1ListPreAuthKeysResponse": _message({"preAuthKeys": {"type": "array", "items": _ref("v1PreAuthKey")}}),
    "v1CreatePreAuthKeyResponse": _message({"preAuthKey": _ref("v1PreAuthKey")}),
    "v1ExpirePreAuthKeyResponse": _message({}),
    "v1DeletePreAuthKeyResponse": _message({}),
    "v1ListApiKeysResponse": _message({"apiKeys": {"type": "array", "items": _ref("v1ApiKey")}}),
    "v1CreateApiKeyResponse": _message({"apiKey": {"type": "string", "description": "The whole key, shown once."}}),
    "v1ExpireApiKeyResponse": _message({}),
    "v1DeleteApiKeyResponse": _message({}),
    "v1HealthResponse": _message({"databaseConnectivity": _BOOL}),
    "v1ListNodesResponse": _message({"nodes": {"type": "array", "items": _ref("v1Node")}}),
    "v1BackfillNodeIPsResponse": _message({"changes": _STRINGS}),
    "v1GetPolicyResponse": _message({"policy": _STRING, "updatedAt": _TIME}),
    "v1SetPolicyResponse": _message({"policy": _STRING, "updatedAt": _TIME}),
    "v1CheckPolicyResponse": _message({}),
    "v1AuthApproveResponse": _message({}),
    "v1AuthRejectResponse": _message({}),
    "v1AuditEvent": _message({
        "id": _ID, "time": _TIME, "actorKind": _STRING,
        "actor": {"type": "string", "description": "API key prefix, unix user, OIDC user or key prefix; never a "
                                                  "secret."},
        "action": _STRING, "targetKind": _STRING, "targetId": _STRING, "targetName": _STRING, "source": _STRING,
        "result": _STRING, "detail": {"type": "object", "additionalProperties": {}}, "instance": _STRING,
    }, description="One audit log event (headscale-tw extension)."),
    "v1ListAuditEventsResponse": _message({"events": {"type": "array", "items": _ref("v1AuditEvent")}}),
}
for _name in ("GetNode", "DeleteNode", "ExpireNode", "RenameNode", "SetTags", "SetApprovedRoutes", "MoveNode",
              "RegisterNode", "AuthRegister", "DebugCreateNode"):
    _DEFINITIONS[f"v1{_name}Response"] = _message({} if _name == "DeleteNode" else {"node": _ref("v1Node")})

# ---------------------------------------------------------------- operations


def _path(name: str, is_id: bool = False) -> dict:
    if is_id:
        return {"name": name, "in": "path", "required": True, **_ID_PARAM, "description": _ID_TEXT}
    return {"name": name, "in": "path", "required": True, "type": "string"}


def _query(name: str, kind: str = "string", fmt: str = "", description: str = "") -> dict:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "type": kind}
    if kind == "id":
        param.update(_ID_PARAM, description=_ID_TEXT)
    elif fmt:
        param["format"] = fmt
    if description:
        param["description"] = description
    return param


def _body(definition: str) -> dict:
    return {"name": "body", "in": "body", "required": True, "schema": _ref(definition)}


def _operation(name: str, summary: str, *params: dict, extra: bool = False, also: dict | None = None) -> dict:
    """``HeadscaleService_<name>``, answering ``v1<name>Response`` or an ``rpcStatus``."""
    responses: dict[str, Any] = {
        "200": {"description": "A successful response.", "schema": _ref(f"v1{name}Response")},
        **(also or {}),
        "default": {"description": "An error response.", "schema": _ref("rpcStatus")},
    }
    op: dict[str, Any] = {"summary": summary, "operationId": f"HeadscaleService_{name}", "responses": responses,
                          "tags": [_TAG]}
    if params:
        op["parameters"] = list(params)
    if extra:
        op["x-headscale-tw"] = "not in Headscale 0.29's document; kept for older clients"
    return op


_NODE_ID = _path("nodeId", is_id=True)

_PATHS: dict[str, dict] = {
    "/api/v1/user": {
        "get": _operation("ListUsers", "List users, or find them by id, name or email.",
                          _query("id", "id"), _query("name"), _query("email")),
        "post": _operation("CreateUser", "Create a user.", _body("v1CreateUserRequest")),
    },
    "/api/v1/user/{oldId}/rename/{newName}": {
        "post": _operation("RenameUser", "Rename a user.", _path("oldId", is_id=True), _path("newName")),
    },
    "/api/v1/user/{id}": {
        "delete": _operation("DeleteUser", "Delete a user that owns no nodes.", _path("id", is_id=True)),
    },
    "/api/v1/preauthkey": {
        "get": _operation("ListPreAuthKeys", "List pre-auth keys (secrets masked).",
                          _query("user", "id", description="Only this user's keys (headscale-tw extension). "
                                                           + _ID_TEXT)),
        "post": _operation("CreatePreAuthKey", "Create a pre-auth key; the answer holds the whole key once.",
                           _body("v1CreatePreAuthKeyRequest")),
        "delete": _operation("DeletePreAuthKey", "Delete a pre-auth key.", _query("id", "id")),
    },
    "/api/v1/preauthkey/expire": {
        "post": _operation("ExpirePreAuthKey", "Expire a pre-auth key now.", _body("v1ExpirePreAuthKeyRequest")),
    },
    "/api/v1/apikey": {
        "get": _operation("ListApiKeys", "List API keys (prefixes only)."),
        "post": _operation("CreateApiKey", "Create an API key; the answer holds the whole key once.",
                           _body("v1CreateApiKeyRequest")),
    },
    "/api/v1/apikey/expire": {
        "post": _operation("ExpireApiKey", "Expire an API key now.", _body("v1ExpireApiKeyRequest")),
    },
    "/api/v1/apikey/{prefix}": {
        "delete": _operation("DeleteApiKey", "Delete an API key by prefix (or by the id query parameter).",
                             _path("prefix"), _query("id", "id")),
    },
    "/api/v1/health": {
        "get": _operation("Health", "Database connectivity.",
                          also={"503": {"description": "The database is unreachable.",
                                        "schema": _ref("rpcStatus")}}),
    },
    "/api/v1/node": {
        "get": _operation("ListNodes", "List nodes, or one user's.",
                          _query("user", description="A user name or id.")),
    },
    "/api/v1/node/register": {
        "post": _operation("RegisterNode", "Finish an interactive registration (older form of auth/register).",
                           _query("user"), _query("key", description="The auth id from the client's login URL.")),
    },
    "/api/v1/node/backfillips": {
        "post": _operation("BackfillNodeIPs", "Give nodes addresses of the configured prefixes they lack, and "
                                              "drop addresses of a family no longer configured.",
                           _query("confirmed", "boolean",
                                  description="Must be true; otherwise nothing changes (400).")),
    },
    "/api/v1/debug/node": {
        "post": _operation("DebugCreateNode", "Open a pending registration for a made-up node, which "
                                              "auth/register then finishes.", _body("v1DebugCreateNodeRequest")),
    },
    "/api/v1/node/{nodeId}": {
        "get": _operation("GetNode", "One node.", _NODE_ID),
        "delete": _operation("DeleteNode", "Delete a node.", _NODE_ID),
    },
    "/api/v1/node/{nodeId}/expire": {
        "post": _operation("ExpireNode", "Expire a node now or at a time, or disable its expiry.", _NODE_ID,
                           _query("expiry", fmt="date-time"),
                           _query("disableExpiry", "boolean",
                                  description="When true, the node never expires.")),
    },
    "/api/v1/node/{nodeId}/rename/{newName}": {
        "post": _operation("RenameNode", "Set a node's MagicDNS name.", _NODE_ID, _path("newName")),
    },
    "/api/v1/node/{nodeId}/tags": {
        "post": _operation("SetTags", "Replace a node's tags.", _NODE_ID, _body("HeadscaleServiceSetTagsBody")),
    },
    "/api/v1/node/{nodeId}/approve_routes": {
        "post": _operation("SetApprovedRoutes", "Replace a node's approved routes.", _NODE_ID,
                           _body("HeadscaleServiceSetApprovedRoutesBody")),
    },
    "/api/v1/node/{nodeId}/user": {
        "post": _operation("MoveNode", "Give a node to another user (Headscale before 0.23).", _NODE_ID,
                           _body("HeadscaleServiceMoveNodeBody"), extra=True),
    },
    "/api/v1/auth/register": {
        "post": _operation("AuthRegister", "Finish an interactive registration for a user.",
                           _body("v1AuthRegisterRequest")),
    },
    "/api/v1/auth/approve": {
        "post": _operation("AuthApprove", "Approve a pending SSH check (a node registration is refused: "
                           "finish it with AuthRegister).", _body("v1AuthApproveRequest")),
    },
    "/api/v1/auth/reject": {
        "post": _operation("AuthReject", "Refuse a pending auth request (registration or SSH check); "
                           "its waiting client is told.", _body("v1AuthRejectRequest")),
    },
    "/api/v1/policy": {
        "get": _operation("GetPolicy", "The policy in force."),
        "put": _operation("SetPolicy", "Store a new policy (policy.mode: database).", _body("v1SetPolicyRequest")),
    },
    "/api/v1/audit": {
        "get": {**_operation(
            "ListAuditEvents", "The audit log, newest first.",
            _query("since", fmt="date-time", description="Events at or after this time."),
            _query("until", fmt="date-time", description="Events before this time."),
            _query("actor", description="An actor's name or kind."),
            _query("action", description="An action, or its family (node matches node.delete)."),
            _query("target", description="A target's id, name or kind."),
            {**_query("limit", "integer", fmt="int32", description="At most this many events (default 100)."),
             "minimum": 1, "maximum": 1000}),
            "x-headscale-tw": "not in Headscale: the audit log is a headscale-tw extension"},
    },
    "/api/v1/policy/check": {
        "post": _operation("CheckPolicy", "Check a policy without storing it.", _body("v1CheckPolicyRequest")),
    },
}
# DeleteApiKey by id alone, without a prefix in the path.
_PATHS["/api/v1/apikey"]["delete"] = {
    **_operation("DeleteApiKey", "Delete an API key by id.", _query("id", "id"), extra=True),
    "operationId": "HeadscaleService_DeleteApiKeyById",
}


@functools.cache
def _build() -> dict:
    from headscale_tw import __version__

    return {
        "swagger": "2.0",
        "info": {
            "title": "headscale/v1/headscale.proto",
            "description": "The admin API of headscale-tw, with Headscale's paths and JSON shapes.",
            "version": __version__,
        },
        "tags": [{"name": _TAG}],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                       "description": "Bearer <API key>, as made by headscale apikeys create."},
        },
        "security": [{"ApiKey": []}],
        "paths": _PATHS,
        "definitions": _DEFINITIONS,
    }


def document() -> dict:
    """The Swagger 2.0 document of ``/api/v1`` (a fresh copy the caller may change)."""
    return copy.deepcopy(_build())


@functools.cache
def document_bytes() -> bytes:
    """The document as UTF-8 JSON, as served at ``/swagger/v1/openapiv2.json``."""
    return json.dumps(_build(), indent=2, sort_keys=False).encode("utf-8") + b"\n"


def operations() -> list[tuple[str, str, str]]:
    """Every ``(METHOD, path, summary)`` of the document, in path order."""
    return [(method.upper(), path, op.get("summary", ""))
            for path, ops in _PATHS.items() for method, op in ops.items()]
