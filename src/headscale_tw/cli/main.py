# -*- test-case-name: tests.cli.test_main,tests.nodesapi.test_cli -*-
"""
``headscale``: the command-line tool, with Headscale's command tree.

::

    headscale [-c CONFIG] [-o json|json-line|yaml] [--force] COMMAND ...
      serve                         run the server in the foreground
      users create NAME | list | rename | destroy
      preauthkeys create | list | expire | delete
      apikeys create | list | expire | delete
      nodes list | list-routes | expire | rename | delete | tag | approve-routes | move | register | backfillips
      debug create-node --name NAME --user USER --key AUTH_ID [--route PREFIX]
      auth register --auth-id ID --user NAME | approve --auth-id ID | reject --auth-id ID
      policy get | set -f FILE | check -f FILE
      audit list [--since] [--until] [--actor] [--action] [--target] [--limit]
      health | version | configtest | generate private-key
      completion bash|zsh|fish | help [COMMAND...]

Commands that manage the server talk to ``/api/v1`` over the server's unix
socket (``unix_socket`` in the config; trusted locally), or, when
``HEADSCALE_CLI_ADDRESS`` is set, over HTTPS with ``HEADSCALE_CLI_API_KEY``.
Failures print one line (``Error: user "bob" not found``) and exit 1.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, TextIO

from headscale_tw import __version__
from headscale_tw.cli import completion, nodes_extra
from headscale_tw.cli._audit import add_audit_commands
from headscale_tw.cli._client import ApiClient, CLIError, Transport, transport_from_config
from headscale_tw.cli._flags import split_list as _split_list
from headscale_tw.cli._messages import (
    APIKEY,
    HEALTH,
    NODE,
    PREAUTHKEY,
    USER,
    to_go_json,
    to_go_yaml,
)
from headscale_tw.cli._output import FORMATS, Output, render_table, table_time
from headscale_tw.cli._proctitle import presented_as_headscale_serve
from headscale_tw.config._durations import DurationError, parse_duration
from headscale_tw.timestamps import format_timestamp, parse_timestamp
from headscale_tw.version import version_info

__all__ = ["main", "build_parser", "Context"]

DEFAULT_PREAUTHKEY_EXPIRY = "1h"
DEFAULT_APIKEY_EXPIRY = "90d"


class _Parser(argparse.ArgumentParser):
    """Usage errors raise instead of exiting, so ``main`` reports them in one line."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


class Context:
    """What a command needs: parsed args, output, a lazily built API client, I/O seams."""

    def __init__(self, args: argparse.Namespace, out: Output, environ: Mapping[str, str],
                 stdin: TextIO, transport: Transport | None, now: Callable[[], datetime],
                 reactor: Any = None):
        self.args = args
        self.out = out
        self.environ = environ
        self.stdin = stdin
        self._transport = transport
        self.now = now
        self.reactor = reactor
        self._client: ApiClient | None = None

    def load_config(self) -> Any:
        """Load the config (``-c``, ``HEADSCALE_CONFIG``, search path, ``HEADSCALE_*``)."""
        from headscale_tw.config.loader import ConfigError, load_config

        try:
            return load_config(self.args.config, self.environ)
        except ConfigError as e:
            raise CLIError("configuration error: " + "; ".join(e.problems)) from None

    @property
    def client(self) -> ApiClient:
        """The API client (built on first use)."""
        if self._client is None:
            transport = self._transport or transport_from_config(self.load_config())
            self._client = ApiClient(transport)
        return self._client

    def confirm(self, prompt: str) -> bool:
        """``--force`` or a "y" answer on stdin."""
        if self.args.force:
            return True
        self.out.stderr.write(f"{prompt} [y/N] ")
        self.out.stderr.flush()
        answer = self.stdin.readline().strip().lower()
        return answer in ("y", "yes")

    def expiration(self, text: str) -> str | None:
        """``--expiration 1h`` → an RFC 3339 time that far from now (``0`` = never)."""
        try:
            seconds = parse_duration(text)
        except DurationError as e:
            raise CLIError(f"--expiration: {e}") from None
        if seconds < 0:
            raise CLIError(f"--expiration: {text!r} is negative")
        if seconds == 0:
            return None
        return format_timestamp(self.now() + timedelta(seconds=seconds))


# ---------------------------------------------------------------- users


def _user_rows(users: list[dict]) -> str:
    rows = [[u.get("id", ""), u.get("displayName", ""), u.get("name", ""), u.get("email", ""),
             table_time(u.get("createdAt"), "")] for u in users]
    return render_table(["ID", "Name", "Username", "Email", "Created"], rows)


def _print_list(ctx: Context, message: tuple, items: list[dict], table: Callable[[], str]) -> None:
    # Headscale prints a Go nil slice, i.e. null, when the list is empty.
    json_items = [to_go_json(message, i) for i in items] or None
    yaml_items = [to_go_yaml(message, i) for i in items] or None
    ctx.out.result(json_items, yaml_items, "" if ctx.out.machine else table())


def _user_arg(ctx: Context) -> dict:
    a = ctx.args
    ident = a.identifier if a.identifier is not None else (a.name or a.user_name)
    if ident is None or ident == "":
        raise CLIError("--name or --identifier flag is required")
    return ctx.client.find_user(ident)


def cmd_users_create(ctx: Context) -> None:
    a = ctx.args
    user = ctx.client.create_user(a.user_name, a.display_name or "", a.email or "", a.picture_url or "")
    ctx.out.result(to_go_json(USER, user), to_go_yaml(USER, user), "User created")


def cmd_users_list(ctx: Context) -> None:
    a = ctx.args
    if a.identifier is not None:
        users = ctx.client.list_users(id=a.identifier)
    elif a.name:
        users = ctx.client.list_users(name=a.name)
    elif a.email:
        users = ctx.client.list_users(email=a.email)
    else:
        users = ctx.client.list_users()
    _print_list(ctx, USER, users, lambda: _user_rows(users))


def cmd_users_rename(ctx: Context) -> None:
    user = _user_arg(ctx)
    renamed = ctx.client.rename_user(user["id"], ctx.args.new_name)
    ctx.out.result(to_go_json(USER, renamed), to_go_yaml(USER, renamed), "User renamed")


def cmd_users_destroy(ctx: Context) -> None:
    user = _user_arg(ctx)
    prompt = f'Do you want to remove the user "{user.get("name")}" ({user.get("id")}) and any associated preauthkeys?'
    if not ctx.confirm(prompt):
        ctx.out.result({"Result": "User not destroyed"}, {"Result": "User not destroyed"}, "User not destroyed")
        return
    ctx.client.delete_user(user["id"])
    ctx.out.result({}, {}, "User destroyed")


# ---------------------------------------------------------------- pre-auth keys


def _split_tags(values: Sequence[str] | None) -> list[str]:
    tags: list[str] = []
    for value in values or ():
        tags.extend(t.strip() for t in value.split(",") if t.strip())
    return tags


def cmd_preauthkeys_create(ctx: Context) -> None:
    a = ctx.args
    user_id = None
    if a.user:
        user_id = ctx.client.find_user(a.user)["id"]
    tags = _split_tags(a.tags)
    if user_id is None and not tags:
        raise CLIError("--user or --tags is required (a pre-auth key belongs to a user or carries tags)")
    key = ctx.client.create_preauthkey(user_id, a.reusable, a.ephemeral, ctx.expiration(a.expiration), tags)
    ctx.out.result(to_go_json(PREAUTHKEY, key), to_go_yaml(PREAUTHKEY, key), key.get("key", ""))


def cmd_preauthkeys_list(ctx: Context) -> None:
    keys = ctx.client.list_preauthkeys()
    if ctx.args.user:
        user = ctx.client.find_user(ctx.args.user)
        keys = [k for k in keys if (k.get("user") or {}).get("id") == user["id"]]

    def table() -> str:
        rows = []
        for k in keys:
            tags = k.get("aclTags") or []
            owner = "\n".join(tags) if tags else ((k.get("user") or {}).get("name") or "-")
            rows.append([k.get("id", ""), k.get("key", ""), str(bool(k.get("reusable"))).lower(),
                         str(bool(k.get("ephemeral"))).lower(), str(bool(k.get("used"))).lower(),
                         table_time(k.get("expiration")), table_time(k.get("createdAt"), ""), owner])
        return render_table(["ID", "Key/Prefix", "Reusable", "Ephemeral", "Used", "Expiration", "Created", "Owner"], rows)

    _print_list(ctx, PREAUTHKEY, keys, table)


def _key_id(ctx: Context) -> int:
    key_id = ctx.args.id if ctx.args.id is not None else ctx.args.key_id
    if not key_id:
        raise CLIError("missing --id parameter")
    return key_id


def cmd_preauthkeys_expire(ctx: Context) -> None:
    ctx.client.expire_preauthkey(_key_id(ctx))
    ctx.out.result({}, {}, "Key expired")


def cmd_preauthkeys_delete(ctx: Context) -> None:
    ctx.client.delete_preauthkey(_key_id(ctx))
    ctx.out.result({}, {}, "Key deleted")


# ---------------------------------------------------------------- API keys


def _apikey_ident(ctx: Context) -> tuple[int | None, str | None]:
    a = ctx.args
    if not a.id and not a.prefix:
        raise CLIError("either --id or --prefix must be provided")
    if a.id and a.prefix:
        raise CLIError("only one of --id or --prefix can be provided")
    return a.id, a.prefix


def cmd_apikeys_create(ctx: Context) -> None:
    key = ctx.client.create_apikey(ctx.expiration(ctx.args.expiration))
    ctx.out.result(key, key, key)


def cmd_apikeys_list(ctx: Context) -> None:
    keys = ctx.client.list_apikeys()

    def table() -> str:
        rows = [[k.get("id", ""), k.get("prefix", ""), table_time(k.get("expiration")),
                 table_time(k.get("createdAt"), "")] for k in keys]
        return render_table(["ID", "Prefix", "Expiration", "Created"], rows)

    _print_list(ctx, APIKEY, keys, table)


def cmd_apikeys_expire(ctx: Context) -> None:
    key_id, prefix = _apikey_ident(ctx)
    ctx.client.expire_apikey(key_id, prefix)
    ctx.out.result({}, {}, "Key expired")


def cmd_apikeys_delete(ctx: Context) -> None:
    key_id, prefix = _apikey_ident(ctx)
    ctx.client.delete_apikey(key_id, prefix)
    ctx.out.result({}, {}, "Key deleted")


# ---------------------------------------------------------------- nodes


def _short_key(text: str, prefix: str) -> str:
    """Tailscale's ``ShortString``: the first five base64 digits of the key, in brackets."""
    raw = b"\0" * 32
    if isinstance(text, str) and text.startswith(prefix + ":"):
        try:
            raw = bytes.fromhex(text[len(prefix) + 1:])
        except ValueError:
            pass
    return "[" + base64.b64encode(raw).decode("ascii")[:5] + "]"


def _node_rows(ctx: Context, nodes: list[dict]) -> str:
    now = ctx.now()
    rows = []
    for n in nodes:
        expiry = n.get("expiry")
        expired = bool(expiry and parse_timestamp(expiry)[0] < now)
        rows.append([
            n.get("id", ""), n.get("name", ""), n.get("givenName", ""),
            _short_key(n.get("machineKey", ""), "mkey"), _short_key(n.get("nodeKey", ""), "nodekey"),
            (n.get("user") or {}).get("name", ""),
            "\n".join(n.get("tags") or []),
            "\n".join(n.get("ipAddresses") or []),
            str(bool((n.get("preAuthKey") or {}).get("ephemeral"))).lower(),
            table_time(n.get("lastSeen"), ""),
            table_time(expiry, "N/A"),
            "online" if n.get("online") else "offline",
            "yes" if expired else "no",
        ])
    return render_table(["ID", "Hostname", "Name", "MachineKey", "NodeKey", "User", "Tags", "IP addresses",
                         "Ephemeral", "Last seen", "Expiration", "Connected", "Expired"], rows)


def _print_node(ctx: Context, node: dict, human: str) -> None:
    ctx.out.result(to_go_json(NODE, node), to_go_yaml(NODE, node), human)


def cmd_nodes_list(ctx: Context) -> None:
    nodes = ctx.client.list_nodes(ctx.args.user)
    _print_list(ctx, NODE, nodes, lambda: _node_rows(ctx, nodes))


def cmd_nodes_list_routes(ctx: Context) -> None:
    if ctx.args.identifier:
        nodes = [ctx.client.get_node(ctx.args.identifier)]
    else:
        nodes = ctx.client.list_nodes()
    nodes = [n for n in nodes if n.get("subnetRoutes") or n.get("approvedRoutes") or n.get("availableRoutes")]

    def table() -> str:
        rows = [[n.get("id", ""), n.get("givenName", ""), "\n".join(n.get("approvedRoutes") or []),
                 "\n".join(n.get("availableRoutes") or []), "\n".join(n.get("subnetRoutes") or [])] for n in nodes]
        return render_table(["ID", "Hostname", "Approved", "Available", "Serving (Primary)"], rows)

    _print_list(ctx, NODE, nodes, table)


def cmd_nodes_expire(ctx: Context) -> None:
    a = ctx.args
    if a.disable:
        if a.expiry:
            raise CLIError("--disable and --expiry cannot be used together")
        _print_node(ctx, ctx.client.expire_node(a.identifier, disable=True), "Node expiry disabled")
        return
    expiry = None
    if a.expiry:
        try:
            when, _ = parse_timestamp(a.expiry)
        except ValueError as e:
            raise CLIError(f"parsing expiry time: {e}") from None
        expiry = format_timestamp(when)
    node = ctx.client.expire_node(a.identifier, expiry)
    future = expiry is not None and parse_timestamp(expiry)[0] > ctx.now()
    _print_node(ctx, node, "Node expiration updated" if future else "Node expired")


def cmd_nodes_rename(ctx: Context) -> None:
    _print_node(ctx, ctx.client.rename_node(ctx.args.identifier, ctx.args.new_name), "Node renamed")


def cmd_nodes_delete(ctx: Context) -> None:
    node = ctx.client.get_node(ctx.args.identifier)
    if not ctx.confirm(f"Do you want to remove the node {node.get('name', '')}?"):
        ctx.out.result({"Result": "Node not deleted"}, {"Result": "Node not deleted"}, "Node not deleted")
        return
    ctx.client.delete_node(ctx.args.identifier)
    ctx.out.result({"Result": "Node deleted"}, {"Result": "Node deleted"}, "Node deleted")


def cmd_nodes_tag(ctx: Context) -> None:
    _print_node(ctx, ctx.client.set_tags(ctx.args.identifier, _split_list(ctx.args.tags)), "Node updated")


def cmd_nodes_approve_routes(ctx: Context) -> None:
    routes = _split_list(ctx.args.routes)
    _print_node(ctx, ctx.client.approve_routes(ctx.args.identifier, routes), "Node updated")


def cmd_nodes_move(ctx: Context) -> None:
    node = ctx.client.move_node(ctx.args.identifier, ctx.args.user)
    _print_node(ctx, node, "Node moved to another user")


def cmd_nodes_register(ctx: Context) -> None:
    if not ctx.out.machine:
        ctx.out.stderr.write('Command "register" is deprecated, use '
                             "'headscale auth register --auth-id <id> --user <user>' instead\n")
    node = ctx.client.register_node(ctx.args.user, ctx.args.key)
    _print_node(ctx, node, f"Node {node.get('givenName', '')} registered")


def cmd_auth_register(ctx: Context) -> None:
    node = ctx.client.auth_register(ctx.args.user, ctx.args.auth_id)
    _print_node(ctx, node, f"Node {node.get('givenName', '')} registered")


def cmd_auth_approve(ctx: Context) -> None:
    response = ctx.client.auth_approve(ctx.args.auth_id)
    ctx.out.result(response, response, "Auth request approved")


def cmd_auth_reject(ctx: Context) -> None:
    response = ctx.client.auth_reject(ctx.args.auth_id)
    ctx.out.result(response, response, "Auth request rejected")


# ---------------------------------------------------------------- policy


def _read_policy_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise CLIError(f"reading policy file {path}: {reason}") from None


def cmd_policy_get(ctx: Context) -> None:
    # As Headscale: the policy is printed as is (HuJSON), whatever -o says.
    ctx.out.stdout.write(ctx.client.get_policy().get("policy", "") + "\n")


def cmd_policy_set(ctx: Context) -> None:
    ctx.client.set_policy(_read_policy_file(ctx.args.file))
    ctx.out.stdout.write("Policy updated.\n")


def cmd_policy_check(ctx: Context) -> None:
    ctx.client.check_policy(_read_policy_file(ctx.args.file))
    ctx.out.stdout.write("Policy is valid\n")


# ---------------------------------------------------------------- local commands


def cmd_health(ctx: Context) -> None:
    result = ctx.client.health()
    ctx.out.result(to_go_json(HEALTH, result), to_go_yaml(HEALTH, result),
                   "healthy" if result.get("databaseConnectivity") else "unhealthy")
    if not result.get("databaseConnectivity"):
        raise _Exit(1)


def cmd_version(ctx: Context) -> None:
    """Headscale's version document (the release whose API we match), plus our own package version.

    ``-o json`` gives what ``GET /version`` serves, so scripts written for
    Headscale read a Headscale-style ``version``; ``headscale_tw`` names ours.
    """
    info = {**version_info(), "headscale_tw": __version__}
    human = (f"headscale-tw {__version__}, Headscale API {info['version']}\n"
             f"built with: Python {platform.python_version()} {sys.platform}/{platform.machine()}")
    ctx.out.result(info, info, human)


def cmd_configtest(ctx: Context) -> None:
    """Run the checks start-up runs, changing nothing (see ``cli/_server.py``)."""
    from headscale_tw.cli._server import configtest

    configtest(ctx)


def cmd_generate_private_key(ctx: Context) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = X25519PrivateKey.generate().private_bytes_raw()
    text = "privkey:" + raw.hex()
    ctx.out.result({"private_key": text}, {"private_key": text}, text)


def cmd_serve(ctx: Context) -> None:
    """Run the server in the foreground, as ``twistd -n headscale`` does; exit 1 if it could not start."""
    from headscale_tw.cli._server import serve

    status = serve(ctx)
    if status:
        raise _Exit(status)


class _Exit(Exception):
    """Leave with a status code after printing the result."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------- parser


def _common() -> _Parser:
    # Global flags work before or after the command, as with cobra's persistent flags;
    # SUPPRESS keeps a subcommand from resetting a value given earlier.
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help="config file (default: HEADSCALE_CONFIG, ./config.yaml, ~/.headscale/, /etc/headscale/)")
    common.add_argument("-o", "--output", default=argparse.SUPPRESS, choices=[f for f in FORMATS if f],
                        help="output format: json, json-line or yaml (default: human-readable)")
    common.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                        help="do not prompt for confirmation")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = _common()
    root = _Parser(prog="headscale", parents=[common],
                   description="headscale-tw: a self-hosted Tailscale control server (Headscale-compatible CLI)")
    # No set_defaults for the global flags: their actions are shared with every
    # subparser (parents=), and set_defaults would replace SUPPRESS everywhere.
    root.set_defaults(func=None)
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def cmd(parent: Any, name: str, func: Callable[[Context], None], help: str,
            aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, aliases=list(aliases), parents=[common], description=help)
        p.set_defaults(func=func)
        return p

    def group(name: str, help: str, aliases: Sequence[str]) -> Any:
        p = sub.add_parser(name, help=help, aliases=list(aliases), parents=[common], description=help)
        p.set_defaults(func=None, group=p)
        return p.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)

    cmd(sub, "serve", presented_as_headscale_serve(cmd_serve), "run the server in the foreground")
    cmd(sub, "version", cmd_version, "print the version")
    cmd(sub, "health", cmd_health, "check the server's health (exit 1 when unhealthy)")
    cmd(sub, "configtest", cmd_configtest, "check the configuration as start-up does (policy, TLS, keys, database, listeners)")
    gen = group("generate", "generate keys", ["gen"])
    cmd(gen, "private-key", cmd_generate_private_key, "print a new Curve25519 private key (privkey:<hex>)")

    users = group("users", "manage users", ["user"])
    p = cmd(users, "create", cmd_users_create, "create a user", ["c", "new"])
    p.add_argument("user_name", metavar="NAME")
    p.add_argument("-d", "--display-name")
    p.add_argument("-e", "--email")
    p.add_argument("-p", "--picture-url")
    p = cmd(users, "list", cmd_users_list, "list users", ["ls", "show"])
    p.add_argument("-i", "--identifier", type=int)
    p.add_argument("-n", "--name")
    p.add_argument("-e", "--email")
    for name, func, help, aliases in (("rename", cmd_users_rename, "rename a user", ["mv"]),
                                      ("destroy", cmd_users_destroy, "delete a user", ["delete"])):
        p = cmd(users, name, func, help, aliases)
        p.add_argument("user_name", metavar="NAME", nargs="?", help="user name or id (or use -n / -i)")
        p.add_argument("-i", "--identifier", type=int)
        p.add_argument("-n", "--name")
        if name == "rename":
            p.add_argument("-r", "--new-name", required=True)

    keys = group("preauthkeys", "manage pre-auth keys", ["preauthkey", "authkey", "pre"])
    p = cmd(keys, "create", cmd_preauthkeys_create, "create a pre-auth key", ["c", "new"])
    p.add_argument("-u", "--user", help="user name or id")
    p.add_argument("--reusable", action="store_true")
    p.add_argument("--ephemeral", action="store_true")
    p.add_argument("-e", "--expiration", default=DEFAULT_PREAUTHKEY_EXPIRY,
                   help="lifetime such as 30m, 24h, 90d; 0 = never (default 1h)")
    p.add_argument("--tags", action="append", help="tags for the nodes, comma-separated (tag:a,tag:b)")
    p = cmd(keys, "list", cmd_preauthkeys_list, "list pre-auth keys", ["ls", "show"])
    p.add_argument("-u", "--user", help="only this user's keys (name or id)")
    for name, func, help, aliases in (("expire", cmd_preauthkeys_expire, "expire a pre-auth key", ["revoke", "exp", "e"]),
                                      ("delete", cmd_preauthkeys_delete, "delete a pre-auth key", ["del", "rm", "d"])):
        p = cmd(keys, name, func, help, aliases)
        p.add_argument("key_id", metavar="ID", nargs="?", type=int)
        p.add_argument("-i", "--id", type=int)

    api = group("apikeys", "manage API keys", ["apikey", "api"])
    p = cmd(api, "create", cmd_apikeys_create, "create an API key (shown only once)", ["c", "new"])
    p.add_argument("-e", "--expiration", default=DEFAULT_APIKEY_EXPIRY,
                   help="lifetime such as 30m, 24h, 90d; 0 = never (default 90d)")
    cmd(api, "list", cmd_apikeys_list, "list API keys", ["ls", "show"])
    for name, func, help, aliases in (("expire", cmd_apikeys_expire, "expire an API key", ["revoke", "exp", "e"]),
                                      ("delete", cmd_apikeys_delete, "delete an API key", ["remove", "del"])):
        p = cmd(api, name, func, help, aliases)
        p.add_argument("-i", "--id", type=int)
        p.add_argument("-p", "--prefix")

    nodes = group("nodes", "manage nodes", ["node"])
    p = cmd(nodes, "list", cmd_nodes_list, "list nodes", ["ls", "show"])
    p.add_argument("-u", "--user", help="only this user's nodes (user name)")
    p = cmd(nodes, "list-routes", cmd_nodes_list_routes, "list the routes nodes announce, have approved and serve",
            ["lsr", "routes"])
    p.add_argument("-i", "--identifier", type=int, help="only this node")

    def node_cmd(name: str, func: Callable[[Context], None], help: str,
                 aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = cmd(nodes, name, func, help, aliases)
        p.add_argument("-i", "--identifier", type=int, required=True, help="node id")
        return p

    p = node_cmd("expire", cmd_nodes_expire, "expire (log out) a node, or change or disable its key expiry",
                 ["logout", "exp", "e"])
    p.add_argument("-e", "--expiry", help="RFC 3339 time such as 2030-01-02T03:04:05Z (default: now)")
    p.add_argument("-d", "--disable", action="store_true", help="the node never expires")
    p = node_cmd("rename", cmd_nodes_rename, "set a node's MagicDNS name")
    p.add_argument("new_name", metavar="NEW_NAME")
    node_cmd("delete", cmd_nodes_delete, "delete a node", ["del"])
    p = node_cmd("tag", cmd_nodes_tag, "set a node's tags (replacing them)", ["tags", "t"])
    p.add_argument("-t", "--tags", action="append", help="tags, comma-separated (tag:a,tag:b); repeatable")
    p = node_cmd("approve-routes", cmd_nodes_approve_routes, "set a node's approved routes (replacing them)")
    p.add_argument("-r", "--routes", action="append",
                   help='routes, comma-separated (10.0.0.0/8,0.0.0.0/0); "" removes every approval')
    p = node_cmd("move", cmd_nodes_move, "give a node to another user", ["mv"])
    p.add_argument("-u", "--user", required=True, help="user name or id")
    nodes_extra.add_node_commands(nodes, cmd)
    p = cmd(nodes, "register", cmd_nodes_register,
            "register a pending node (deprecated: use auth register --auth-id ID --user NAME)")
    p.add_argument("-u", "--user", required=True, help="user name")
    p.add_argument("-k", "--key", required=True, help="the auth id from the node's login URL")

    auth = group("auth", "manage node authentication and approval", [])
    p = cmd(auth, "register", cmd_auth_register, "register a node waiting at its login URL to a user")
    p.add_argument("--auth-id", required=True, help="the id at the end of the node's login URL")
    p.add_argument("-u", "--user", required=True, help="user name")
    p = cmd(auth, "approve", cmd_auth_approve, "approve a pending authentication request (SSH check)")
    p.add_argument("--auth-id", required=True, help="the id of the pending request")
    p = cmd(auth, "reject", cmd_auth_reject, "reject a pending authentication request")
    p.add_argument("--auth-id", required=True, help="the id of the pending request")

    nodes_extra.add_debug_commands(group("debug", "debug and testing commands", []), cmd)

    policy = group("policy", "manage the ACL policy", [])
    cmd(policy, "get", cmd_policy_get, "print the policy in force", ["show", "view", "fetch"])
    p = cmd(policy, "set", cmd_policy_set, "replace the policy (policy.mode: database)", ["put", "update"])
    p.add_argument("-f", "--file", required=True, help="policy file (HuJSON)")
    p = cmd(policy, "check", cmd_policy_check, "check a policy file against the server's users and nodes")
    p.add_argument("-f", "--file", required=True, help="policy file (HuJSON)")
    completion.add_commands(sub, cmd, root)
    add_audit_commands(group, cmd)
    return root


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
         transport: Transport | None = None, now: Callable[[], datetime] | None = None,
         reactor: Any = None) -> int:
    """Run the CLI; return the exit status. Every I/O seam can be replaced by tests."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    stdin = sys.stdin if stdin is None else stdin
    now = now or (lambda: datetime.now(timezone.utc))
    fmt = _sniff_output(argv)
    out = Output(fmt, stdout, stderr)
    parser = build_parser()
    try:
        if not argv or argv in (["-h"], ["--help"]):
            stdout.write(parser.format_help())
            return 0 if argv else 2
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help inside a subcommand
            return int(e.code or 0)
        for name, default in (("config", None), ("output", ""), ("force", False)):
            if not hasattr(args, name):
                setattr(args, name, default)
        out = Output(args.output or "", stdout, stderr)
        if args.func is None:
            target = getattr(args, "group", parser)
            stdout.write(target.format_help())
            return 2
        args.func(Context(args, out, environ, stdin, transport, now, reactor))
        return 0
    except _Exit as e:
        return e.code
    except CLIError as e:
        out.error(str(e))
        return 1
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130


def _sniff_output(argv: Sequence[str]) -> str:
    """The -o value before parsing, so that usage errors already use the right format."""
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-o", "--output") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--output="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-o") and len(arg) > 2:
            value = arg[2:]
        if value in FORMATS:
            return value
    return ""


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
