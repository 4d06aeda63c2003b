# -*- test-case-name: tests.web.test_access_log -*-
"""
One access-log line and one set of request counters per finished request, on every listener.

:class:`AccessLoggedSite` is the ``Site`` of each listener (control TCP,
inside Noise, the unix socket, metrics, the ACME HTTP-01 listener). When Twisted logs a finished
request, :class:`AccessLog` does two things:

- counts it in :class:`~headscale_tw.counters.HTTPCounters` under its
  listener, **route template** (``/api/v1/node/{node_id}``, never the raw path:
  a client choosing paths cannot create series), method and status, with its
  latency (``headscale_http_requests_total`` and
  ``headscale_http_request_duration_seconds``);
- logs ``client "METHOD path" status bytes latency`` through ``twisted.logger``
  (namespace ``headscale_tw.web.access_log.AccessLog``) with those values as event fields, so
  ``log.format: json`` writes them as JSON keys. The path passes through
  :func:`~headscale_tw.redact.redact` (``?key=``, ``hskey-...``), and the
  client is :func:`~headscale_tw.web.client_address.client_address`
  (``trusted_proxies`` honoured; inside Noise, whoever opened the outer
  connection; ``local`` on the unix socket).

Levels: a listener's lines are logged at its ``level``, except ``/api/...``
requests, logged at ``api_level``. The builder uses debug for the control
listener and Noise (a registration storm would otherwise write a line per
``/key`` and ``/machine/*`` request), info for the admin API wherever it is
served, and debug for metrics scrapes.

Latency runs from the moment the site looks the request's resource up (its
head and body have arrived) to the moment the response finished; for a
streaming ``/machine/map`` that is the life of the stream. Requests that
switch protocols (``/ts2021``, ``/derp``) are logged when the switch completes.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable

from twisted.logger import Logger, LogLevel
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from headscale_tw.counters import HTTPCounters
from headscale_tw.redact import redact
from headscale_tw.web.client_address import NO_PROXIES, TrustedProxies, client_address

__all__ = ["RouteTemplates", "AccessLog", "AccessLoggedSite", "CONTROL_ROUTES", "NOISE_ROUTES", "METRICS_ROUTES",
           "ACME_ROUTES", "OTHER_ROUTE", "admin_api_routes", "access_logs"]

#: The route label of a path that matches no template (unknown paths, probes, typos).
OTHER_ROUTE = "other"

#: Paths longer than this are cut in the log line (the request line is bounded anyway).
_MAX_LOGGED_PATH = 512

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})

#: Routes of the public (control) listener outside ``/api``.
CONTROL_ROUTES = (
    "/", "/health", "/key", "/ts2021", "/version", "/robots.txt", "/verify", "/windows",
    "/apple", "/apple/{platform}", "/swagger", "/swagger/v1/openapiv2.json",
    "/register", "/register/{auth_id}", "/oidc/callback",
    "/derp", "/derp/probe", "/derp/latency-check", "/generate_204", "/bootstrap-dns",
)

#: Routes served inside the Noise channel.
NOISE_ROUTES = ("/machine/map", "/machine/register", "/machine/set-dns")

#: Routes of the metrics listener.
METRICS_ROUTES = ("/metrics",)

#: Routes of the HTTP-01 listener (``tls_letsencrypt_listen``); everything else is redirected.
ACME_ROUTES = ("/.well-known/acme-challenge/{token}",)

_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def admin_api_routes() -> tuple[str, ...]:
    """The ``/api/v1`` templates, read from the admin API's own Klein routing table."""
    from headscale_tw.web.admin.app import AdminAPI  # importing it registers every handler module's routes

    rules = sorted({rule.rule for rule in AdminAPI.app.url_map.iter_rules()})
    # the catch-all branch ("/<path:__rest__>", answering 404) is no route of its own
    return tuple("/api" + _PARAMETER.sub(r"{\1}", rule) for rule in rules if "__rest__" not in rule)


class RouteTemplates:
    """Maps a request path to the template it matches (``{name}`` stands for one segment)."""

    def __init__(self, templates: Iterable[str]) -> None:
        self._exact: dict[str, str] = {}
        self._patterns: dict[tuple[str, int], list[tuple[re.Pattern, str]]] = {}
        for template in templates:
            if "{" not in template:
                self._exact[template] = template
                continue
            segments = template.split("/")
            pattern = re.compile("/".join("[^/]+" if s.startswith("{") else re.escape(s) for s in segments) + "$")
            self._patterns.setdefault((segments[1], len(segments)), []).append((pattern, template))

    def route(self, path: str) -> str:
        """The template ``path`` (without query) matches, or :data:`OTHER_ROUTE`."""
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        found = self._exact.get(path)
        if found is not None:
            return found
        segments = path.split("/")
        if len(segments) < 2:
            return OTHER_ROUTE
        for pattern, template in self._patterns.get((segments[1], len(segments)), ()):
            if pattern.match(path):
                return template
        return OTHER_ROUTE


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class AccessLog:
    """Counts and logs finished requests of one listener (see the module docstring)."""

    log = Logger()

    def __init__(self, listener: str, counters: HTTPCounters, routes: RouteTemplates, seconds: Callable[[], float],
                 proxies: TrustedProxies = NO_PROXIES, level: LogLevel = LogLevel.info,
                 api_level: LogLevel = LogLevel.info, threshold: LogLevel = LogLevel.debug) -> None:
        #: Lines below ``threshold`` (``log.level``) are not even built: the counters are all a
        #: control request costs at info.
        self.threshold = threshold
        self.listener = listener
        self.counters = counters
        self.routes = routes
        self._seconds = seconds
        self.proxies = proxies
        self.level = level
        self.api_level = api_level
        self._started: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def started(self, request) -> None:
        """Note when handling of ``request`` began (called once its resource is looked up).

        A request whose connection is lost before it finishes (a client leaving
        a map stream) is counted and logged then, with the status it had.
        """
        if request in self._started:
            return
        self._started[request] = self._seconds()
        request.notifyFinish().addErrback(self._lost, request)

    def _lost(self, failure, request) -> None:
        if request in self._started:
            self.finished(request)

    def finished(self, request) -> None:
        """Count and log ``request``, which has finished."""
        start = self._started.pop(request, None)
        latency = 0.0 if start is None else max(0.0, self._seconds() - start)
        method = request.method.decode("latin-1", "replace").upper() if request.method else ""
        method_label = method if method in _METHODS else "OTHER"
        path = (request.path or b"/").decode("latin-1")
        route = self.routes.route(path)
        status = int(request.code or 0)
        self.counters.count(self.listener, route, method_label, str(status), latency)
        level = self.api_level if route.startswith("/api/") or path.startswith("/api/") else self.level
        if level < self.threshold:
            return
        uri = redact((request.uri or b"").decode("latin-1"))
        if len(uri) > _MAX_LOGGED_PATH:
            uri = uri[:_MAX_LOGGED_PATH] + "..."
        self.log.emit(
            level,
            '{client} "{method} {path}" {status} {bytes} {latency_ms}ms ({listener})',
            client=client_address(request, self.proxies),
            method=_printable(method_label if method_label != "OTHER" else method[:16]),
            path=_printable(uri),
            route=route,
            status=status,
            bytes=int(getattr(request, "sentLength", 0) or 0),
            latency_ms=round(latency * 1000.0, 3),
            listener=self.listener,
        )


class AccessLoggedSite(server.Site):
    """A ``Site`` whose finished requests go to an :class:`AccessLog` instead of Twisted's log file."""

    def __init__(self, resource, access_log: AccessLog, **kwargs) -> None:
        super().__init__(resource, **kwargs)
        self.access_log = access_log

    def getResourceFor(self, request: IRequest) -> IResource:
        self.access_log.started(request)
        return super().getResourceFor(request)

    def log(self, request) -> None:
        self.access_log.finished(request)


def access_logs(counters: HTTPCounters, seconds: Callable[[], float], proxies: TrustedProxies = NO_PROXIES,
                threshold: LogLevel = LogLevel.debug) -> dict[str, AccessLog]:
    """
    The access log of each listener, sharing ``counters``: ``control`` (the
    public listener: control routes at debug, ``/api`` at info), ``noise``
    (inside ``/ts2021``, debug), ``unix`` (the CLI socket, info) and
    ``metrics`` (debug: a scrape every few seconds is not news) and ``acme``
    (the HTTP-01 listener: challenges and redirects, debug). ``threshold``
    is the configured ``log.level``: lines below it are skipped unbuilt.
    """
    api = admin_api_routes()
    debug = LogLevel.debug
    return {
        "control": AccessLog("control", counters, RouteTemplates(CONTROL_ROUTES + api), seconds, proxies,
                             level=debug, threshold=threshold),
        "noise": AccessLog("noise", counters, RouteTemplates(NOISE_ROUTES), seconds, proxies, level=debug,
                           api_level=debug, threshold=threshold),
        "unix": AccessLog("unix", counters, RouteTemplates(api), seconds, proxies, threshold=threshold),
        "metrics": AccessLog("metrics", counters, RouteTemplates(METRICS_ROUTES), seconds, proxies,
                             level=debug, api_level=debug, threshold=threshold),
        "acme": AccessLog("acme", counters, RouteTemplates(ACME_ROUTES), seconds, proxies, level=debug,
                          api_level=debug, threshold=threshold),
    }
