"""Tests for headscale_tw.service."""

import os

from twisted.internet import defer
from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest

from headscale_tw.config.model import Config
from headscale_tw.service import Components, HeadscaleService, listen_endpoint


class ListenEndpointTests(unittest.TestCase):
    """Headscale host:port strings become Twisted endpoint descriptions."""

    def test_ipv4(self):
        """An IPv4 host becomes the interface of a TCP endpoint."""
        self.assertEqual(listen_endpoint("127.0.0.1:8080"), "tcp:8080:interface=127.0.0.1")

    def test_ipv6_escaped(self):
        """Colons of a bracketed IPv6 host are escaped for the endpoint parser."""
        self.assertEqual(listen_endpoint("[::1]:8080"), "tcp:8080:interface=\\:\\:1")

    def test_any(self):
        """0.0.0.0 listens on every interface."""
        self.assertEqual(listen_endpoint("0.0.0.0:80"), "tcp:80")

    def test_tls(self):
        """With a certificate and key the endpoint is ssl: with both paths."""
        self.assertEqual(
            listen_endpoint("127.0.0.1:8443", ("/c.pem", "/k.pem")),
            "ssl:8443:interface=127.0.0.1:certKey=/c.pem:privateKey=/k.pem",
        )


    def test_backlog(self):
        """A backlog reaches the listening port (Twisted's default of 50 is too short for reconnect storms)."""
        from twisted.internet import endpoints
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactor

        description = listen_endpoint("127.0.0.1:8080", backlog=4096)
        self.assertEqual(description, "tcp:8080:interface=127.0.0.1:backlog=4096")
        reactor = MemoryReactor()
        endpoints.serverFromString(reactor, description).listen(Factory())
        self.assertEqual(reactor.tcpServers[0][2], 4096)


class ControlSiteTests(unittest.TestCase):
    """The control listener access-logs control requests at debug and admin API requests at info."""

    def _events(self, path: bytes) -> list:
        from twisted.internet.task import Clock
        from twisted.logger import globalLogPublisher
        from twisted.web import resource as web_resource
        from twisted.web.test.requesthelper import DummyRequest

        from headscale_tw.counters import HTTPCounters
        from headscale_tw.service import ControlSite
        from headscale_tw.web.access_log import access_logs

        site = ControlSite(web_resource.Resource(), access_logs(HTTPCounters(), Clock().seconds)["control"])
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        request = DummyRequest(path.split(b"?")[0].strip(b"/").split(b"/"))
        request.method, request.uri, request.path, request.code = b"GET", path, path.split(b"?")[0], 200
        request.sentLength = 0
        site.log(request)
        return [e for e in events if e.get("log_namespace") == "headscale_tw.web.access_log.AccessLog"]

    def test_control_request_at_debug(self):
        """A control request (``/key``) is logged at debug, so an info log stays quiet in a registration storm."""
        from twisted.logger import LogLevel

        (event,) = self._events(b"/key?v=133")
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(event["path"], "/key?v=133")

    def test_api_request_at_info(self):
        """An admin API request is logged at info, its route template recorded."""
        from twisted.logger import LogLevel

        (event,) = self._events(b"/api/v1/node/7")
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["route"], "/api/v1/node/{node_id}")


class GarbageCollectorTests(unittest.TestCase):
    """tune_gc freezes what start-up loaded and raises the young-generation threshold."""

    def test_tune_gc(self):
        """After tune_gc the start-up objects are frozen and the thresholds are GC_THRESHOLDS."""
        import gc

        from headscale_tw.service import GC_THRESHOLDS, tune_gc

        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        loaded = [[i] for i in range(1000)]  # tracked containers, like the loaded node state
        frozen = gc.get_freeze_count()
        tune_gc()
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
        self.assertGreaterEqual(gc.get_freeze_count() - frozen, len(loaded))


class _Recorder:
    def __init__(self, order, name):
        self.order, self.name, self.running, self.parent = order, name, False, None

    def setServiceParent(self, parent):
        parent.addService(self)

    def disownServiceParent(self):
        pass

    def privilegedStartService(self):
        pass

    def startService(self):
        self.running = True
        self.order.append(("start", self.name))

    def stopService(self):
        self.running = False
        self.order.append(("stop", self.name))


class HeadscaleServiceTests(unittest.TestCase):
    """Start and stop order of the service tree."""

    def test_components_after_database_and_close_last(self):
        """Children start only once the async setup finished; the database closes after they stop."""
        order = []
        opened = defer.Deferred()

        async def components(config, reactor):
            await opened
            order.append(("open", "db"))

            async def close():
                order.append(("close", "db"))

            return Components([_Recorder(order, "http"), _Recorder(order, "metrics")], close=close)

        svc = HeadscaleService(Config(), MemoryReactor(), components=components)
        svc.startService()
        self.assertEqual(order, [])
        opened.callback(None)
        self.assertEqual(order, [("open", "db"), ("start", "http"), ("start", "metrics")])
        d = svc.stopService()
        self.successResultOf(d)
        self.assertEqual(order[3:], [("stop", "metrics"), ("stop", "http"), ("close", "db")])

    def test_start_failure_logged(self):
        """A failing setup is logged as critical and no child starts."""
        async def components(config, reactor):
            raise RuntimeError("database is locked")

        svc = HeadscaleService(Config(), MemoryReactor(), components=components)
        svc.startService()
        self.assertEqual(list(svc), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_start_failure_one_line_exit_status(self):
        """A failure is one critical line naming it, the traceback is a debug event, and exit_status is 1."""
        from twisted.logger import LogLevel, globalLogPublisher

        from headscale_tw.preflight import StartupError

        async def components(config, reactor):
            raise StartupError("policy.path ./p.hujson: No such file or directory")

        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        svc = HeadscaleService(Config(), MemoryReactor(), components=components)
        self.assertEqual(svc.exit_status, 0)
        svc.startService()
        self.assertEqual(svc.exit_status, 1)
        mine = [e for e in events if e.get("log_namespace", "").startswith("headscale_tw.service")]
        critical = [e for e in mine if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertEqual(critical[0]["error"], "policy.path ./p.hujson: No such file or directory")
        self.assertTrue(all("log_failure" not in e for e in mine if e["log_level"] != LogLevel.debug))
        self.assertEqual(len([e for e in mine if "log_failure" in e]), 1)
        self.flushLoggedErrors(StartupError)

    def test_raise_early_failure(self):
        """With raise_early_failure (a daemonising twistd) a failure found inside startService is raised from it;
        one found later is only recorded."""
        from headscale_tw.preflight import StartupError

        async def early(config, reactor):
            raise StartupError("tls_cert_path ./c.pem: No such file or directory")

        svc = HeadscaleService(Config(), MemoryReactor(), components=early, raise_early_failure=True)
        with self.assertRaises(StartupError) as e:
            svc.startService()
        self.assertEqual(str(e.exception), "tls_cert_path ./c.pem: No such file or directory")

        later = defer.Deferred()

        async def late(config, reactor):
            await later
            raise StartupError("database (sqlite x): is a directory")

        svc = HeadscaleService(Config(), MemoryReactor(), components=late, raise_early_failure=True)
        svc.startService()
        later.callback(None)
        self.assertEqual((svc.exit_status, svc.failure_line), (1, "database (sqlite x): is a directory"))
        self.flushLoggedErrors(StartupError)

    def test_failure_before_reactor_runs_stops_it(self):
        """A failure while the reactor is not yet running (twistd starts services first) stops it once it runs."""
        from twisted.internet.testing import MemoryReactorClock

        async def components(config, reactor):
            raise OSError(13, "Permission denied")

        reactor = MemoryReactorClock()
        stops: list = []
        reactor.stop = lambda: stops.append(True)
        svc = HeadscaleService(Config(), reactor, components=components)
        svc.startService()
        self.assertEqual(stops, [])
        reactor.running = True
        for hook, args, kwargs in reactor.whenRunningHooks:
            hook(*args, **kwargs)
        self.assertEqual(stops, [True])
        self.flushLoggedErrors(OSError)


class PostgresWiringTests(unittest.TestCase):
    """With PostgreSQL the builder wires the shared state at construction (real database, real reactor)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_cluster_pieces_built_and_wired(self):
        """One lease keeper per lifecycle job starts first, the registry after the listeners, and the plane was
        built with its presence (the notifier's hook), a ranked election and its ClusterSync."""
        from dataclasses import replace

        from twisted.internet import reactor

        from headscale_tw.control.instances import InstanceRegistry
        from headscale_tw.control.lease import LeaseKeeper
        from headscale_tw.control.lifecycle import LIFECYCLE_LEASES
        from headscale_tw.service import build_components
        from headscale_tw.testing.db import create_postgres_database
        from tests.cluster._cluster import wait_until

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        config = Config(server_url="http://127.0.0.1:8080", listen_addr="127.0.0.1:0", unix_socket="",
                        database=create_postgres_database(self))
        config = replace(config, noise=replace(config.noise, private_key_path=os.path.join(folder, "noise.key")))
        parts = yield defer.Deferred.fromCoroutine(build_components(config, reactor))
        try:
            resynced = []
            parts.plane.cluster.observers.append(resynced.append)
            yield wait_until(parts.plane.cluster, lambda: None in resynced)  # the feed listens: stop it cleanly
            keepers = parts.services[:len(LIFECYCLE_LEASES)]
            self.assertEqual(sorted(k.name for k in keepers if isinstance(k, LeaseKeeper)), sorted(LIFECYCLE_LEASES))
            registry = parts.services[-1]
            self.assertIsInstance(registry, InstanceRegistry)
            plane = parts.plane
            self.assertIs(plane.notifier.presence, plane.presence)
            self.assertEqual(plane.presence.instance_id, registry.instance_id)
            self.assertIsNotNone(plane.policy.election.rank)
            self.assertIsNotNone(plane.cluster)
            self.assertEqual(registry.advertised.server_url, "http://127.0.0.1:8080")
        finally:
            yield defer.Deferred.fromCoroutine(parts.close())


class DaemonStatusTests(unittest.TestCase):
    """A daemonising twistd's waiting parent hears how the start went only once it has finished."""

    def status_pipe(self):
        """A pipe standing in for twistd's: (its read end, twistd's options holding its write end)."""
        import os

        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        return read_end, {"statusPipe": write_end, "nodaemon": False}

    def read_all(self, read_end) -> bytes:
        """Everything written to the pipe; the write end must be closed already (else this would block)."""
        import os

        chunks = []
        while True:
            chunk = os.read(read_end, 4096)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def service(self, components, options):
        svc = HeadscaleService(Config(), MemoryReactor(), components=components, raise_early_failure=True,
                               twistd_options=options)
        return svc

    def test_started_only_when_serving(self):
        """The pipe is taken from twistd's options at start, and b"0" is written only once the start finished."""
        import os

        later = defer.Deferred()

        async def components(config, reactor):
            await later
            return Components([])

        read_end, options = self.status_pipe()
        svc = self.service(components, options)
        svc.startService()
        self.assertNotIn("statusPipe", options)  # twistd itself will write nothing
        os.set_blocking(read_end, False)
        with self.assertRaises(BlockingIOError):
            os.read(read_end, 1)  # nothing yet: the parent keeps waiting
        os.set_blocking(read_end, True)
        later.callback(None)
        self.assertEqual(self.read_all(read_end), b"0")
        self.assertEqual(svc.exit_status, 0)

    def test_late_failure_reaches_parent(self):
        """A failure found after startService returned (a migration) is written as twistd writes one: b"1 <name>: <line>"."""
        from headscale_tw.preflight import StartupError

        later = defer.Deferred()

        async def components(config, reactor):
            await later
            raise StartupError("database (sqlite x): migration 04/01_instances.sqlite.sql failed")

        read_end, options = self.status_pipe()
        svc = self.service(components, options)
        svc.startService()
        later.callback(None)
        full = b"1 headscale_tw.preflight.StartupError: database (sqlite x): migration 04/01_instances.sqlite.sql failed"
        self.assertEqual(self.read_all(read_end), full[:100])  # twistd's parent reads at most 100 bytes
        self.assertEqual(svc.exit_status, 1)
        self.flushLoggedErrors(StartupError)

    def test_early_failure_reaches_parent_once(self):
        """A failure inside startService is raised (as before) and written to the pipe once, by the service."""
        from headscale_tw.preflight import StartupError

        async def components(config, reactor):
            raise StartupError("tls_cert_path ./c.pem: No such file or directory")

        read_end, options = self.status_pipe()
        svc = self.service(components, options)
        with self.assertRaises(StartupError):
            svc.startService()
        self.assertEqual(self.read_all(read_end),
                         b"1 headscale_tw.preflight.StartupError: tls_cert_path ./c.pem: No such file or directory")
        self.flushLoggedErrors(StartupError)

    def test_stop_before_start_finished(self):
        """Stopped while still starting (SIGTERM during a migration), the parent is told the start did not finish."""
        later = defer.Deferred()

        async def components(config, reactor):
            await later
            return Components([])

        read_end, options = self.status_pipe()
        svc = self.service(components, options)
        svc.startService()
        svc.stopService()
        self.assertEqual(self.read_all(read_end),
                         b"1 headscale_tw.preflight.StartupError: stopped before the start had finished")
        later.callback(None)  # finishing afterwards writes nothing more (the pipe is closed)

    def test_foreground_untouched(self):
        """Without a status pipe (twistd -n, headscale serve) nothing is claimed or written."""
        options = {"nodaemon": True}
        svc = self.service(lambda config, reactor: defer.succeed(Components([])), options)
        svc.startService()
        self.assertEqual(options, {"nodaemon": True})
