# -*- test-case-name: tests.realclient.test_namespace -*-
"""
A private network namespace whose only interface is ``lo``.

``Namespace.start()`` launches a holder, ``unshare --net -- python -c HOLDER``,
which keeps the namespace alive and exits by itself when its stdin closes (so
it cannot outlive the test process), then brings ``lo`` up and puts
``192.0.2.1/32`` on it (without a non-loopback address the client's WireGuard
reports "network down").

Safety: the harness keeps a file descriptor on the namespace (so its identity
cannot change under us, even if the holder's PID were reused), checks that it
is not our own namespace, and before every command it runs inside, checks that
``lo`` is the only interface; otherwise it raises :class:`UnsafeNamespace` and
starts nothing. Commands enter it with ``nsenter --net=/proc/self/fd/N``, and
``nsenter`` execs the program in place, so the PID we hold is the program's.

Unix sockets on the filesystem are not tied to a network namespace: the test
process can talk to ``tailscaled --socket`` directly. TCP on the namespace's
127.0.0.1 is not reachable from outside: use :meth:`Namespace.run` or
:meth:`Namespace.http_get`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from headscale_tw.testing.realclient._process import (
    HarnessError,
    ManagedProcess,
    set_parent_death_signal,
    tail_file,
    wait_for,
)

__all__ = [
    "LOOPBACK_ADDRESS",
    "HttpResult",
    "Namespace",
    "UnsafeNamespace",
    "check_only_loopback",
    "require_tools",
]

LOOPBACK_ADDRESS = "192.0.2.1"
"""A documentation-range address put on ``lo`` inside every namespace."""

_TOOLS = ("unshare", "nsenter", "ip")

_HOLDER = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"

# Runs inside the namespace: one GET, result as JSON on stdout; never raises.
_HTTP_GET = r"""
import base64, json, sys, urllib.request, urllib.error
url, timeout = sys.argv[1], float(sys.argv[2])
import ssl
# Health probes of the server under test: its certificate comes from a throwaway CA.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                     urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
try:
    with opener.open(url, timeout=timeout) as r:
        out = {"status": r.status, "body": base64.b64encode(r.read()).decode()}
except urllib.error.HTTPError as e:
    out = {"status": e.code, "body": base64.b64encode(e.read()).decode()}
except Exception as e:
    out = {"error": "%s: %s" % (type(e).__name__, e)}
sys.stdout.write(json.dumps(out))
"""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


class UnsafeNamespace(HarnessError):
    """The namespace is not a private, loopback-only one; nothing will be started in it."""


@dataclass(frozen=True)
class HttpResult:
    """The outcome of :meth:`Namespace.http_get`: a status and body, or an error text."""

    status: int | None
    body: bytes
    error: str | None = None


def check_only_loopback(interfaces: Iterable[str]) -> None:
    """Raise :class:`UnsafeNamespace` unless ``interfaces`` is exactly ``["lo"]``."""
    names = list(interfaces)
    others = [n for n in names if n != "lo"]
    if others:
        raise UnsafeNamespace(
            f"refusing to run the Tailscale client: the namespace has interfaces {others} besides lo"
        )
    if names != ["lo"]:
        raise UnsafeNamespace(f"unexpected interface list in the namespace: {names}")


def require_tools(which=shutil.which, euid: int | None = None) -> None:
    """Raise :class:`HarnessError` unless we are root and unshare, nsenter and ip exist."""
    problems = []
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        problems.append(f"must run as root (euid {euid}) to create network namespaces")
    missing = [tool for tool in _TOOLS if which(tool) is None]
    if missing:
        problems.append(f"missing tools {missing} (Debian: apt-get install util-linux iproute2)")
    if problems:
        raise HarnessError(
            "the real-client harness cannot run: " + "; ".join(problems)
            + " -- see tools/ensure-test-services.sh"
        )


class Namespace:
    """A private network namespace, and every process the harness starts in it."""

    def __init__(self, log_dir: str | None = None, runtime_parent: str | None = None) -> None:
        """``log_dir`` receives process logs (default: the runtime folder).

        The runtime folder is a short path (unix socket paths must stay under 108
        bytes) made with :func:`tempfile.mkdtemp` under ``runtime_parent``; it is
        removed by :meth:`close` unless ``HEADSCALE_TW_KEEP_RUNTIME`` is set.
        """
        self._requested_log_dir = log_dir
        self._runtime_parent = runtime_parent
        self.runtime_dir: str | None = None
        self.log_dir: str | None = None
        self.holder: ManagedProcess | None = None
        self._ns_fd: int | None = None
        self._ns_id: tuple[int, int] | None = None
        self._processes: list[ManagedProcess] = []
        self._next_port = 41641
        self._closed = False

    # -- lifecycle -------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Namespace:
        """Create the namespace, configure ``lo`` and verify it is loopback-only."""
        require_tools()
        self.runtime_dir = tempfile.mkdtemp(prefix="hstw-", dir=self._runtime_parent)
        self.log_dir = self._requested_log_dir or self.runtime_dir
        os.makedirs(self.log_dir, exist_ok=True)
        log_path = os.path.join(self.log_dir, "netns-holder.log")
        holder_argv = ["unshare", "--net", "--", sys.executable, "-c", _HOLDER]
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                holder_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=self._base_env(), preexec_fn=set_parent_death_signal, close_fds=True,
            )
        self.holder = ManagedProcess("netns holder", holder_argv, popen, log_path)
        try:
            self._await_holder(timeout)
            fd = os.open(f"/proc/{popen.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._ns_fd = fd
            st = os.fstat(fd)
            self._ns_id = (st.st_dev, st.st_ino)
            own = os.stat("/proc/self/ns/net")
            if (own.st_dev, own.st_ino) == self._ns_id:
                raise UnsafeNamespace("the holder is in our own network namespace; unshare did not isolate it")
            self._checked_run(["ip", "link", "set", "lo", "up"], timeout)
            self._checked_run(["ip", "addr", "add", f"{LOOPBACK_ADDRESS}/32", "dev", "lo"], timeout)
            self.assert_safe()
        except BaseException:
            self.close()
            raise
        return self

    def _await_holder(self, timeout: float) -> None:
        holder = self.holder
        assert holder is not None
        stdout = holder.popen.stdout
        assert stdout is not None
        os.set_blocking(stdout.fileno(), False)
        seen = bytearray()

        def ready() -> bool:
            chunk = stdout.read()
            if chunk:
                seen.extend(chunk)
            if b"ready\n" in seen:
                return True
            holder.check_running()
            return False

        wait_for(ready, timeout, "the namespace holder to start", details=holder.describe)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every process started here (newest first), then the holder; remove the runtime folder."""
        if self._closed:
            return
        self._closed = True
        failures = []
        for proc in reversed(self._processes):
            try:
                proc.stop(timeout)
            except Exception as e:  # keep stopping the others
                failures.append(f"{proc.name} (pid {proc.pid}): {e}")
        if self.holder is not None:
            popen = self.holder.popen
            if popen.stdin is not None:
                popen.stdin.close()  # the holder exits when its stdin closes
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.holder.stop(timeout)
            if popen.stdout is not None:
                popen.stdout.close()
        if self._ns_id is not None:
            try:
                wait_for(lambda: not self.pids_inside(), timeout, "the namespace to empty", interval=0.05)
            except HarnessError:
                leftovers = ", ".join(f"{pid} ({_cmdline(pid)})" for pid in self.pids_inside())
                failures.append(f"processes we did not start directly are still in the namespace: {leftovers}")
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None
        if self.runtime_dir and not os.environ.get("HEADSCALE_TW_KEEP_RUNTIME"):
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if failures:
            raise HarnessError("namespace cleanup: " + "; ".join(failures))

    def __enter__(self) -> Namespace:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- facts -----------------------------------------------------------

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every long-running process started in this namespace (holder excluded)."""
        return list(self._processes)

    @property
    def identity(self) -> tuple[int, int]:
        """(device, inode) of the namespace, as seen in ``/proc/PID/ns/net``."""
        if self._ns_id is None:
            raise HarnessError("the namespace has not been started")
        return self._ns_id

    def pids_inside(self) -> list[int]:
        """PIDs of every process currently in this namespace (scans ``/proc``)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == self.identity:
                found.append(int(entry))
        return sorted(found)

    def interfaces(self) -> list[str]:
        """Names of the interfaces inside the namespace, from ``ip -j link show``."""
        proc = self._checked_run(["ip", "-j", "link", "show"], 10.0)
        try:
            return [link["ifname"] for link in json.loads(proc.stdout)]
        except (ValueError, KeyError, TypeError) as e:
            raise HarnessError(f"cannot parse `ip -j link show` output ({e}): {proc.stdout!r}")

    def assert_safe(self) -> None:
        """Raise :class:`UnsafeNamespace` unless the namespace is ours, alive and loopback-only."""
        if self._closed or self._ns_fd is None:
            raise UnsafeNamespace("the namespace is not running")
        check_only_loopback(self.interfaces())

    def _running_fd(self) -> int:
        if self._ns_fd is None:
            raise UnsafeNamespace("the namespace is not running")
        return self._ns_fd

    def allocate_port(self) -> int:
        """A port number not yet handed out in this namespace (for ``tailscaled --port``)."""
        port = self._next_port
        self._next_port += 1
        return port

    # -- running things inside -------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
               "LANG": "C.UTF-8"}
        if self.runtime_dir:
            env["HOME"] = self.runtime_dir
        return env

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        if self._ns_fd is None:
            raise UnsafeNamespace("the namespace is not running")
        # Inside nsenter, /proc/self/fd/N is nsenter's copy of our namespace descriptor.
        return ["nsenter", f"--net=/proc/self/fd/{self._ns_fd}", "--", *argv]

    def _checked_run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        proc = self._run_raw(argv, None, timeout, None, None)
        if proc.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed in the namespace (exit {proc.returncode}): {proc.stderr}")
        return proc

    def _run_raw(self, argv, env, timeout, input, cwd) -> subprocess.CompletedProcess:
        cmd = self._wrap(argv)
        try:
            return subprocess.run(
                cmd, env=self._base_env() if env is None else dict(env), input=input, cwd=cwd,
                capture_output=True, text=True, timeout=timeout, pass_fds=(self._running_fd(),),
                preexec_fn=set_parent_death_signal,
            )
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"{' '.join(argv)} did not finish within {timeout:g}s in the namespace; "
                               f"output so far: {e.stdout!r} {e.stderr!r}")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A minimal environment for processes in the namespace, plus ``extra``."""
        env = self._base_env()
        env.update(extra or {})
        return env

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30.0,
            input: str | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run a short command inside the namespace and return its ``CompletedProcess`` (text)."""
        self.assert_safe()
        return self._run_raw(argv, env, timeout, input, cwd)

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              log_path: str | None = None, cwd: str | None = None) -> ManagedProcess:
        """Start a long-running process inside the namespace; it is stopped by :meth:`close`."""
        self.assert_safe()
        if log_path is None:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            assert self.log_dir is not None  # set by start(); assert_safe() checked it ran
            log_path = os.path.join(self.log_dir, f"{safe}.log")
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                self._wrap(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._base_env() if env is None else dict(env), cwd=cwd,
                pass_fds=(self._running_fd(),), preexec_fn=set_parent_death_signal,
            )
        proc = ManagedProcess(name, argv, popen, log_path)
        self._processes.append(proc)
        return proc

    def http_get(self, url: str, timeout: float = 2.0) -> HttpResult:
        """GET ``url`` from inside the namespace (no proxies); connection errors come back in ``error``."""
        proc = self.run([sys.executable, "-I", "-c", _HTTP_GET, url, str(timeout)], timeout=timeout + 10)
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            return HttpResult(None, b"", f"helper failed (exit {proc.returncode}): {proc.stderr[-500:]}")
        if "error" in out:
            return HttpResult(None, b"", out["error"])
        return HttpResult(out["status"], base64.b64decode(out["body"]))

    def describe(self) -> str:
        """Log tails of every process started here, for assertion messages."""
        parts = [p.describe() for p in self._processes]
        if self.holder is not None:
            parts.append(f"--- netns holder log:\n{tail_file(self.holder.log_path, 10)}")
        return "\n".join(parts)
