"""Tests for headscale_tw.tap and the twistd plugin."""

from twisted.application.service import IServiceMaker
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from headscale_tw import tap
from headscale_tw.exit_status import stop_reactor_after_failed_start
from headscale_tw.service import HeadscaleService


class PluginTests(unittest.TestCase):
    """The twistd plugin is discoverable and points at headscale_tw.tap."""

    def test_discoverable(self):
        """`twistd headscale` finds a service maker named headscale."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("headscale", makers)
        self.assertEqual(makers["headscale"].module, "headscale_tw.tap")


class OptionsTests(unittest.TestCase):
    """Command-line options of `twistd headscale`."""

    def test_missing_explicit_config(self):
        """An explicit config path that does not exist is a usage error naming it."""
        options = tap.Options()
        path = self.mktemp()
        with self.assertRaises(usage.UsageError) as e:
            options.parseOptions(["--config", path])
        self.assertIn(path, str(e.exception))

    def test_invalid_config_names_key(self):
        """A config with a bad value is a usage error naming the key, before anything is written."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('prefixes:\n  v4: "100.64.0.0/33"\n')
        options = tap.Options()
        with self.assertRaises(usage.UsageError) as e:
            options.parseOptions(["--config", path])
        self.assertIn("prefixes.v4", str(e.exception))

    def test_make_service(self):
        """makeService builds a HeadscaleService from the parsed options."""
        options = tap.Options()
        options.parseOptions([])
        svc = tap.makeService(options)
        self.assertIsInstance(svc, HeadscaleService)


class TacTests(unittest.TestCase):
    """etc/headscale.tac builds the same service as `twistd headscale`."""

    def test_tac_builds_same_service(self):
        """Loading the .tac with HEADSCALE_CONFIG set gives a HeadscaleService with that config."""
        import os

        from twisted.application import service

        import headscale_tw

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("listen_addr: 127.0.0.1:18123\nserver_url: http://127.0.0.1:18123\n")
        self.patch(os, "environ", {**os.environ, "HEADSCALE_CONFIG": path})
        import sys

        self.patch(sys, "excepthook", sys.excepthook)  # the .tac installs its exit-status hook
        top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(headscale_tw.__file__))))
        application = service.loadApplication(os.path.join(top, "etc", "headscale.tac"), "python")
        children = list(service.IServiceCollection(application))
        self.assertEqual(len(children), 1)
        self.assertIsInstance(children[0], HeadscaleService)
        self.assertEqual(children[0].config.listen_addr, "127.0.0.1:18123")

        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(tap.makeService(options).config, children[0].config)


class SupervisorImportTests(unittest.TestCase):
    """With ``workers`` > 1 the supervisor process does not import the server (docs/workers.md)."""

    def test_supervisor_does_not_import_server(self):
        """makeService for a ``workers: 2`` config builds the supervisor without importing headscale_tw.service."""
        import json
        import os
        import subprocess
        import sys

        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"workers": 2, "listen_addr": "127.0.0.1:18124", "server_url": "http://127.0.0.1:18124",
                       "database": {"type": "postgres", "postgres": {"host": "127.0.0.1", "name": "unused",
                                                                     "user": "unused"}}}, f)
        probe = ("import sys; from headscale_tw import tap; options = tap.Options(); "
                 "options.parseOptions(['--config', sys.argv[1]]); made = tap.makeService(options); "
                 "print(type(made).__name__, sorted(m for m in sys.modules if m.startswith("
                 "('headscale_tw.service', 'headscale_tw.web', 'headscale_tw.control', 'headscale_tw.derp'))))")
        done = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split(None, 1), ["SupervisorService", "[]\n"])


class _StoppingReactor:
    """A reactor after ``stop()`` and before its shutdown finished: ``running`` still, a second stop refused."""

    running = True

    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")


class StopAfterFailedStartTests(unittest.TestCase):
    """Stopping the reactor after a failed start (server and supervisor)."""

    def test_running_reactor_is_stopped(self):
        """A running reactor is stopped at once."""
        reactor = MemoryReactor()
        reactor.running = True
        stop_reactor_after_failed_start(reactor)
        self.assertTrue(reactor.hasStopped)

    def test_stop_already_under_way(self):
        """When SIGTERM already stopped the reactor during start-up, the failed start stops nothing more and
        raises nothing (it used to log a ``ReactorNotRunning`` traceback)."""
        reactor = _StoppingReactor()
        reactor.stop()  # what twistd's SIGTERM handler did
        stop_reactor_after_failed_start(reactor)
        self.assertEqual(reactor.stops, 2)

    def test_not_yet_running(self):
        """Before the reactor runs, it is stopped as soon as it does."""
        class NotRunning(Clock):
            running = False

            def __init__(self):
                super().__init__()
                self.when_running = []
                self.stopped = False

            def callWhenRunning(self, f, *args):
                self.when_running.append(f)

            def stop(self):
                self.stopped = True

        reactor = NotRunning()
        stop_reactor_after_failed_start(reactor)
        self.assertFalse(reactor.stopped)
        (hook,) = reactor.when_running
        hook()
        self.assertTrue(reactor.stopped)
