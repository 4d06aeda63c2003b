# -*- test-case-name: tests.cli.test_audit -*-
"""
``headscale audit list``: read the audit log through ``GET /api/v1/audit``.

::

    headscale audit list [--since WHEN] [--until WHEN] [--actor A] [--action A] [--target T] [--limit N]

``WHEN`` is an RFC 3339 time or a duration meaning "that long ago" (``24h``,
``7d``). ``-o json`` prints the server's events as they are (newest first),
``-o yaml`` the same in YAML; the default is a table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from headscale_tw.cli._client import CLIError
from headscale_tw.cli._output import render_table, table_time
from headscale_tw.config._durations import DurationError, parse_duration
from headscale_tw.timestamps import format_timestamp, parse_timestamp

__all__ = ["add_audit_commands", "cmd_audit_list", "moment"]


def moment(ctx: Any, option: str, text: str | None) -> str | None:
    """``text`` as an RFC 3339 time: a time as given, or a duration counted back from now."""
    if not text:
        return None
    try:
        when, _ = parse_timestamp(text)
        return format_timestamp(when)
    except ValueError:
        pass
    try:
        seconds = parse_duration(text)
    except DurationError:
        raise CLIError(f"{option}: {text!r} is neither an RFC 3339 time nor a duration such as 24h") from None
    if seconds < 0:
        raise CLIError(f"{option}: {text!r} is negative")
    return format_timestamp(ctx.now() - timedelta(seconds=seconds))


def _target(event: dict) -> str:
    kind, ident, name = event.get("targetKind", ""), event.get("targetId", ""), event.get("targetName", "")
    if not kind:
        return "-"
    label = f"{kind}:{ident}" if ident else kind
    return f"{label} ({name})" if name and name != ident else label


def cmd_audit_list(ctx: Any) -> None:
    args = ctx.args
    if args.limit is not None and not 1 <= args.limit <= 1000:
        raise CLIError("--limit: expected a number from 1 to 1000")
    query = {"since": moment(ctx, "--since", args.since), "until": moment(ctx, "--until", args.until),
             "actor": args.actor, "action": args.action, "target": args.target, "limit": args.limit}
    events = ctx.client.call("GET", "/audit", query).get("events") or []
    rows = [[table_time(e.get("time")), f"{e.get('actorKind', '')}:{e.get('actor', '')}".rstrip(":"),
             e.get("action", ""), _target(e), e.get("source", "") or "-", e.get("result", "")] for e in events]
    human = render_table(["Time", "Actor", "Action", "Target", "Source", "Result"], rows) if events else \
        "No audit events"
    ctx.out.result(events, events, human)


def add_audit_commands(group: Callable[..., Any], cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``audit list`` to the command tree (``group`` and ``cmd`` are ``build_parser``'s helpers)."""
    audit = group("audit", "read the audit log (admin actions, registrations, failed attempts)", [])
    p = cmd(audit, "list", cmd_audit_list, "list audit events, newest first", ["ls", "show"])
    p.add_argument("--since", help="RFC 3339 time, or a duration ago such as 24h")
    p.add_argument("--until", help="RFC 3339 time, or a duration ago such as 1h")
    p.add_argument("--actor", help="an actor's name (hskey-api-<prefix>, a unix user) or kind (api_key, system)")
    p.add_argument("--action", help="an action (node.register) or family (node)")
    p.add_argument("--target", help="a target's id, name or kind")
    p.add_argument("--limit", type=int, help="at most this many events (1-1000, default 100)")
