# -*- test-case-name: tests.cli,tests.nodesapi.test_cli -*-
"""
The CLI's side of ``/api/v1``: a blocking transport and typed calls.

The CLI is a short-lived process that makes one or two requests, so it uses
the standard library's ``http.client`` synchronously (over ``AF_UNIX`` for the
local socket, TCP/TLS for a remote server) instead of starting a reactor.
Anything with a ``request(method, path, query, body) -> (status, bytes)``
method can stand in for the transport: the tests pass one that calls the Klein
app in-process.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

__all__ = [
    "CLIError",
    "Transport",
    "UnixSocketTransport",
    "HTTPTransport",
    "ApiClient",
    "transport_from_config",
]


class CLIError(Exception):
    """A failure the CLI reports on one line (``Error: <message>``)."""


class Transport(Protocol):
    """Sends one request; returns the HTTP status and body."""

    def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                body: Any = None) -> tuple[int, bytes]:
        """Send ``body`` (JSON-encoded when not ``None``) and return ``(status, body)``."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` over a unix socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _send(conn: http.client.HTTPConnection, method: str, path: str,
          query: Mapping[str, str] | None, body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
    if query:
        path = f"{path}?{urlencode(query)}"
    data = None
    headers = dict(headers)
    headers["Accept"] = "application/json"
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class UnixSocketTransport:
    """Talks to the local server over its unix socket (trusted, no API key)."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout

    def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                body: Any = None) -> tuple[int, bytes]:
        """Send one request over the socket."""
        try:
            return _send(_UnixHTTPConnection(self.path, self.timeout), method, path, query, body, {})
        except FileNotFoundError:
            raise CLIError(f"cannot connect to the headscale socket {self.path}: it does not exist "
                           "(is the server running? set unix_socket in the config or HEADSCALE_CLI_ADDRESS)") from None
        except PermissionError:
            raise CLIError(f"cannot connect to the headscale socket {self.path}: permission denied "
                           "(run as a user in the socket's group)") from None
        except (OSError, http.client.HTTPException) as e:
            raise CLIError(f"cannot talk to the headscale socket {self.path}: {e}") from None


class HTTPTransport:
    """Talks to a remote server over HTTPS (or HTTP) with a bearer API key."""

    def __init__(self, address: str, api_key: str, insecure: bool = False, timeout: float = 5.0):
        if "://" not in address:
            address = "https://" + address
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CLIError(f"HEADSCALE_CLI_ADDRESS {address!r} is not host:port or an http(s) URL")
        self.url = parts
        self.host: str = parts.hostname
        self.api_key = api_key
        self.insecure = insecure
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self.host, self.url.port
        if self.url.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        context = ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context)

    def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                body: Any = None) -> tuple[int, bytes]:
        """Send one authenticated request."""
        prefix = self.url.path.rstrip("/")
        try:
            return _send(self._connection(), method, prefix + path, query, body,
                         {"Authorization": f"Bearer {self.api_key}"})
        except ssl.SSLError as e:
            raise CLIError(f"TLS error talking to {self.url.netloc}: {e.reason or e} "
                           "(HEADSCALE_CLI_INSECURE=1 skips certificate checks)") from None
        except (OSError, http.client.HTTPException) as e:
            raise CLIError(f"cannot connect to {self.url.netloc}: {e}") from None


def transport_from_config(config: Any) -> Transport:
    """The transport the config asks for: ``cli.address`` (remote) or ``unix_socket``."""
    cli = config.cli
    if cli.address:
        if not cli.api_key:
            raise CLIError("HEADSCALE_CLI_API_KEY environment variable needs to be set "
                           "when HEADSCALE_CLI_ADDRESS is used")
        return HTTPTransport(cli.address, cli.api_key, cli.insecure, cli.timeout or 5.0)
    return UnixSocketTransport(config.unix_socket, cli.timeout or 5.0)


class ApiClient:
    """Typed calls to ``/api/v1``; returns the decoded REST JSON, raises :class:`CLIError`."""

    def __init__(self, transport: Transport):
        self.transport = transport

    def call(self, method: str, path: str, query: Mapping[str, Any] | None = None, body: Any = None) -> dict:
        """One request; the decoded JSON object, or ``CLIError`` with the server's message."""
        if query:
            query = {k: str(v) for k, v in query.items() if v not in (None, "")}
        status, raw = self.transport.request(method, "/api/v1" + path, query or None, body)
        try:
            data = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, ValueError):
            data = None
        if status >= 400:
            if isinstance(data, dict) and data.get("message"):
                raise CLIError(str(data["message"]))
            text = raw.decode("utf-8", "replace").strip()[:200] if raw else ""
            raise CLIError(f"server answered HTTP {status}" + (f": {text}" if text else ""))
        if not isinstance(data, dict):
            raise CLIError(f"server answered HTTP {status} with a body that is not a JSON object")
        return data

    # users
    def list_users(self, id: int | None = None, name: str | None = None, email: str | None = None) -> list[dict]:
        """``GET /user`` with optional filters."""
        return self.call("GET", "/user", {"id": id, "name": name, "email": email}).get("users") or []

    def find_user(self, ident: str | int) -> dict:
        """A user by id (digits) or name; ``CLIError`` if there is not exactly one."""
        text = str(ident)
        if text.isdigit():
            users = self.list_users(id=int(text))
            if not users:
                raise CLIError(f"user with id {text} not found")
        else:
            users = self.list_users(name=text)
            if not users:
                raise CLIError(f"user {text!r} not found".replace("'", '"'))
        if len(users) != 1:
            raise CLIError("multiple users match query, specify an ID")
        return users[0]

    def create_user(self, name: str, display_name: str = "", email: str = "", picture_url: str = "") -> dict:
        """``POST /user``."""
        body = {"name": name, "displayName": display_name, "email": email, "pictureUrl": picture_url}
        return self.call("POST", "/user", body={k: v for k, v in body.items() if v})["user"]

    def rename_user(self, user_id: int | str, new_name: str) -> dict:
        """``POST /user/{id}/rename/{new}``."""
        from urllib.parse import quote

        return self.call("POST", f"/user/{user_id}/rename/{quote(new_name, safe='')}")["user"]

    def delete_user(self, user_id: int | str) -> dict:
        """``DELETE /user/{id}``."""
        return self.call("DELETE", f"/user/{user_id}")

    # pre-auth keys
    def create_preauthkey(self, user_id: int | str | None, reusable: bool, ephemeral: bool,
                          expiration: str | None, tags: list[str]) -> dict:
        """``POST /preauthkey``."""
        body: dict[str, Any] = {"reusable": reusable, "ephemeral": ephemeral, "aclTags": tags}
        if user_id:
            body["user"] = str(user_id)
        if expiration:
            body["expiration"] = expiration
        return self.call("POST", "/preauthkey", body=body)["preAuthKey"]

    def list_preauthkeys(self) -> list[dict]:
        """``GET /preauthkey``."""
        return self.call("GET", "/preauthkey").get("preAuthKeys") or []

    def expire_preauthkey(self, key_id: int) -> dict:
        """``POST /preauthkey/expire``."""
        return self.call("POST", "/preauthkey/expire", body={"id": str(key_id)})

    def delete_preauthkey(self, key_id: int) -> dict:
        """``DELETE /preauthkey?id=``."""
        return self.call("DELETE", "/preauthkey", {"id": key_id})

    # API keys
    def create_apikey(self, expiration: str | None) -> str:
        """``POST /apikey``; the new key's full text (shown once)."""
        return self.call("POST", "/apikey", body={"expiration": expiration} if expiration else {})["apiKey"]

    def list_apikeys(self) -> list[dict]:
        """``GET /apikey``."""
        return self.call("GET", "/apikey").get("apiKeys") or []

    def expire_apikey(self, key_id: int | None = None, prefix: str | None = None) -> dict:
        """``POST /apikey/expire`` by id or prefix."""
        body = {"id": str(key_id)} if key_id else {"prefix": prefix}
        return self.call("POST", "/apikey/expire", body=body)

    def delete_apikey(self, key_id: int | None = None, prefix: str | None = None) -> dict:
        """``DELETE /apikey/{prefix}`` (or ``DELETE /apikey?id=``)."""
        from urllib.parse import quote

        if key_id:
            return self.call("DELETE", "/apikey", {"id": key_id})
        return self.call("DELETE", f"/apikey/{quote(prefix or '', safe='')}")

    # nodes
    def list_nodes(self, user: str | None = None) -> list[dict]:
        """``GET /node`` (optionally one user's, by name)."""
        return self.call("GET", "/node", {"user": user}).get("nodes") or []

    def get_node(self, node_id: int) -> dict:
        """``GET /node/{id}``."""
        return self.call("GET", f"/node/{node_id}")["node"]

    def delete_node(self, node_id: int) -> dict:
        """``DELETE /node/{id}``."""
        return self.call("DELETE", f"/node/{node_id}")

    def expire_node(self, node_id: int, expiry: str | None = None, disable: bool = False) -> dict:
        """``POST /node/{id}/expire`` (now, at ``expiry``, or never with ``disable``)."""
        query = {"expiry": expiry, "disableExpiry": "true" if disable else None}
        return self.call("POST", f"/node/{node_id}/expire", query)["node"]

    def rename_node(self, node_id: int, new_name: str) -> dict:
        """``POST /node/{id}/rename/{new_name}``."""
        from urllib.parse import quote

        return self.call("POST", f"/node/{node_id}/rename/{quote(new_name, safe='')}")["node"]

    def set_tags(self, node_id: int, tags: list[str]) -> dict:
        """``POST /node/{id}/tags``."""
        return self.call("POST", f"/node/{node_id}/tags", body={"tags": tags})["node"]

    def approve_routes(self, node_id: int, routes: list[str]) -> dict:
        """``POST /node/{id}/approve_routes``."""
        return self.call("POST", f"/node/{node_id}/approve_routes", body={"routes": routes})["node"]

    def move_node(self, node_id: int, user: str) -> dict:
        """``POST /node/{id}/user`` (user name or id)."""
        return self.call("POST", f"/node/{node_id}/user", body={"user": user})["node"]

    def register_node(self, user: str, key: str) -> dict:
        """``POST /node/register?user=&key=`` (Headscale's deprecated form)."""
        return self.call("POST", "/node/register", {"user": user, "key": key})["node"]

    def backfill_ips(self) -> list[str]:
        """``POST /node/backfillips?confirmed=true``: what changed, one line each."""
        return self.call("POST", "/node/backfillips", {"confirmed": "true"}).get("changes") or []

    def debug_create_node(self, name: str, user: str, key: str, routes: list[str]) -> dict:
        """``POST /debug/node``: a pending registration for a made-up node."""
        body = {"name": name, "user": user, "key": key, "routes": routes}
        return self.call("POST", "/debug/node", body=body)["node"]

    def auth_register(self, user: str, auth_id: str) -> dict:
        """``POST /auth/register``."""
        return self.call("POST", "/auth/register", body={"user": user, "authId": auth_id})["node"]

    def auth_approve(self, auth_id: str) -> dict:
        """``POST /auth/approve`` (an SSH check request)."""
        return self.call("POST", "/auth/approve", body={"authId": auth_id})

    def auth_reject(self, auth_id: str) -> dict:
        """``POST /auth/reject``: refuse a pending auth request."""
        return self.call("POST", "/auth/reject", body={"authId": auth_id})

    # policy
    def get_policy(self) -> dict:
        """``GET /policy``: ``{"policy": text, "updatedAt": ...}``."""
        return self.call("GET", "/policy")

    def set_policy(self, text: str) -> dict:
        """``PUT /policy``."""
        return self.call("PUT", "/policy", body={"policy": text})

    def check_policy(self, text: str) -> dict:
        """``POST /policy/check``."""
        return self.call("POST", "/policy/check", body={"policy": text})

    def health(self) -> dict:
        """``GET /health``."""
        return self.call("GET", "/health")
