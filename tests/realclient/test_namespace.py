"""Tests for headscale_tw.testing.realclient.namespace: the private loopback-only namespace."""

import os
import signal

from twisted.trial import unittest

from headscale_tw.testing.realclient._process import HarnessError, WaitTimeout, tail_file, wait_for
from headscale_tw.testing.realclient.namespace import (
    LOOPBACK_ADDRESS,
    Namespace,
    UnsafeNamespace,
    check_only_loopback,
    require_tools,
)


class CheckOnlyLoopbackTests(unittest.TestCase):
    """The pure interface-list check behind every refusal."""

    def test_lo_only_passes(self):
        """A namespace with just lo is accepted."""
        check_only_loopback(["lo"])

    def test_other_interface_refused(self):
        """Any interface besides lo is refused, and named in the error."""
        e = self.assertRaises(UnsafeNamespace, check_only_loopback, ["lo", "eth0"])
        self.assertIn("eth0", str(e))

    def test_empty_refused(self):
        """A list without lo is not a namespace we made, so it is refused."""
        self.assertRaises(UnsafeNamespace, check_only_loopback, [])

    def test_refusal_is_a_failure(self):
        """An unsafe namespace is an AssertionError, so trial reports a failure, not a skip."""
        self.assertTrue(issubclass(UnsafeNamespace, AssertionError))


class RequireToolsTests(unittest.TestCase):
    """The preflight check fails loudly instead of skipping."""

    def test_not_root(self):
        """A non-root user is told that root is needed."""
        e = self.assertRaises(HarnessError, require_tools, which=lambda t: "/bin/" + t, euid=1000)
        self.assertIn("root", str(e))

    def test_missing_tool(self):
        """A missing tool is named, with the package that provides it."""
        which = lambda t: None if t == "nsenter" else "/bin/" + t  # noqa: E731
        e = self.assertRaises(HarnessError, require_tools, which=which, euid=0)
        self.assertIn("nsenter", str(e))
        self.assertIn("util-linux", str(e))

    def test_this_machine(self):
        """The machine running the suite has what the harness needs."""
        require_tools()


class WaitForTests(unittest.TestCase):
    """Bounded polling."""

    def test_returns_value(self):
        """The first truthy value of the predicate is returned."""
        values = iter([None, 0, "yes"])
        self.assertEqual(wait_for(lambda: next(values), 5, "a value", interval=0), "yes")

    def test_timeout_names_what(self):
        """A wait that runs out names what it waited for and the details."""
        e = self.assertRaises(WaitTimeout, wait_for, lambda: False, 0, "godot", details=lambda: "log tail")
        self.assertIn("godot", str(e))
        self.assertIn("log tail", str(e))

    def test_tail_missing_file(self):
        """Tailing a missing log says so instead of raising."""
        self.assertIn("cannot read", tail_file(os.path.join(self.mktemp(), "nope")))


class NamespaceTests(unittest.TestCase):
    """A real namespace: isolation, refusal, and cleanup by PID."""

    def setUp(self):
        self.ns = Namespace(log_dir=os.path.abspath(self.mktemp()))
        self.ns.start()
        self.addCleanup(self.ns.close)

    def test_only_loopback(self):
        """The new namespace has exactly one interface, lo."""
        self.assertEqual(self.ns.interfaces(), ["lo"])

    def test_not_our_namespace(self):
        """The namespace differs from the test process's own."""
        own = os.stat("/proc/self/ns/net")
        self.assertNotEqual(self.ns.identity, (own.st_dev, own.st_ino))

    def test_loopback_addresses(self):
        """lo is up and carries 127.0.0.1 and the documentation address."""
        out = self.ns.run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        self.assertIn("127.0.0.1/8", out)
        self.assertIn(f"{LOOPBACK_ADDRESS}/32", out)
        self.assertIn("UP", self.ns.run(["ip", "link", "show", "lo"]).stdout)

    def test_refuses_when_extra_interface(self):
        """Once another interface exists in the namespace, nothing more is run in it."""
        self.ns.run(["ip", "link", "add", "hstw0", "type", "veth", "peer", "name", "hstw1"], timeout=10)
        e = self.assertRaises(UnsafeNamespace, self.ns.spawn, "sleeper", ["sleep", "60"])
        self.assertIn("hstw0", str(e))
        self.assertEqual(self.ns.processes, [])
        self.assertRaises(UnsafeNamespace, self.ns.run, ["true"])

    def test_spawned_process_inside(self):
        """A spawned process runs inside the namespace under the PID we hold."""
        proc = self.ns.spawn("sleeper", ["sleep", "60"])
        wait_for(lambda: proc.pid in self.ns.pids_inside(), 10, "the sleeper to enter the namespace")
        self.assertTrue(proc.running())

    def test_close_stops_everything(self):
        """close() stops every spawned process and the holder; nothing is left in the namespace."""
        procs = [self.ns.spawn(f"sleeper{i}", ["sleep", "60"]) for i in range(2)]
        wait_for(lambda: len(self.ns.pids_inside()) == 3, 10, "both sleepers to enter the namespace")
        self.ns.close()
        self.assertEqual([p.returncode for p in procs], [-signal.SIGTERM] * 2)
        self.assertEqual(self.ns.holder.returncode, 0)  # it exited by itself when its stdin closed
        self.assertEqual(self.ns.pids_inside(), [])
        self.assertFalse(os.path.exists(self.ns.runtime_dir))
        self.assertRaises(UnsafeNamespace, self.ns.spawn, "late", ["sleep", "1"])

    def test_stubborn_process_killed(self):
        """A process that ignores SIGTERM is killed after the timeout."""
        proc = self.ns.spawn("stubborn", ["sh", "-c", "trap '' TERM; echo armed; exec sleep 60"])
        wait_for(lambda: "armed" in proc.log_tail(), 10, "the trap to be set", details=proc.describe)
        self.assertEqual(proc.stop(timeout=0.5), -signal.SIGKILL)

    def test_leftover_process_reported(self):
        """A descendant left running in the namespace makes close() fail, naming it."""
        proc = self.ns.spawn("parent", ["sh", "-c", "sleep 2 & echo forked"])
        wait_for(lambda: not proc.running() and "forked" in proc.log_tail(), 10, "the parent to exit")
        e = self.assertRaises(HarnessError, self.ns.close, timeout=0.5)
        self.assertIn("sleep 2", str(e))

    def test_tcp_inside(self):
        """HTTP checks run from inside: a closed port gives an error, not an exception."""
        result = self.ns.http_get("http://127.0.0.1:1/")
        self.assertIsNone(result.status)
        self.assertIn("refused", result.error)

    def test_log_captured(self):
        """A spawned process's output lands in its log file."""
        proc = self.ns.spawn("echo", ["sh", "-c", "echo hello-from-ns"])
        wait_for(lambda: not proc.running(), 10, "echo to exit")
        self.assertIn("hello-from-ns", proc.log_tail())
        self.assertIn("hello-from-ns", self.ns.describe())
