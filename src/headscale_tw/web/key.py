# -*- test-case-name: tests.noise.test_key -*-
"""
``GET /key?v=<capver>``: the server's Noise public key, fetched before ``/ts2021``.

Answer for ``v >= 39`` (every client that speaks ts2021)::

    200  application/json
    {"legacyPublicKey":"mkey:000…000","publicKey":"mkey:<64 hex>"}

The legacy (pre-Noise NaCl) key is always zero: we have none. Headscale
answers older versions with an empty 200 (older Headscale releases sent the
bare legacy key); such a client could not log in either way, so we say why
with ``400``. A missing or non-numeric ``v`` is ``400`` as in Headscale.
"""

from __future__ import annotations

import json

from twisted.web import resource

from headscale_tw.keys import MachinePublic

__all__ = ["KeyResource", "NOISE_CAPABILITY_VERSION"]

#: First capability version that speaks ts2021 and expects JSON from /key.
NOISE_CAPABILITY_VERSION = 39


class KeyResource(resource.Resource):
    """The ``/key`` leaf for a server whose Noise public key is ``public_key``."""

    isLeaf = True

    def __init__(self, public_key: MachinePublic) -> None:
        super().__init__()
        self._body = json.dumps(
            {"legacyPublicKey": MachinePublic.zero().text, "publicKey": public_key.text},
            separators=(",", ":"),
        ).encode("ascii")

    def _error(self, request, text: str) -> bytes:
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return text.encode("utf-8") + b"\n"

    def render_GET(self, request):
        values = request.args.get(b"v")
        if not values or not values[0]:
            return self._error(request, "capability version must be set (?v=N)")
        try:
            version = int(values[0])
        except ValueError:
            return self._error(request, "invalid capability version")
        if version < NOISE_CAPABILITY_VERSION:
            return self._error(
                request,
                f"client capability version {version} predates the Noise protocol"
                f" (needs {NOISE_CAPABILITY_VERSION} or newer); please upgrade Tailscale",
            )
        request.setHeader(b"content-type", b"application/json")
        return self._body
