# -*- test-case-name: tests.control.test_audit -*-
"""
The audit log's domain side: who did what to what, from where, with what result.

:class:`AuditLog` is built once by the control plane (or by
:func:`~headscale_tw.control.admin.build_admin_services` for a database-only
API) and passed to the services that act: the admin services, the registrar,
the node lifecycle jobs, OIDC sign-in and the throttle summaries. It writes
through the audit event store only (no SQL here).

The *actor* of an admin action comes from the request, but the domain never
imports the web layer: the protocol layer wraps the handling of one request in
:func:`acting_as` (a :mod:`contextvars` variable, which follows the request's
coroutine across every ``await``), and :meth:`AuditLog.record` reads it with
:func:`current_actor`. Code that acts on its own account (registration with a
pre-auth key, expiry sweeps) passes its actor explicitly.

What is recorded never contains a secret: actors are named by an API key's or
pre-auth key's *prefix* (stored in clear and listed by the API anyway), a unix
user name, or an OIDC user; every text field and the detail object go through
:func:`headscale_tw.redact.redact` as well, so a key that slipped into a
message is cut to its prefix before it is stored. ``detail`` is a small JSON
object (at most :data:`MAX_DETAIL_BYTES` bytes, larger ones are replaced by a
note saying so).

Failed attempts are not recorded one by one: the throttles' per-source
summaries (one per source and interval, see :mod:`headscale_tw.throttle`) are
handed to :meth:`AuditLog.record_failures`, which writes them in one
transaction; a flood of wrong keys costs at most the throttle's summary lines
per interval.

A failed write is logged and swallowed: the action it describes has already
happened, and must not be reported to its caller as failed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import cast

import attrs
from twisted.logger import Logger

from headscale_tw.interfaces import IAuditEventStore
from headscale_tw.redact import redact
from headscale_tw.storage.models import MAX_AUDIT_PAGE as MAX_PAGE
from headscale_tw.storage.models import AuditEvent, Node
from headscale_tw.throttle import SourceSummary

__all__ = ["Actor", "Target", "AuditLog", "NO_AUDIT", "acting_as", "current_actor", "SYSTEM",
           "UNKNOWN_ACTOR", "MAX_DETAIL_BYTES", "MAX_FIELD", "MAX_PAGE",
           "policy_detail"]

#: The most bytes of JSON kept as an event's detail.
MAX_DETAIL_BYTES = 2048
#: The most characters kept of any text field (actor, target name, source, result).
MAX_FIELD = 200


@attrs.frozen
class Actor:
    """Who acted: ``kind`` (``api_key``, ``unix_socket``, ``oidc``, ``preauth_key``, ``node``,
    ``system``), ``name`` (never a secret) and the client ``source`` address (empty when none)."""

    kind: str
    name: str
    source: str = ""


#: The server itself (expiry sweeps, ephemeral garbage collection).
SYSTEM = Actor("system", "system")
#: An action outside any request context (should not happen; recorded rather than lost).
UNKNOWN_ACTOR = Actor("unknown", "")


@attrs.frozen
class Target:
    """What was acted on: a kind (``user``, ``node``, ``preauth_key``, ``api_key``, ``policy``,
    ``auth_request``, ``source``), its id and a readable name."""

    kind: str
    id: str = ""
    name: str = ""


_ACTOR: ContextVar[Actor | None] = ContextVar("headscale_tw_audit_actor", default=None)


@contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    """Make ``actor`` the :func:`current_actor` inside the ``with`` block (and the coroutines it awaits)."""
    token = _ACTOR.set(actor)
    try:
        yield actor
    finally:
        _ACTOR.reset(token)


def current_actor() -> Actor:
    """The actor set by the innermost :func:`acting_as`, or :data:`UNKNOWN_ACTOR`."""
    return _ACTOR.get() or UNKNOWN_ACTOR


def policy_detail(text: str) -> dict:
    """What the log keeps of a policy text: its size and SHA-256, never the text."""
    data = text.encode("utf-8")
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _clean(text: object) -> str:
    value = redact(str(text))
    return value if len(value) <= MAX_FIELD else value[:MAX_FIELD] + "..."


def _clean_detail(detail: dict | None) -> dict:
    if not detail:
        return {}
    text = redact(json.dumps(detail, separators=(",", ":"), default=str, sort_keys=True))
    if len(text.encode("utf-8")) > MAX_DETAIL_BYTES:
        return {"truncated": f"detail over {MAX_DETAIL_BYTES} bytes left out"}
    return json.loads(text)


class AuditLog:
    """Records audit events and reads them back.

    :param store: the audit event store (``db.audit``).
    :param now: returns the current time as an aware UTC ``datetime``.
    :param instance: names this server among those sharing the database.
    :param retention: seconds an event is kept (0: forever).
    """

    log = Logger()

    def __init__(self, store: IAuditEventStore, now: Callable[[], datetime], instance: str = "", retention: float = 0.0) -> None:
        self.store = store
        self.now = now
        self.instance = instance
        self.retention = retention

    def _event(self, action: str, target: Target | None, actor: Actor, result: str, detail: dict | None,
               at: datetime | None = None) -> AuditEvent:
        target = target or Target("")
        return AuditEvent(at=self.now() if at is None else at, actor_kind=actor.kind, actor=_clean(actor.name), action=action,
                          target_kind=target.kind, target_id=_clean(target.id), target_name=_clean(target.name),
                          source=_clean(actor.source), result=_clean(result), detail=_clean_detail(detail),
                          instance=self.instance)

    def node_event(self, action: str, actor: Actor,
                   detail: Callable[[Node], dict]) -> Callable[[Node], AuditEvent | None]:
        """
        Build a node's event once the node is stored (its id known), to be written in the node's own
        transaction (:meth:`~headscale_tw.control.state.ControlState.create_node`).

        The time and the actor are taken now, on the calling thread; the returned function only
        assembles the event from the stored node and ``detail(node)`` (it runs in the database thread).
        """
        at = self.now()

        def event(node: Node) -> AuditEvent | None:
            return self._event(action, Target("node", str(node.id), node.given_name), actor, "ok", detail(node), at)

        return event

    async def record(self, action: str, target: Target | None = None, *, actor: Actor | None = None,
                     result: str = "ok", detail: dict | None = None, lease=None) -> None:
        """Append one event; ``actor`` defaults to the request's (:func:`current_actor`). Never raises.

        With ``lease`` (a :class:`~headscale_tw.storage.stores.leases.Lease`), the event is written only
        while that tenure is live: what one instance of several does for the cluster is recorded once.
        """
        await self.add(self._event(action, target, actor or current_actor(), result, detail), lease=lease)

    async def add(self, event: AuditEvent | None, lease=None) -> None:
        """Append an event already built (e.g. by :meth:`node_event`); ``None`` is skipped. Never raises."""
        if event is None:
            return
        try:
            if lease is None:
                await self.store.add(event)
            else:
                await self.store.add(event, lease=lease)
        except Exception:
            self.log.failure("audit event {action} on {kind} {id} not recorded", action=event.action,
                             kind=event.target_kind, id=event.target_id)

    async def record_failures(self, summaries: Iterable[SourceSummary]) -> int:
        """One ``auth.failed`` row per summary (source and interval), all in one write; return how many."""
        events = [
            self._event("auth.failed", Target("source", s.source, s.source), Actor("anonymous", "", s.source),
                        "throttled" if s.throttled or s.refused else "failed",
                        {"secret": s.kind, "failures": s.failures, "refused": s.refused,
                         "interval_seconds": round(s.interval)})
            for s in summaries
        ]
        if not events:
            return 0
        try:
            await self.store.add_many(events)
        except Exception:
            self.log.failure("{count} failed-attempt summaries not recorded", count=len(events))
            return 0
        return len(events)

    async def list(self, *, since: datetime | None = None, until: datetime | None = None, actor: str = "",
                   action: str = "", target: str = "", limit: int = 100) -> list[AuditEvent]:
        """The newest events matching the filters, newest first (see the store's ``list``)."""
        return await self.store.list(since=since, until=until, actor=actor, action=action, target=target,
                                     limit=limit)

    async def prune(self, batch: int = 1000) -> int:
        """Delete events older than the retention (at most ``batch`` per call); return how many."""
        if self.retention <= 0:
            return 0
        gone = await self.store.delete_before(self.now() - timedelta(seconds=self.retention), batch)
        if gone:
            self.log.info("audit log: {count} events older than the retention deleted", count=gone)
        return gone


class _NoAudit(AuditLog):
    """Records nothing: the default of services built without an audit log (unit tests of other things)."""

    def __init__(self) -> None:
        # No store: every method that would reach one is overridden below.
        super().__init__(cast(IAuditEventStore, None), lambda: datetime.min)

    def node_event(self, action: str, actor: Actor,
                   detail: Callable[[Node], dict]) -> Callable[[Node], AuditEvent | None]:
        """No event: the node is written alone."""
        return lambda node: None

    async def add(self, event: AuditEvent | None, lease=None) -> None:
        """Discard the event."""

    async def record(self, action: str, target: Target | None = None, *, actor: Actor | None = None,
                     result: str = "ok", detail: dict | None = None, lease=None) -> None:
        """Discard the event."""

    async def record_failures(self, summaries: Iterable[SourceSummary]) -> int:
        """Discard the summaries."""
        return 0

    async def list(self, **filters) -> list[AuditEvent]:
        """Nothing was recorded."""
        return []

    async def prune(self, batch: int = 1000) -> int:
        """Nothing to delete."""
        return 0


#: The audit log of services built without one: records nothing.
NO_AUDIT: AuditLog = _NoAudit()
