# -*- test-case-name: tests.nodesapi.test_cli_extra -*-
"""
``headscale nodes backfillips`` and ``headscale debug create-node``.

::

    headscale nodes backfillips [--force]
    headscale debug create-node --name NAME -u USER -k AUTH_ID [-r ROUTE[,ROUTE]]...

``backfillips`` asks for confirmation (``--force`` skips it), then calls
``POST /api/v1/node/backfillips?confirmed=true``: every node gets an address of
each configured prefix it lacks, and addresses of a family no longer configured
are removed, as Headscale does. ``-o json`` prints Headscale's
``{"changes": [...]}``.

``debug create-node`` calls ``POST /api/v1/debug/node``: a pending
registration under ``AUTH_ID`` for a made-up machine, which ``headscale auth
register --auth-id AUTH_ID --user USER`` then turns into a node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headscale_tw.cli._flags import split_list
from headscale_tw.cli._messages import NODE, to_go_json, to_go_yaml

if TYPE_CHECKING:
    from headscale_tw.cli.main import Context

__all__ = ["add_node_commands", "add_debug_commands", "BACKFILL"]

#: ``headscale.v1.BackfillNodeIPsResponse``.
BACKFILL = (("changes", "strings"),)

BACKFILL_PROMPT = "Are you sure that you want to assign/remove IPs to/from nodes?"


def cmd_nodes_backfillips(ctx: Context) -> None:
    """Confirm, then backfill; a refusal changes nothing and exits 0, as Headscale does."""
    if not ctx.confirm(BACKFILL_PROMPT):
        ctx.out.stderr.write("Aborted: no node addresses changed\n")
        return
    changes = ctx.client.backfill_ips()
    result = {"changes": changes}
    human = "\n".join(["Node IPs backfilled successfully", *changes])
    ctx.out.result(to_go_json(BACKFILL, result), to_go_yaml(BACKFILL, result), human)


def cmd_debug_create_node(ctx: Context) -> None:
    """Open a pending registration for a made-up node; print the node-to-be."""
    a = ctx.args
    node = ctx.client.debug_create_node(a.name, a.user, a.key, split_list(a.route))
    ctx.out.result(to_go_json(NODE, node), to_go_yaml(NODE, node), "Node created")


Command = Callable[..., Any]


def add_node_commands(nodes: Any, cmd: Command) -> None:
    """Add ``backfillips`` to the ``nodes`` group (``cmd`` is ``build_parser``'s command maker)."""
    cmd(nodes, "backfillips", cmd_nodes_backfillips,
        "give nodes addresses of the configured prefixes they lack (and drop unconfigured families)")


def add_debug_commands(debug: Any, cmd: Command) -> None:
    """Add ``create-node`` to the ``debug`` group."""
    p = cmd(debug, "create-node", cmd_debug_create_node,
            "create a pending node that 'auth register --auth-id KEY' then registers")
    p.add_argument("--name", required=True, help="the node's host name")
    p.add_argument("-u", "--user", required=True, help="user name or id (must exist)")
    p.add_argument("-k", "--key", required=True,
                   help="the auth id to register it under (24 letters and digits, or hskey-authreq-...)")
    p.add_argument("-r", "--route", action="append",
                   help="routes the node announces, comma-separated; repeatable")
