# -*- test-case-name: tests.web.test_admin_api,tests.nodesapi.test_api -*-
"""
Headscale's ``/api/v1`` JSON shapes (grpc-gateway's rendering of protobuf):
camelCase names, 64-bit ids as strings, RFC 3339 timestamps, every field present.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from headscale_tw.control.nodes import NodeDetails
from headscale_tw.control.routes import announced_routes
from headscale_tw.control.state import TAGGED_DEVICES_USER_ID
from headscale_tw.storage.models import ApiKey, Node, PreAuthKey, User
from headscale_tw.timestamps import format_timestamp

__all__ = ["TAGGED_DEVICES", "timestamp_json", "user_json", "preauthkey_json", "apikey_json", "node_json",
           "details_json"]

_REGISTER_METHODS = {"authkey": "REGISTER_METHOD_AUTH_KEY", "cli": "REGISTER_METHOD_CLI",
                     "oidc": "REGISTER_METHOD_OIDC"}
#: The pseudo-user Headscale shows as the owner of tagged nodes.
TAGGED_DEVICES = User(id=TAGGED_DEVICES_USER_ID, name="tagged-devices", display_name="Tagged Devices")


def timestamp_json(dt: datetime | None) -> str | None:
    """A time as protobuf JSON writes it, or ``None``."""
    return format_timestamp(dt) if dt is not None else None


def user_json(user: User) -> dict:
    """A ``User`` as ``headscale.v1.User`` JSON."""
    return {
        "id": str(user.id),
        "name": user.name,
        "createdAt": timestamp_json(user.created_at),
        "displayName": user.display_name,
        "email": user.email,
        "providerId": user.provider_identifier,
        "provider": user.provider,
        "profilePicUrl": user.profile_pic_url,
        # not in Headscale: the IdP groups of the last OIDC sign-in (idpgroup:<name> in the policy)
        "idpGroups": list(user.idp_groups),
    }


def preauthkey_json(key: PreAuthKey, user: User | None, full_key: str | None = None) -> dict:
    """A ``PreAuthKey`` as ``headscale.v1.PreAuthKey`` JSON; the secret only when just created."""
    return {
        "user": user_json(user) if user is not None else None,
        "id": str(key.id),
        "key": full_key or f"hskey-auth-{key.prefix}-***",
        "reusable": key.reusable,
        "ephemeral": key.ephemeral,
        "used": key.used,
        "expiration": timestamp_json(key.expiration),
        "createdAt": timestamp_json(key.created_at),
        "aclTags": list(key.tags),
    }


def apikey_json(key: ApiKey) -> dict:
    """An ``ApiKey`` as ``headscale.v1.ApiKey`` JSON (prefix masked, as Headscale lists it)."""
    return {
        "id": str(key.id),
        "prefix": f"hskey-api-{key.prefix}-***",
        "expiration": timestamp_json(key.expiration),
        "createdAt": timestamp_json(key.created_at),
        "lastSeen": timestamp_json(key.last_seen),
    }


def node_json(node: Node, user: User | None, key: PreAuthKey | None = None, key_user: User | None = None, *,
              online: bool = False, subnet_routes: Sequence[str] = ()) -> dict:
    """A ``Node`` as ``headscale.v1.Node`` JSON (Headscale 0.29: one ``tags`` list).

    A tagged node is shown as owned by ``tagged-devices``, as Headscale does;
    ``name`` is the client's hostname and ``givenName`` the MagicDNS name.
    """
    return {
        "id": str(node.id),
        "machineKey": node.machine_key,
        "nodeKey": node.node_key,
        "discoKey": node.disco_key,
        "ipAddresses": [a for a in (node.ipv4, node.ipv6) if a],
        "name": node.hostname,
        "user": user_json(TAGGED_DEVICES if node.tags or user is None else user),
        "lastSeen": timestamp_json(node.last_seen),
        "expiry": timestamp_json(node.expiry),
        "preAuthKey": preauthkey_json(key, key_user) if key is not None else None,
        "createdAt": timestamp_json(node.created_at),
        "registerMethod": _REGISTER_METHODS.get(node.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        "givenName": node.given_name,
        "online": online,
        "approvedRoutes": list(node.approved_routes),
        "availableRoutes": [str(r) for r in announced_routes(node)],
        "subnetRoutes": list(subnet_routes),
        "tags": list(node.tags),
    }


def details_json(details: NodeDetails) -> dict:
    """:func:`node_json` of what :meth:`~headscale_tw.control.nodes.NodeAdmin.describe` returned."""
    return node_json(details.node, details.user, details.key, details.key_user, online=details.online,
                     subnet_routes=details.subnet_routes)
