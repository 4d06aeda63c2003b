# -*- test-case-name: tests.control.test_admin_services,tests.web.test_admin_api -*-
"""
The admin services that ``/api/v1`` (and so the CLI) calls, built in one place.

:func:`build_admin_services` is the one builder: the control plane calls it
with its state, notifier, registrar and policy; a database-only API (no
plane: users and keys only) calls it with the database alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import attrs

from headscale_tw.control.audit import NO_AUDIT, AuditLog
from headscale_tw.control.authkeys import ApiKeyAdmin, Pepper, PreAuthKeyAdmin
from headscale_tw.control.nodes import NodeAdmin
from headscale_tw.control.policy_admin import PolicyAdmin
from headscale_tw.control.users import UserAdmin
from headscale_tw.interfaces import IDatabase

__all__ = ["AdminServices", "build_admin_services"]


@attrs.frozen
class AdminServices:
    """Everything the admin API calls; ``nodes`` and ``policy`` are ``None`` without a control plane."""

    users: UserAdmin
    preauthkeys: PreAuthKeyAdmin
    apikeys: ApiKeyAdmin
    #: Resolves when the database answers (``GET /api/v1/health``); raises otherwise.
    ping: Callable[[], Awaitable[object]]
    nodes: NodeAdmin | None = None
    policy: PolicyAdmin | None = None
    #: The audit log every service above records into (``GET /api/v1/audit`` reads it).
    audit: AuditLog = NO_AUDIT


def build_admin_services(db: IDatabase, now: Callable[[], datetime], *, state=None, notifier=None, registrar=None,
                         policy=None, clock=None, audit: AuditLog | None = None) -> AdminServices:
    """The admin services over ``db``; with ``state``, ``notifier``, ``registrar`` and ``policy`` (the
    control plane's) also nodes and policy, and user changes reach the plane. ``clock`` (the reactor)
    lets long inputs be worked through a slice per reactor turn. Every change is recorded in ``audit``
    (default: an :class:`AuditLog` over ``db.audit``)."""
    if audit is None:
        audit = AuditLog(db.audit, now)
    users = UserAdmin(db.users, now, state, notifier, audit=audit)
    pepper = Pepper(db.server_state)
    nodes = None
    if state is not None and notifier is not None and registrar is not None and policy is not None:
        nodes = NodeAdmin(state, notifier, registrar, users, db.preauthkeys, clock=clock, audit=audit, policy=policy)
    return AdminServices(
        users=users,
        preauthkeys=PreAuthKeyAdmin(db.preauthkeys, users, pepper, now, audit=audit),
        apikeys=ApiKeyAdmin(db.apikeys, pepper, now, audit=audit),
        ping=lambda: db.server_state.get("health"),
        nodes=nodes,
        policy=PolicyAdmin(policy, db.policies, notifier, audit=audit) if policy is not None else None,
        audit=audit,
    )
