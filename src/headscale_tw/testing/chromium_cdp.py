# -*- test-case-name: tests.realclient.test_chromium_pages -*-
"""
A person at a real browser: drives a running headless Chromium through a whole sign-in.

Run inside the test's private namespace, next to a Chromium started with
``--remote-debugging-port`` (a :class:`~headscale_tw.testing.realclient.component.Component`)::

    python -m headscale_tw.testing.chromium_cdp --port PORT --login alice \\
        --until "Machine registered" --screenshot out.png URL

It speaks the DevTools protocol over the WebSocket that Chromium offers (a
small client on the standard library: RFC 6455 handshake, masked client
frames, no extensions), opens ``URL``, and on every page that has a form types
the account into the ``login`` field (and a password into ``password``) and
clicks the form's submit button, as a person would, until a page's text
contains ``--until`` or a page without a form is reached. It then takes a
screenshot and prints ``{"url", "text", "visited", "screenshot"}`` as JSON
(``{"error": ...}`` on failure). Every wait has a deadline; the number of
forms submitted is bounded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from headscale_tw.hostport import parse_hostport

__all__ = ["DevTools", "drive", "main"]

_MAX_MESSAGE = 32 * 1024 * 1024

_PAGE_STATE = """(() => JSON.stringify({
  url: location.href, ready: document.readyState, submitted: window.__hstwSubmitted === true,
  forms: document.forms.length, text: document.body ? document.body.innerText : ""}))()"""

_SUBMIT = """((login, password) => {
  const form = document.forms[0];
  for (const field of form.elements) {
    if (field.name === "login") field.value = login;
    if (field.name === "password") field.value = password;
  }
  window.__hstwSubmitted = true;
  const button = form.querySelector("button[type=submit], input[type=submit], button:not([type])");
  if (button) { button.click(); } else { form.submit(); }
  return true;
})"""


class DevToolsError(Exception):
    """The browser did not do what was asked; the message says what."""


class DevTools:
    """One DevTools WebSocket connection to a page target."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        rest = ws_url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = parse_hostport(hostport)
        self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n").encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            data = self._sock.recv(4096)
            if not data:
                raise DevToolsError("the browser closed the WebSocket during the handshake")
            head += data
            if len(head) > 65536:
                raise DevToolsError("the WebSocket handshake answer is too long")
        status_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line:
            raise DevToolsError(f"the WebSocket handshake was refused: {status_line!r}")
        self._buffer = head.split(b"\r\n\r\n", 1)[1]
        self._next_id = 0

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            data = self._sock.recv(65536)
            if not data:
                raise DevToolsError("the browser closed the WebSocket")
            self._buffer += data
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _message(self) -> bytes:
        parts: list[bytes] = []
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            if length > _MAX_MESSAGE:
                raise DevToolsError(f"a DevTools message of {length} bytes is too large")
            payload = self._read(length)
            if opcode == 8:
                raise DevToolsError("the browser closed the WebSocket")
            if opcode == 9:
                self._send_frame(10, payload)
                continue
            if opcode in (0, 1, 2):
                parts.append(payload)
                if first & 0x80:
                    return b"".join(parts)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its ``result`` (events in between are ignored)."""
        self._next_id += 1
        wanted = self._next_id
        self._send_frame(1, json.dumps({"id": wanted, "method": method, "params": params}).encode("utf-8"))
        while True:
            message = json.loads(self._message())
            if message.get("id") == wanted:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")


def _page_target(port: int, timeout: float) -> str:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
        targets = json.load(response)
    for target in targets:
        if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
            return str(target["webSocketDebuggerUrl"])
    raise DevToolsError(f"no page target among {[t.get('type') for t in targets]}")


def drive(port: int, url: str, login: str, until: str, screenshot: str, password: str = "not-checked",
          max_forms: int = 10, timeout: float = 60.0) -> dict[str, Any]:
    """Open ``url`` and submit forms as ``login`` until the text ``until`` shows; the outcome."""
    deadline = time.monotonic() + timeout
    tools = DevTools(_page_target(port, timeout), timeout)
    visited: list[str] = []
    try:
        tools.call("Page.navigate", url=url)
        submitted = 0
        while True:
            # Wait (bounded) for a loaded page that is not the one whose form was just submitted.
            while True:
                if time.monotonic() > deadline:
                    raise DevToolsError(f"no new page within {timeout:g} s; visited {visited}")
                try:
                    state = json.loads(tools.evaluate(_PAGE_STATE))
                except DevToolsError:
                    state = None  # the page is being replaced; ask again
                if (state is not None and state["ready"] == "complete" and not state["submitted"]
                        and state["url"] != "about:blank"):
                    break
                time.sleep(0.1)  # a poll interval under the deadline above, not a synchronisation
            visited.append(state["url"])
            if until in state["text"] or not state["forms"]:
                break
            if submitted >= max_forms:
                raise DevToolsError(f"still finding forms after {max_forms} submissions: {visited}")
            tools.evaluate(f"{_SUBMIT}({json.dumps(login)}, {json.dumps(password)})")
            submitted += 1
        shot = tools.call("Page.captureScreenshot", format="png")
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    finally:
        tools.close()
    return {"url": state["url"], "text": state["text"], "visited": visited, "screenshot": screenshot}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: JSON outcome on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("url")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--login", required=True)
    parser.add_argument("--until", required=True)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        result = drive(args.port, args.url, args.login, args.until, args.screenshot, timeout=args.timeout)
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
