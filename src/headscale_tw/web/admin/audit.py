# -*- test-case-name: tests.web.test_admin_audit -*-
"""
``/api/v1/audit``: read the audit log (an headscale-tw extension; Headscale has no such route)::

    GET /api/v1/audit[?since=&until=&actor=&action=&target=&limit=]  -> {"events": [AuditEvent]}

``since`` (inclusive) and ``until`` (exclusive) are RFC 3339 times; ``actor``
matches an actor's name or kind, ``action`` an action or its family (``node``
matches ``node.delete``), ``target`` a target's id, name or kind; ``limit``
is 1 to :data:`~headscale_tw.control.audit.MAX_PAGE` (default
:data:`DEFAULT_LIMIT`). Events come newest first.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from headscale_tw.control.audit import MAX_PAGE
from headscale_tw.storage.models import AuditEvent
from headscale_tw.web.admin import validate as v
from headscale_tw.web.admin.errors import INVALID_ARGUMENT, ApiError
from headscale_tw.web.admin.routing import Handlers, app, endpoint
from headscale_tw.web.admin.shapes import timestamp_json

__all__ = ["AuditHandlers", "DEFAULT_LIMIT", "MAX_FILTER", "audit_event_json"]

#: Events returned when no ``limit`` is given.
DEFAULT_LIMIT = 100
#: The longest text filter accepted.
MAX_FILTER = 200


def audit_event_json(event: AuditEvent) -> dict:
    """An audit event as JSON (camelCase, id as a decimal string, as the other messages)."""
    return {
        "id": str(event.id), "time": timestamp_json(event.at), "actorKind": event.actor_kind, "actor": event.actor,
        "action": event.action, "targetKind": event.target_kind, "targetId": event.target_id,
        "targetName": event.target_name, "source": event.source, "result": event.result, "detail": event.detail,
        "instance": event.instance,
    }


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError(INVALID_ARGUMENT, f"limit: expected a whole number from 1 to {MAX_PAGE}")
    return int(text)


class AuditHandlers(Handlers):
    """The audit log route."""

    @app.route("/v1/audit", methods=["GET"])
    @endpoint
    async def list_audit_events(self, request: IRequest) -> dict:
        since = v.timestamp(v.query(request, "since", 64), "since")
        until = v.timestamp(v.query(request, "until", 64), "until")
        if since is not None and until is not None and until <= since:
            raise ApiError(INVALID_ARGUMENT, "until: must be later than since")
        events = await self.services.audit.list(
            since=since, until=until,
            actor=v.query(request, "actor", MAX_FILTER) or "",
            action=v.query(request, "action", MAX_FILTER) or "",
            target=v.query(request, "target", MAX_FILTER) or "",
            limit=_limit(v.query(request, "limit", 8)),
        )
        return {"events": [audit_event_json(e) for e in events]}
