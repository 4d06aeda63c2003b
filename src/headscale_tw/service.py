# -*- test-case-name: tests.test_service -*-
"""
The service tree: ``build_service(config, reactor)`` is the one builder used by
``twistd headscale`` (tap.py), ``headscale serve`` and ``etc/headscale.tac``.

Start order is explicit (house style 6): :class:`HeadscaleService` opens and
migrates the database first, in ``startService``; only then does it build and
start the listeners and timers as children. On stop, children stop first (in
reverse order) and the database closes last, after in-flight writes finish.
Start-up failures are honest (docs/security.md, "Start-up failures"): whatever
keeps the server from starting (a bad policy, missing TLS files, a corrupt Noise
key, an unreachable or too new database, a busy port, another server holding the
socket lock) is logged as one critical line naming the setting and the problem,
the traceback only at ``log.level: debug``; the reactor stops and
:attr:`HeadscaleService.exit_status` becomes 1. ``headscale serve`` returns it;
under ``twistd`` and the ``.tac``, :func:`exit_with_status` makes the process
exit with it once twistd has finished its own shutdown.

The checks made before the database opens are the ones ``headscale configtest``
makes (:mod:`headscale_tw.preflight`).
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable, Sequence

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.components import Componentized
from twisted.web import resource

from headscale_tw import preflight
from headscale_tw._twisted_private import claim_daemon_status_pipe, report_daemon_status
from headscale_tw.config.model import Config
from headscale_tw.counters import HTTPCounters
from headscale_tw.exit_status import exit_with_status, stop_reactor_after_failed_start
from headscale_tw.gc_refreeze import GcRefreezer
from headscale_tw.hostport import parse_hostport
from headscale_tw.logs import twisted_level
from headscale_tw.web.access_log import AccessLog, AccessLoggedSite, access_logs
from headscale_tw.web.plane_resources import machine_resource, register_page, ssh_check_page

__all__ = ["build_service", "listen_endpoint", "exit_with_status", "HeadscaleService", "HealthResource",
           "MetricsResource"]


#: Accept backlog of the control listener: thousands of clients reconnect at once after a
#: restart or a network blip (Twisted's default is 50; the kernel caps it at somaxconn).
LISTEN_BACKLOG = 4096


def listen_endpoint(hostport: str, tls: tuple[str, str] | None = None, backlog: int | None = None) -> str:
    """Turn Headscale's ``host:port`` (IPv6 in brackets) into a Twisted endpoint string.

    With ``tls=(cert_path, key_path)`` the endpoint is ``ssl:`` (TLS 1.2 or newer,
    Twisted's default minimum); ``backlog`` sets the accept queue length.
    """
    host, port = parse_hostport(hostport)
    kind = "tcp"
    extra = ""
    if tls is not None:
        kind = "ssl"
        cert, key = (p.replace(":", "\\:") for p in tls)
        extra = f":certKey={cert}:privateKey={key}"
    if backlog is not None:
        extra += f":backlog={int(backlog)}"
    if not host or host == "0.0.0.0":
        return f"{kind}:{port}{extra}"
    return "{}:{}:interface={}{}".format(kind, port, host.replace(":", "\\:"), extra)


#: Collect the youngest generation every this many net container allocations (Python's
#: default is 700). A change fanned out to thousands of streams allocates tens of thousands
#: of short-lived containers; with the default, collections ran over and over during it
#: (in-process, 5,000 streams, 12 hub joins/deletes: 871 ms of 3.5 s in the collector,
#: single changes up to 577 ms instead of ~330; with these thresholds 103 ms, no spikes).
#: Not higher: dropped connections are reference cycles only the collector frees, and
#: with (50000, 20, 100) a 10,000-node reconnect storm peaked at 972 MiB instead of ~750.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    """
    After start-up: move everything loaded so far (modules, the cached state of every
    node) to the permanent generation, so full collections no longer walk it, and
    collect the young generation less often (see :data:`GC_THRESHOLDS`). Unreachable
    cycles are still collected; refcounting frees everything else at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class ControlSite(AccessLoggedSite):
    """
    The control listener's site: each request is counted and access-logged
    (:mod:`headscale_tw.web.access_log`), control requests at debug (as
    Headscale logs them; at info a line per ``/key`` and ``/ts2021`` of every
    login was the busiest output of a registration storm), ``/api`` at info.
    """

    def __init__(self, root, access_log: AccessLog, **kwargs) -> None:
        super().__init__(root, access_log, **kwargs)


class HealthResource(resource.Resource):
    """``GET /health``: ``{"status":"pass"}`` while the database answers, else 503 ``fail``.

    ``healthy`` is a cheap synchronous check (normally
    :meth:`~headscale_tw.storage.health.DatabaseHealth.healthy`): the answer comes
    from memory, so it never waits behind queued database work.
    """

    isLeaf = True

    def __init__(self, healthy: Callable[[], bool] | None = None):
        super().__init__()
        self._healthy = healthy

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        if self._healthy is None or self._healthy():
            return b'{"status":"pass"}'
        request.setResponseCode(503)
        return b'{"status":"fail"}'


class MetricsResource(resource.Resource):
    """``GET /metrics``: Prometheus text exposition of a registry (no threads)."""

    isLeaf = True

    def __init__(self, registry=None):
        super().__init__()
        from prometheus_client import REGISTRY

        self._registry = registry or REGISTRY

    def render_GET(self, request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class HeadscaleService(service.MultiService):
    """The whole server: opens the database, then starts listeners and timers.

    ``log_observer`` (optional) is the observer to install when the service
    joins a twistd ``Application`` that has none (see :meth:`setServiceParent`).
    ``exit_status`` is 0, or 1 once start-up failed.
    """

    log = Logger()

    def __init__(self, config: Config, reactor, components: Callable | None = None,
                 log_observer: ILogObserver | None = None, raise_early_failure: bool = False,
                 twistd_options=None, status_pipe: int | None = None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._components = components or build_components
        self._log_observer = log_observer
        self._raise_early_failure = raise_early_failure
        self._ready: defer.Deferred | None = None
        self.context: Components | None = None
        self.exit_status = 0
        self.failure_line = ""
        #: twistd's own options (``twistd headscale``): a daemonising twistd keeps its status pipe there.
        self._twistd_options = twistd_options
        self._status_pipe: int | None = None
        self._given_pipe = status_pipe

    def setServiceParent(self, parent) -> None:
        """Join ``parent``; a twistd ``Application`` without an ``ILogObserver`` gets ``log_observer``.

        twistd builds the application around the service that ``makeService``
        returned and then installs the application's ``ILogObserver``; setting it
        here is how ``log.level`` reaches the observer twistd installs.
        """
        if (self._log_observer is not None and isinstance(parent, Componentized)
                and parent.getComponent(ILogObserver, None) is None):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        """Start building; with ``raise_early_failure``, a failure found before this returns is raised.

        The checks made before the database opens (lock, policy, TLS, keys,
        the database's version, bindable listeners) run synchronously, inside
        this call. A daemonising twistd (without ``-n``) reports an exception
        raised here to its waiting parent, which then exits 1; in the foreground
        it ends twistd before its reactor runs (exit status 1, see
        :func:`exit_with_status`). Either way the failure is logged as one line.

        Given ``twistd_options`` of a daemonising twistd, the service takes
        twistd's status pipe, so that the waiting parent is told only when the
        start has finished: 0 once the server serves, 1 with the reason for any
        failure, also one found after this returns (a migration, the first ACME
        certificate).
        """
        self._status_pipe = claim_daemon_status_pipe(self._twistd_options) if self._given_pipe is None \
            else self._given_pipe  # a worker's status pipe to its supervisor (supervisor.py)
        super().startService()
        self._ready = defer.Deferred.fromCoroutine(self._start())
        self._ready.addErrback(self._start_failed)
        if self._raise_early_failure and self.exit_status:
            raise preflight.StartupError(self.failure_line)

    async def _start(self):
        self.context = context = await self._components(self.config, self.reactor)
        for child in context.services:
            child.setServiceParent(self)
        ready = getattr(self.context, "ready", None)
        if ready is not None:  # e.g. the first ACME certificate: serving without it is a failed start
            await ready
        self._install_sighup()
        if getattr(self.reactor, "running", False):  # the daemon, not a test driving the service
            tune_gc()
            # the nodes' state arrives after start-up: re-freeze it as it grows (see gc_refreeze)
            GcRefreezer(self.reactor).setServiceParent(self)
        self.log.info("headscale-tw serving on {listen} ({url})", listen=self.config.listen_addr, url=self.config.server_url)
        self._report_status(None)
        return self

    def _report_status(self, failure: str | None) -> None:
        """Tell a daemonising twistd's waiting parent how the start went (once; nothing in the foreground)."""
        pipe, self._status_pipe = self._status_pipe, None
        if pipe is not None:
            report_daemon_status(pipe, None if failure is None else f"{preflight.StartupError.__module__}."
                                 f"{preflight.StartupError.__name__}: {failure}")

    def _start_failed(self, failure):
        self.exit_status = 1
        self.failure_line = preflight.start_failure_line(self.config, failure)
        self.log.critical("headscale-tw could not start: {error}", error=self.failure_line)
        self._report_status(self.failure_line)
        self.log.failure("start-up failure in detail", failure, level=LogLevel.debug)
        stop_reactor_after_failed_start(self.reactor)

    def _install_sighup(self):
        if not hasattr(self.reactor, "callFromThread") or not self.reactor.running:
            return
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        except ValueError:  # not the main thread (e.g. under a test runner)
            pass

    def reload(self):
        """SIGHUP: reload policy and DNS settings without dropping connections."""
        if self.context is not None and self.context.reload is not None:
            d = defer.maybeDeferred(self.context.reload)
            d.addErrback(lambda f: self.log.failure("reload failed; previous settings stay in force", f))
            return d
        return defer.succeed(None)

    async def _stop(self):
        await super().stopService()
        if self.context is not None and self.context.close is not None:
            await self.context.close()

    def stopService(self):
        self._report_status("stopped before the start had finished")  # nothing when it had
        return defer.Deferred.fromCoroutine(self._stop())


class Components:
    """What ``build_components`` made: child services in start order, plus hooks."""

    def __init__(self, services, close=None, reload=None, **named):
        self.services = services
        self.close = close
        self.reload = reload
        self.__dict__.update(named)


async def build_components(config: Config, reactor) -> Components:
    """Check what start-up depends on, open the database, and build the listeners.

    In order: take the socket lock (so a second server stops here), check the
    policy file and the TLS files, load (or create) the Noise key, read the
    database's schema version (and the stored policy) and bind-test every
    listener, as ``headscale configtest`` does (:mod:`headscale_tw.preflight`),
    all before the first ``await``; then open and migrate the database;
    everything else is built on it. If anything fails,
    what was opened is closed and the lock released before the error propagates.
    """
    from headscale_tw.storage.database import open_database

    lock = preflight.socket_lock(config)
    try:
        preflight.check_policy(config)
        preflight.check_tls(config)
        preflight.check_dns_provider(config)
        noise_key = preflight.noise_key(config, create=True)
        preflight.check_derp_keys(config, create=True)
        # Read-only and synchronous, so that they fail inside startService, which a daemonising
        # twistd reports to its waiting parent; the asynchronous steps below repeat them for real.
        preflight.check_database(config)
        preflight.check_stored_policy(config)
        preflight.check_bindable(config)
        try:
            db = await open_database(config.database, reactor)
        except Exception as e:
            raise preflight.StartupError(f"database ({preflight.describe_database(config)}): "
                                         f"{preflight.one_line(e)}") from e
        try:
            return await _build_on_database(config, reactor, db, noise_key, lock)
        except BaseException:
            await db.close()
            raise
    except BaseException:
        if lock is not None:
            lock.release()
        raise


async def _build_on_database(config: Config, reactor, db, noise_key, lock) -> Components:
    from twisted.application.internet import TimerService

    from headscale_tw.control.framing import encode_json
    from headscale_tw.control.plane import ControlPlane

    # With several instances on one database, a DERP client registered elsewhere a moment ago is
    # looked up in the database before it is refused (derp/admission.py).
    derp_parts = _build_derp(config, reactor, db.nodes.get_by_node_key if db.engine == "postgres" else None)
    feed = None
    link = None
    lease_keepers: list = []
    if db.engine == "postgres":
        # Several instances may share this database: publish our writes, apply theirs, keep online
        # state in node_sessions, and let one instance (the lease holder) do each lifecycle job.
        from headscale_tw.control.cluster import ClusterLink
        from headscale_tw.control.lease import LeaseKeeper
        from headscale_tw.control.lifecycle import LIFECYCLE_LEASES
        from headscale_tw.storage.changefeed import ChangeFeed, PublishingDatabase, postgres_listener

        feed = ChangeFeed(postgres_listener(config.database.postgres, reactor), db.pool, reactor)
        db = PublishingDatabase(db, feed.publish)
        keepers = {name: LeaseKeeper(db.leases, name, feed.instance_id, reactor) for name in LIFECYCLE_LEASES}
        link = ClusterLink(feed.instance_id, feed.publish, db.node_sessions,
                           derp=derp_parts.server if derp_parts else None,
                           lease_for=lambda name: keepers[name].lease)
        lease_keepers.extend(keepers.values())
    from headscale_tw.dnsprovider.build import build_provider

    plane = ControlPlane(config, db, reactor, derp_map=derp_parts.current_map if derp_parts else None,
                         dns_provider=build_provider(config, reactor), instance=_instance_name(), cluster=link)
    await plane.start()
    cluster = plane.cluster
    if feed is not None:
        assert cluster is not None  # the plane was given a ClusterLink with the feed
        feed.subscribe(cluster.changed, cluster.resync)
        feed.start()
    if derp_parts is not None:
        derp_parts.bind(plane, lambda new_map: plane.notifier.broadcast(encode_json({"DERPMap": new_map})))

    from headscale_tw.storage.health import DatabaseHealth

    health = DatabaseHealth(db.pool, reactor)
    root = resource.Resource()
    root.putChild(b"health", HealthResource(health.healthy))
    oidc_jobs = []
    if config.oidc.enabled:
        oidc_jobs = await _mount_oidc(config, reactor, root, db, plane)
    else:
        root.putChild(b"register", register_page(plane.registrar))
        root.putChild(b"auth", ssh_check_page(plane.ssh_checks))  # SSH check mode: how an admin approves
    from headscale_tw.web.admin_api import AdminAPI, GuardedRequest, mount
    from headscale_tw.web.public_pages import mount_public_pages
    from headscale_tw.web.swagger import swagger_resource

    root.putChild(b"swagger", swagger_resource())  # Headscale's /swagger and /swagger/v1/openapiv2.json
    mount_public_pages(root, config.server_url, lambda node_key: plane.state.by_node_key(node_key) is not None)
    # Request bodies on the public listener: the admin API's (refused from the head when too large or
    # without an API key) and /verify's, under 4 KiB (see web/admin/early.py).
    http_counters = HTTPCounters()
    logs = access_logs(http_counters, reactor.seconds, _trusted_proxies(config),
                       threshold=twisted_level(getattr(getattr(config, "log", None), "level", "info")))
    site = ControlSite(root, logs["control"], requestFactory=GuardedRequest)
    _mount_control(config, reactor, root, plane, noise_key, logs["noise"])

    services: list = list(lease_keepers)  # first to start, last to stop
    if derp_parts is not None:
        services.extend(derp_parts.mount(root))
    for interval, job in [*plane.periodic_jobs(), (health.interval, health.tick), *oidc_jobs]:
        timer = TimerService(interval, job)
        timer.clock = reactor
        services.append(timer)
    # /api/v1 on the main listener needs an API key; the unix socket is trusted
    # locally (its file mode is the access control), as Headscale's CLI socket is.
    mount(root, AdminAPI(plane.admin, trust_all=False, throttle=plane.throttles.api_key,
                         proxies=_trusted_proxies(config)))
    ready = None
    if config.tls.letsencrypt_hostname:
        from headscale_tw.certs.listeners import acme_listeners
        from headscale_tw.storage.changefeed import new_instance_id

        acme = acme_listeners(config, reactor, site, LISTEN_BACKLOG, db,
                              feed.instance_id if feed is not None else new_instance_id(),
                              access_log=logs["acme"])
        services.extend(acme.services)
        ready = acme.ready
    elif config.worker_index is not None:  # one of several workers: SO_REUSEPORT (workers.py)
        from headscale_tw.workers import control_listener

        services.append(control_listener(config, site, reactor, LISTEN_BACKLOG))
    else:
        tls = (config.tls.cert_path, config.tls.key_path) if config.tls.enabled else None
        services.append(strports.service(listen_endpoint(config.listen_addr, tls, backlog=LISTEN_BACKLOG), site,
                                         reactor=reactor))
    if config.unix_socket:
        unix_root = resource.Resource()
        mount(unix_root, AdminAPI(plane.admin, trust_all=True))
        services.append(_unix_listener(config, AccessLoggedSite(unix_root, logs["unix"]), reactor))
    if config.metrics_listen_addr:
        metrics_root = resource.Resource()
        from headscale_tw.metrics import make_registry

        registry = make_registry(plane, derp_parts.server if derp_parts else None,
                                 getattr(derp_parts, "stun", None), pool=db.pool, http=http_counters)
        metrics_root.putChild(b"metrics", MetricsResource(registry))
        services.append(strports.service(listen_endpoint(config.metrics_listen_addr),
                                         AccessLoggedSite(metrics_root, logs["metrics"]), reactor=reactor))

    if feed is not None and cluster is not None:
        services.extend(_instance_services(config, reactor, db, feed.instance_id, derp_parts, [
            cluster.membership_changed,  # online state, last seen
        ]))

    async def close():
        try:
            if feed is not None:
                feed.stop()
            plane.stop()
            if plane.presence is not None:
                try:  # our streams have ended: our node_sessions rows go (the others would delete them anyway)
                    await plane.presence.close()
                except Exception as e:
                    Logger().warn("could not delete this instance's node sessions: {error}", error=e)
            await db.close()
        finally:
            if lock is not None:
                lock.release()  # last: no second server may start while this one still writes

    def reload():
        # SIGHUP: policy (file mode) and DNS settings; connections stay up.
        return defer.Deferred.fromCoroutine(plane.reload())

    return Components(services, close=close, reload=reload, site=site, root=root, db=db, plane=plane, health=health,
                      derp=derp_parts.server if derp_parts else None, ready=ready)


def _instance_services(config: Config, reactor, db, instance_id: str, derp_parts, consumers: Sequence = ()) -> list:
    """This instance's heartbeat row and, with a DERP mesh key, the mesh of every live instance (last: it
    advertises this instance once its listeners run, and stops first). Each change of membership goes to
    the mesh, then to ``consumers`` (:func:`~headscale_tw.control.instances.membership_dispatch`)."""
    from headscale_tw import __version__
    from headscale_tw.control.instances import Advertised, InstanceRegistry, membership_dispatch
    from headscale_tw.storage.prepare import SCHEMA_VERSION

    mesh = derp_parts.mesh_membership(instance_id) if derp_parts is not None else None
    advertised = Advertised(software_version=__version__, schema_version=SCHEMA_VERSION, server_url=config.server_url,
                            derp_url=mesh.own_url if mesh else "")
    registry = InstanceRegistry(db.instances, instance_id, reactor, advertised,
                                on_membership=membership_dispatch([
                                    *([mesh.membership_changed] if mesh else []),  # DERP mesh and map
                                    *consumers,
                                ]))
    return [registry] if mesh is None else [mesh, registry]


def _instance_name() -> str:
    """This server among those sharing a database, for the audit log: ``<host>:<pid>``."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _noise_identity(request):
    """The (machine key text, capability version) of an inner request's Noise peer."""
    from headscale_tw.noise.protocol import noise_peer

    peer = noise_peer(request)
    return None if peer is None else (peer.machine_key.text, peer.version)


def _trusted_proxies(config: Config):
    from headscale_tw.web.client_address import TrustedProxies

    return TrustedProxies.from_config(config.trusted_proxies)


async def _mount_oidc(config: Config, reactor, root, db, plane) -> list:
    """OIDC sign-in on ``/register``, ``/auth`` (SSH checks) and ``/oidc/callback``; returns its periodic jobs.

    With ``oidc.only_start_if_oidc_is_available`` (the default) start-up fails
    when the provider's discovery document or keys cannot be fetched; without it
    a warning is logged and discovery is tried again at the first sign-in.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    from headscale_tw.oidc.client import RelyingParty, read_client_secret, redirect_uri_for
    from headscale_tw.oidc.refusals import LoginRefused
    from headscale_tw.oidc.signin import PendingLogins, SignIn
    from headscale_tw.oidc.ssh_check import SSHCheckSignIn
    from headscale_tw.web.oidc_pages import OIDCCallbackPage, OIDCCheckPage, OIDCRegisterPage

    # A non-persistent pool: a sign-in makes a handful of requests, and no cached
    # connection (nor its idle timer) outlives them.
    http = HTTPClient(Agent(reactor))
    relying_party = RelyingParty(config.oidc, redirect_uri_for(config.server_url), read_client_secret(config.oidc),
                                 http, reactor)
    try:
        await relying_party.discover()
    except LoginRefused as e:
        if config.oidc.only_start_if_oidc_is_available:
            raise preflight.StartupError(f"oidc.issuer: the provider {config.oidc.issuer} is not available ({e.detail}); "
                               "set oidc.only_start_if_oidc_is_available: false to start without it") from None
        Logger(namespace="headscale_tw.oidc").warn(
            "oidc.issuer: the provider {issuer} is not available ({detail}); starting anyway",
                 issuer=config.oidc.issuer, detail=e.detail)
    registrar = plane.registrar

    async def finish_registration(auth_id: str, user, expires_at) -> object:
        return await registrar.complete(auth_id, user.name, granted_until=expires_at, register_method="oidc")

    async def is_pending(auth_id: str) -> bool:
        return await registrar.get_pending(auth_id) is not None

    # Started logins and confirmations live in the database: the callback may land on any instance.
    sign_in = SignIn(relying_party, db.users, is_pending, finish_registration, reactor,
                     PendingLogins(db.oidc_logins), use_expiry_from_token=config.oidc.use_expiry_from_token,
                     audit=plane.audit)
    ssh_check = SSHCheckSignIn(relying_party, db.users, plane.ssh_checks, reactor,
                               PendingLogins(db.oidc_logins, login_kind="ssh_check"), audit=plane.audit)
    root.putChild(b"register", OIDCRegisterPage(sign_in, _trusted_proxies(config)))
    root.putChild(b"auth", OIDCCheckPage(ssh_check))  # SSH check mode: the person signs in again
    oidc = resource.Resource()
    oidc.putChild(b"callback", OIDCCallbackPage(sign_in, ssh_check))
    root.putChild(b"oidc", oidc)

    def forget_expired_logins() -> defer.Deferred:
        # One table holds both sign-ins' rows: this deletes the expired ones of every kind.
        d = defer.Deferred.fromCoroutine(sign_in.forget_expired())
        d.addErrback(lambda f: Logger(namespace="headscale_tw.oidc").failure("forgetting expired OIDC logins failed", f))
        return d

    return [(60.0, forget_expired_logins)]


def _mount_control(config: Config, reactor, root, plane, noise_key, access_log: AccessLog) -> None:
    """``/key`` and ``/ts2021`` on the public root; ``/machine/*`` only inside Noise."""
    from headscale_tw.noise.resource import Ts2021Resource
    from headscale_tw.web.control_api import BoundedRequest
    from headscale_tw.web.key import KeyResource

    inner_root = resource.Resource()
    inner_root.putChild(b"machine", machine_resource(plane, identify=_noise_identity))
    inner_site = AccessLoggedSite(inner_root, access_log, requestFactory=BoundedRequest)
    root.putChild(b"key", KeyResource(noise_key.public()))
    root.putChild(b"ts2021", Ts2021Resource(noise_key, inner_site, reactor,
                                            min_version=config.noise.min_capability_version,
                                            throttle=plane.throttles.noise_handshake,
                                            proxies=_trusted_proxies(config)))


def _unix_listener(config: Config, site, reactor):
    """The CLI's unix socket, with the configured file mode.

    No Twisted lock file: :func:`build_components` already holds the ``flock`` on
    ``<socket>.lock`` (:mod:`headscale_tw.socketlock`) and removed a stale socket.
    """
    path = os.path.abspath(config.unix_socket)
    endpoint = "unix:{}:mode={:o}:lockfile=0".format(path.replace(":", "\\:"), config.unix_socket_permission)
    return strports.service(endpoint, site, reactor=reactor)


class _DERPParts:
    """The embedded DERP relay, its STUN responder and the DERP map provider."""

    def __init__(self, config: Config, reactor, lookup=None):
        from headscale_tw.derp.admission import NodeKeyAdmission
        from headscale_tw.derp.derpmap import DERPMapProvider
        from headscale_tw.derp.server import DERPServer, load_or_generate_private_key

        self.config = config
        self.reactor = reactor
        self.plane = None
        self._on_change = None
        server_config = config.derp.server
        self.server = None
        if server_config.enabled:
            from headscale_tw.derp.mesh import load_mesh_key

            key = load_or_generate_private_key(server_config.private_key_path)
            verify = NodeKeyAdmission(self._known, reactor, lookup) if server_config.verify_clients else None
            mesh_key = load_mesh_key(server_config.mesh_key_path) if server_config.mesh_key_path else None
            self.server = DERPServer(key, reactor, verify_client=verify, mesh_key=mesh_key)
        import treq

        self.provider = DERPMapProvider(config, reactor, http=treq, on_change=self._changed)

    def current_map(self) -> dict:
        return self.provider.derp_map

    def bind(self, plane, on_change) -> None:
        self.plane = plane
        self._on_change = on_change

    def _changed(self, new_map) -> None:
        if self._on_change is not None:
            self._on_change(new_map)

    def _known(self, node_key: str) -> bool:
        # Only node keys the control plane knows may connect.
        return self.plane is not None and self.plane.state.by_node_key(node_key) is not None

    def mesh_membership(self, instance_id: str):
        """With the embedded server and a mesh key: mesh with, and list in the map, every live instance."""
        if self.server is None or self.server.mesh_key is None or self.config.worker_index is not None:
            return None  # workers mesh with each other privately (workers.local_mesh_services)
        from headscale_tw.derp.cluster import DERPMeshMembership, mesh_link_factory
        from headscale_tw.derp.derpmap import own_derp_url

        return DERPMeshMembership(instance_id, own_derp_url(self.config), mesh_link_factory(self.server, self.reactor),
                                  on_nodes=self.provider.set_instance_nodes,
                                  static_peers=self.config.derp.server.mesh_peers)

    def _resolve(self, name: str):
        """Every address of ``name`` (IPv4 and IPv6), looked up off the reactor thread."""
        import socket

        from twisted.internet import threads

        def lookup():
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            return list(dict.fromkeys(info[4][0] for info in infos))

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), lookup)

    def mount(self, root) -> list:
        """Mount /derp etc. on ``root``; return the services to start (map refresh, STUN, mesh links)."""
        from twisted.application.internet import UDPServer

        from headscale_tw.derp.mesh import mesh_peer_endpoint, mesh_peer_service
        from headscale_tw.derp.resource import BootstrapDNSResource, derp_map_hostnames, mount_derp_resources
        from headscale_tw.derp.stun import STUNServerProtocol, parse_listen_addr

        services: list[service.Service] = [self.provider]
        if self.server is not None:
            bootstrap = BootstrapDNSResource(lambda: derp_map_hostnames(self.provider.derp_map), self._resolve)
            mount_derp_resources(root, self.server, bootstrap)
            stun_addr = self.config.derp.server.stun_listen_addr
            if stun_addr:
                host, port = parse_listen_addr(stun_addr)
                self.stun = STUNServerProtocol()
                if self.config.worker_index is not None:  # shared with the other workers (workers.py)
                    from headscale_tw.workers import SharedDatagramPort

                    services.append(SharedDatagramPort(self.reactor, stun_addr, self.stun))
                else:
                    services.append(UDPServer(port, self.stun, interface=host, reactor=self.reactor))
            if self.config.worker_index is not None:
                from headscale_tw.workers import local_mesh_services

                services.extend(local_mesh_services(self.config, self.server, self.reactor))
            for url in self.config.derp.server.mesh_peers:
                endpoint, host_header, path = mesh_peer_endpoint(self.reactor, url)
                services.append(mesh_peer_service(self.server, endpoint, host_header, self.reactor, path=path))
        return services


def _build_derp(config: Config, reactor, lookup=None) -> _DERPParts | None:
    if not config.derp.server.enabled and not config.derp.urls and not config.derp.paths:
        return None
    return _DERPParts(config, reactor, lookup)


def build_service(config: Config, reactor, log_observer: ILogObserver | None = None,
                  raise_early_failure: bool = False, twistd_options=None,
                  status_pipe: int | None = None) -> HeadscaleService:
    """Build the whole server as one service (the keywords: see :class:`HeadscaleService`)."""
    return HeadscaleService(config, reactor, log_observer=log_observer, raise_early_failure=raise_early_failure,
                            twistd_options=twistd_options, status_pipe=status_pipe)
