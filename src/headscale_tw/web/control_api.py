# -*- test-case-name: tests.control.test_control_api -*-
"""
The ts2021 inner API: ``twisted.web`` resources served over HTTP/2 inside the
Noise channel.

* ``POST /machine/register`` → :class:`RegisterResource` (JSON in, JSON out;
  a ``Followup`` request may be held until an admin completes the login).
* ``POST /machine/map`` → :class:`MapResource`: ``Stream`` requests answer
  200 and stay open (``NOT_DONE_YET``), writing LE32-framed messages (zstd
  when the request's ``Compress`` asked for it, else plain JSON) with
  ``request.write``; lite updates answer 200 with no body; the stream ends
  when ``request.notifyFinish()`` fires.
* ``POST /machine/set-dns`` → :class:`SetDNSResource`: publishes the node's own
  ``_acme-challenge`` TXT record and answers ``{}`` once it is served
  (403 when certificates are not offered or the name is not the node's own,
  409 while the node's previous update runs, 502 when the DNS provider fails);
* ``GET /machine/ssh/action/<src>/to/<dst>[?auth_id=&local_user=]`` →
  :class:`SSHActionResource`: the ``tailcfg.SSHAction`` of SSH check mode
  (:mod:`headscale_tw.control.ssh_check`), held while a check is pending; 400 for
  malformed ids, 404 for an unknown destination, 401 unless the Noise peer is the
  destination node;
  any other ``/machine/*`` → 404.

Every request body inside Noise is capped at
:data:`~headscale_tw.control.limits.NOISE_BODY_MAX_BYTES` by
:class:`BoundedRequest` (the Noise site's request factory): a larger body is
refused from its declared length or as soon as it grows past the cap, its
bytes are dropped instead of kept, and the answer is 413 naming the limit.

Every request is authenticated by the Noise peer's machine key, obtained
through :func:`peer_identity` (one replaceable function) and checked against
the body's ``NodeKey``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from headscale_tw._twisted_private import stream_connection
from headscale_tw.control import limits
from headscale_tw.control.dns_challenges import (
    CertificatesUnavailable,
    DNSChallenges,
    NotOwnName,
    PublishFailed,
    UpdateInProgress,
)
from headscale_tw.control.poll import Unauthorized, parse_map_request
from headscale_tw.control.registration import MachineKeyMismatch, Registrar
from headscale_tw.control.ssh_check import SSHChecks
from headscale_tw.errors import InvalidInput, NotFound
from headscale_tw.interfaces import INodeNotifier, IPollService
from headscale_tw.noise.protocol import stream_backlog
from headscale_tw.turns import TurnBudget
from headscale_tw.web.client_address import client_address

__all__ = ["peer_identity", "MachineResource", "RegisterResource", "MapResource", "SetDNSResource",
           "SSHActionResource", "MAX_BODY", "MAX_SET_DNS_BODY", "BoundedRequest"]

MAX_BODY = limits.NOISE_BODY_MAX_BYTES

#: A SetDNSRequest is a few hundred bytes; anything much larger is refused unread.
MAX_SET_DNS_BODY = 4096

_log = Logger()


def peer_identity(request) -> tuple[str, int] | None:
    """``(machine_key_text, capability_version)`` of the Noise peer carrying ``request``.

    Looks for ``noise_peer_identity`` on the objects between the request and
    the Noise wrapper: the HTTP/2 stream, its connection and the connection's
    transport (or the HTTP/1 channel and its transport). ``None`` when the
    request did not arrive over Noise.
    """
    channel = getattr(request, "channel", None)
    candidates = [request, channel, stream_connection(channel)]
    for obj in list(candidates):
        transport = getattr(obj, "transport", None)
        candidates.append(transport)
        candidates.append(getattr(transport, "transport", None))
    for obj in candidates:
        identity = getattr(obj, "noise_peer_identity", None)
        if identity is not None:
            return identity() if callable(identity) else identity
    return None


def _json_response(request, status: int, value: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _error(request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return message.encode("utf-8") + b"\n"


def _too_large_message(limit: int = MAX_BODY) -> str:
    return f"request body is larger than {limit} bytes, the limit for this request inside the Noise channel"


def _read_json(request, limit: int = MAX_BODY) -> object:
    """The decoded body; the request then keeps no copy (a held Followup lives up to a minute)."""
    raw = b""
    if request.content is not None:
        raw = request.content.read(limit + 1)
        request.content.close()
        request.content = io.BytesIO()
    if len(raw) > limit:
        raise InvalidInput(_too_large_message(limit))
    try:
        return json.loads(raw or b"null")
    except ValueError as e:
        raise InvalidInput(f"request body is not JSON: {e}") from None
    except RecursionError:
        raise InvalidInput("request body is not JSON this server accepts: nested too deeply") from None


class _TooLarge(Resource):
    isLeaf = True

    def render(self, request):
        return _error(request, 413, _too_large_message())


class BoundedRequest(Request):
    """
    A request of the Noise site that keeps at most :data:`MAX_BODY` bytes of its body.

    A declared length over the cap, or a body that grows past it, marks the
    request too large: what was kept is dropped, later bytes are only counted,
    and the request renders a 413 instead of its resource.
    """

    max_body = MAX_BODY
    body_received = 0
    body_too_large = False

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self._drop_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self.body_received += len(data)
        if self.body_too_large:
            return
        if self.body_received > self.max_body:
            self._drop_body()
            return
        super().handleContentChunk(data)

    def _drop_body(self) -> None:
        self.body_too_large = True
        if self.content is not None:
            self.content.close()
        self.content = io.BytesIO()

    def render(self, resrc):
        if self.body_too_large:
            resrc = _TooLarge()
        return super().render(resrc)


class _Alive:
    """Tracks whether the client is still there (``notifyFinish`` errback)."""

    def __init__(self, request) -> None:
        self.open = True
        self.on_lost: list[Callable[[], None]] = []
        request.notifyFinish().addBoth(self._done)

    def _done(self, result) -> None:
        self.open = False
        for callback in self.on_lost:
            callback()


class _NoiseResource(Resource):
    isLeaf = True

    #: The largest body read; more is refused with 400.
    body_limit = MAX_BODY

    def __init__(self, identify: Callable) -> None:
        super().__init__()
        self.identify = identify

    def _begin(self, request):
        identity = self.identify(request)
        if identity is None:
            return None, _error(request, 401, "this endpoint is only served inside the Noise channel")
        try:
            return (identity, _read_json(request, self.body_limit)), None
        except InvalidInput as e:
            return None, _error(request, 400, str(e))

    @staticmethod
    def _fail(request, alive: _Alive, failure) -> None:
        if not alive.open:
            return
        error = failure.value
        if isinstance(error, InvalidInput):
            body = _error(request, 400, str(error))
        elif isinstance(error, (MachineKeyMismatch, Unauthorized)):
            body = _error(request, 401, str(error))
        elif isinstance(error, NotFound):
            body = _error(request, 404, str(error))
        else:
            _log.failure("control request {uri} failed", failure, uri=request.uri)
            body = _error(request, 500, "internal error")
        request.write(body)
        request.finish()


class RegisterResource(_NoiseResource):
    """``POST /machine/register``; the client's address is the source of an interactive registration."""

    def __init__(self, registrar: Registrar, identify: Callable = peer_identity) -> None:
        super().__init__(identify)
        self.registrar = registrar

    def render_POST(self, request):
        begun, error = self._begin(request)
        if error is not None:
            return error
        (machine_key, _version), body = begun
        alive = _Alive(request)
        # Inside Noise, the address the outer /ts2021 connection came from.
        source = client_address(request)
        d = Deferred.fromCoroutine(self.registrar.register(machine_key, body, source=source))
        alive.on_lost.append(d.cancel)

        def done(response):
            if alive.open:
                request.write(_json_response(request, 200, response))
                request.finish()

        d.addCallbacks(done, lambda f: self._fail(request, alive, f))
        return NOT_DONE_YET


class MapResource(_NoiseResource):
    """``POST /machine/map``: streaming polls, lite updates and one-shot maps."""

    def __init__(self, poll: IPollService, notifier: INodeNotifier, identify: Callable = peer_identity,
                 stream_admission: TurnBudget | None = None) -> None:
        super().__init__(identify)
        self.poll = poll
        self.notifier = notifier
        #: When set, a new stream's full map waits for its turn here (a few per reactor
        #: turn, so a reconnect storm does not starve ``/health`` and keep-alives).
        self.stream_admission = stream_admission

    def render_POST(self, request):
        begun, error = self._begin(request)
        if error is not None:
            return error
        (machine_key, _version), body = begun
        try:
            map_request = parse_map_request(body)
        except InvalidInput as e:
            return _error(request, 400, str(e))
        alive = _Alive(request)
        d = Deferred.fromCoroutine(self._serve(request, alive, machine_key, map_request))
        d.addErrback(lambda f: self._fail(request, alive, f))
        return NOT_DONE_YET

    async def _serve(self, request, alive: _Alive, machine_key: str, map_request) -> None:
        lite = map_request.omit_peers and not map_request.stream
        try:
            node = self.poll.authenticate(machine_key, map_request)
            node = await self.poll.apply(node, map_request)
        except Exception:
            if lite:  # Headscale's headscale_mapresponse_endpoint_updates_total{status="error"}
                self.notifier.map_counters.count_endpoint_update("error")
            raise
        if lite:
            self.notifier.map_counters.count_endpoint_update("ok")
        if map_request.stream and self.stream_admission is not None and alive.open:
            turn = self.stream_admission.admit()
            alive.on_lost.append(turn.cancel)
            try:
                await turn
            except CancelledError:
                return  # the client went away while its stream waited for its turn
        if not alive.open:
            return
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        if map_request.stream:
            session = self.notifier.open_stream(
                node.id, request.write, request.finish,
                unsent=stream_backlog(request),
                abort=getattr(getattr(request, "channel", None), "abortConnection", None),
                encoding=map_request.compress,
            )
            alive.on_lost.append(session.connection_lost)
        elif map_request.omit_peers:
            request.finish()
        else:
            request.write(self.notifier.one_shot(node.id, map_request.compress))
            self.notifier.map_counters.count_sent("ok", "full")
            request.finish()


class SetDNSResource(_NoiseResource):
    """``POST /machine/set-dns``: a node publishes its own ACME DNS-01 challenge record."""

    body_limit = MAX_SET_DNS_BODY

    def __init__(self, challenges: DNSChallenges, identify: Callable = peer_identity) -> None:
        super().__init__(identify)
        self.challenges = challenges

    def render_POST(self, request):
        begun, error = self._begin(request)
        if error is not None:
            return error
        (machine_key, _version), body = begun
        alive = _Alive(request)
        d = Deferred.fromCoroutine(self.challenges.publish(machine_key, body))

        def done(response):
            if alive.open:
                request.write(_json_response(request, 200, response))
                request.finish()

        def failed(failure):
            status = {CertificatesUnavailable: 403, NotOwnName: 403, UpdateInProgress: 409,
                      PublishFailed: 502}.get(type(failure.value))
            if status is None:
                return self._fail(request, alive, failure)
            if alive.open:
                request.write(_error(request, status, str(failure.value)))
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class SSHActionResource(_NoiseResource):
    """``GET /machine/ssh/action/<src>/to/<dst>``: SSH check mode's verdicts, asked by the destination node."""

    def __init__(self, checks: SSHChecks, identify: Callable = peer_identity) -> None:
        super().__init__(identify)
        self.checks = checks

    def render_GET(self, request):
        identity = self.identify(request)
        if identity is None:
            return _error(request, 401, "this endpoint is only served inside the Noise channel")
        parts = request.postpath
        if len(parts) != 4 or parts[0] != b"action" or parts[2] != b"to":
            return _error(request, 404, "no such control endpoint")
        src, dst = (p.decode("ascii", "replace") for p in (parts[1], parts[3]))
        query = {}
        for name in (b"auth_id", b"local_user"):
            values = request.args.get(name)
            if values:
                query[name.decode()] = values[0].decode("utf-8", "replace")
        alive = _Alive(request)
        d = Deferred.fromCoroutine(self.checks.action(identity[0], src, dst, query, source=client_address(request)))
        alive.on_lost.append(d.cancel)

        def done(action):
            if alive.open:
                request.write(_json_response(request, 200, action))
                request.finish()

        def failed(failure):
            if failure.check(CancelledError) and not alive.open:
                return None  # the client went away while its check was pending
            return self._fail(request, alive, failure)

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class _NotFound(Resource):
    isLeaf = True

    def render(self, request):
        return _error(request, 404, "no such control endpoint")


class MachineResource(Resource):
    """``/machine``: mount inside the Noise ``Site`` as ``root.putChild(b"machine", ...)``."""

    def __init__(
        self,
        registrar: Registrar,
        poll: IPollService,
        notifier: INodeNotifier,
        identify: Callable = peer_identity,
        dns_challenges: DNSChallenges | None = None,
        ssh_checks: SSHChecks | None = None,
        stream_admission: TurnBudget | None = None,
    ) -> None:
        super().__init__()
        if dns_challenges is None:
            dns_challenges = DNSChallenges(registrar.state, None, "", registrar.clock)
        self.children_by_name = {
            b"register": RegisterResource(registrar, identify),
            b"map": MapResource(poll, notifier, identify, stream_admission),
            b"set-dns": SetDNSResource(dns_challenges, identify),
        }
        #: ``/machine/ssh/...`` reads the rest of the path itself.
        self.ssh_action = None if ssh_checks is None else SSHActionResource(ssh_checks, identify)

    def getChild(self, path: bytes, request):
        if path == b"ssh" and self.ssh_action is not None:
            return self.ssh_action
        child = self.children_by_name.get(path)
        if child is None or request.postpath:
            return _NotFound()
        return child

    def render(self, request):
        return _error(request, 404, "no such control endpoint")
