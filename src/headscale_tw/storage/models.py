# -*- test-case-name: tests.storage -*-
"""
Frozen row models returned by the stores.

Stores never return tuples or dicts: every row comes back as one of these.
Times are timezone-aware UTC ``datetime`` objects or ``None``. Keys are kept in
their Tailscale text form (``mkey:<hex>``, ``nodekey:<hex>``, ``discokey:<hex>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import attrs

__all__ = ["User", "Node", "PreAuthKey", "ApiKey", "PolicyRecord", "AuthRequest", "AUTH_KINDS", "AUTH_STATES",
           "OIDCLogin", "OIDC_LOGIN_KINDS", "AuditEvent", "MAX_AUDIT_PAGE", "Lease", "Instance",
           "Change"]


@attrs.frozen
class User:
    """A tailnet user (Headscale's ``users`` table)."""

    id: int
    name: str
    display_name: str = ""
    email: str = ""
    provider: str = ""
    provider_identifier: str = ""
    profile_pic_url: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    idp_groups: tuple[str, ...] = ()
    """The groups the OpenID provider sent at the user's last sign-in (``idpgroup:`` in the policy)."""


@attrs.frozen
class Node:
    """A registered device (Headscale's ``nodes`` table).

    ``user_id`` is ``None`` for tagged nodes, which no user owns.
    ``hostinfo`` is the client's last Hostinfo JSON object (a dict, treated as
    immutable) and ``endpoints`` its last UDP endpoints (``"ip:port"``).
    ``given_name`` is the MagicDNS label; ``given_name_auto`` says it was derived
    from the hostname (so a hostname change re-derives it) rather than set by an admin.
    """

    id: int
    machine_key: str
    node_key: str
    hostname: str
    given_name: str
    user_id: int | None
    disco_key: str = ""
    ipv4: str | None = None
    ipv6: str | None = None
    endpoints: tuple[str, ...] = ()
    hostinfo: dict = attrs.field(factory=dict, hash=False)
    given_name_auto: bool = True
    register_method: str = ""  # "authkey", "cli", "oidc"
    tags: tuple[str, ...] = ()
    auth_key_id: int | None = None
    expiry: datetime | None = None
    last_seen: datetime | None = None
    approved_routes: tuple[str, ...] = ()
    ephemeral: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@attrs.frozen
class PreAuthKey:
    """A pre-auth key; only its ``prefix`` and ``key_hash`` are stored, never the secret."""

    id: int
    prefix: str
    key_hash: bytes
    user_id: int | None
    reusable: bool = False
    ephemeral: bool = False
    used: bool = False
    tags: tuple[str, ...] = ()
    expiration: datetime | None = None
    created_at: datetime | None = None


@attrs.frozen
class ApiKey:
    """An API key for ``/api/v1``; only ``prefix`` and ``key_hash`` are stored."""

    id: int
    prefix: str
    key_hash: bytes
    expiration: datetime | None = None
    last_seen: datetime | None = None
    created_at: datetime | None = None


@attrs.frozen
class PolicyRecord:
    """A policy document stored in the database (``policy.mode: database``)."""

    id: int
    data: str
    created_at: datetime | None = None
    updated_at: datetime | None = None


AUTH_KINDS = ("register", "ssh_check")
"""What an auth request asks for: a node registration, or (issue #11) an SSH check."""

AUTH_STATES = ("pending", "approved", "rejected", "expired")
"""Where an auth request stands; ``expired`` is also what a pending row past ``expires_at`` reads as."""


@attrs.frozen
class AuthRequest:
    """A request a person or an admin has to finish (the ``auth_requests`` table).

    ``source`` is the client address that opened it (the unit of the per-source
    cap). ``details`` holds the few kind-specific fields finishing needs (for a
    registration: capability version, requested expiry, ephemeral flag and a
    handful of small Hostinfo fields), never the client's whole Hostinfo.
    ``user_id`` names the user an approved request was finished for, ``node_id``
    the node a finished registration created or updated, ``reason`` why a
    rejected one was refused.
    """

    id: int
    auth_id: str
    kind: str
    state: str
    source: str
    machine_key: str
    node_key: str
    hostname: str
    details: dict = attrs.field(factory=dict, hash=False)
    user_id: int | None = None
    node_id: int | None = None
    reason: str = ""
    created_at: datetime | None = None
    expires_at: datetime | None = None
    finished_at: datetime | None = None

    def state_at(self, now: datetime) -> str:
        """The state as of ``now``: a pending request past its expiry is ``expired``."""
        if self.state == "pending" and self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return self.state


OIDC_LOGIN_KINDS = ("login", "confirmation", "ssh_check")
"""A started registration sign-in waiting for its callback, a signed-in person waiting to confirm,
or a started SSH check sign-in waiting for its callback."""


@attrs.frozen
class OIDCLogin:
    """An OpenID sign-in in progress (the ``oidc_logins`` table), as taken from it.

    For a ``login`` or an ``ssh_check``: ``nonce``, ``code_verifier`` (``None`` without PKCE) and
    ``pkce_method``. For a ``confirmation``: ``identity``, the person's claims as
    the domain stored them. The key (state or token) is not kept, only its hash.
    """

    id: int
    kind: str
    auth_id: str
    nonce: str = ""
    code_verifier: str | None = None
    pkce_method: str = ""
    identity: dict = attrs.field(factory=dict, hash=False)
    created_at: datetime | None = None
    expires_at: datetime | None = None


@attrs.frozen
class AuditEvent:
    """One row of the audit log (the ``audit_events`` table).

    ``actor_kind`` is ``api_key``, ``unix_socket``, ``oidc``, ``preauth_key``,
    ``node`` or ``system``; ``actor`` names it without a secret (an API key's
    prefix, the socket peer's user, the OIDC user). ``target_*`` say what was
    acted on; ``detail`` is a small JSON object; ``instance`` names the server
    that wrote the row. ``id`` is ``None`` before the row is stored.
    """

    at: datetime
    actor_kind: str
    actor: str
    action: str
    target_kind: str = ""
    target_id: str = ""
    target_name: str = ""
    source: str = ""
    result: str = "ok"
    detail: dict = attrs.field(factory=dict, hash=False)
    instance: str = ""
    id: int | None = None


#: The most audit rows one read returns.
MAX_AUDIT_PAGE = 1000


@dataclass(frozen=True)
class Lease:
    """One tenure of a named lease."""

    name: str
    holder: str
    token: int
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Instance:
    """One instance's row: who it is, what it runs, and until when it counts as live."""

    id: str
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    software_version: str = ""
    schema_version: int = 0
    server_url: str = ""
    derp_url: str = ""

    def live(self, now: datetime) -> bool:
        """Whether the heartbeat has not run out at ``now``."""
        return self.expires_at > now


@attrs.frozen
class Change:
    """One notification: which instance wrote, what kind of row, which id."""

    instance: str
    kind: str
    ident: int
