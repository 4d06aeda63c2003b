# -*- test-case-name: tests.certs.test_pebble -*-
"""
A real ACME server for tests: Debian's ``pebble`` with ``pebble-challtestsrv`` as its DNS.

:class:`PebbleACME` starts both on loopback ports in a scratch folder and stops
them by PID. Pebble needs a listener certificate (Debian ships none): the
project's throwaway CA mints one, and :attr:`PebbleACME.ca_pem` is the file an
ACME client verifies pebble's directory with. Every name resolves to
127.0.0.1 through challtestsrv, so pebble's validation reaches the server under
test on :attr:`PebbleACME.http_port` (HTTP-01) or :attr:`PebbleACME.tls_port`
(TLS-ALPN-01). ``PEBBLE_VA_NOSLEEP`` and ``PEBBLE_WFE_NONCEREJECT=0`` make
validation immediate and nonces always accepted. :meth:`PebbleACME.issuer_pem`
is the root that pebble's certificates chain to (it changes at each start).

With ``dns_server`` (``host:port`` of a real authoritative server, such as
:class:`~headscale_tw.testing.knot.KnotDNS`) pebble resolves every name there
instead, and challtestsrv is not started: DNS-01 validations then read the
TXT records that server was updated with (its zone should also hold ``A``
records for any name validated by HTTP-01 or TLS-ALPN-01).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from typing import Any

from headscale_tw.testing.realclient._process import ManagedProcess
from headscale_tw.testing.realclient.tlsca import make_test_ca

#: Run inside a namespace: fetch a URL trusting one CA file; exit 0 on HTTP 200.
_PROBE = (
    "import ssl,sys,urllib.request\n"
    "ctx=ssl.create_default_context(cafile=sys.argv[2])\n"
    "r=urllib.request.urlopen(sys.argv[1],timeout=5,context=ctx)\n"
    "sys.stdout.buffer.write(r.read())\n"
)

__all__ = ["PebbleACME", "PebbleMissing", "free_tcp_port"]

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


class PebbleMissing(RuntimeError):
    """pebble is not installed (the test bootstrap installs Debian's ``pebble``)."""


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PebbleACME:
    """
    pebble and its DNS in ``directory``; :meth:`start`, then :meth:`stop` (always).

    :param http_port: where pebble sends HTTP-01 validations (the server's ACME listener).
    :param tls_port: where pebble sends TLS-ALPN-01 validations (the server's TLS listener).
    :param namespace: a real-client harness
        :class:`~headscale_tw.testing.realclient.namespace.Namespace` to run in
        (everything an official client talks to runs in its namespace); ``None``
        runs on this machine's loopback.
    :param dns_server: ``host:port`` of the DNS server pebble resolves with;
        ``None`` starts challtestsrv for that (every name is 127.0.0.1).
    :param cert_validity: seconds each issued certificate is valid (pebble's
        ``certificateValidityPeriod``; ``None``: pebble's default of five years),
        so that a test can see a renewal.
    """

    def __init__(self, directory: str, http_port: int, tls_port: int, namespace: Any = None,
                 dns_server: str | None = None, cert_validity: int | None = None) -> None:
        for binary in (PEBBLE, CHALLTESTSRV):
            if not os.access(binary, os.X_OK):
                raise PebbleMissing(f"{binary} is missing; install Debian's pebble package "
                                    "(tools/ensure-test-services.sh does)")
        self.directory = directory
        self.http_port = http_port
        self.tls_port = tls_port
        self.acme_port = free_tcp_port()
        self.management_port = free_tcp_port()
        self.dns_port = _free_udp_port()
        self.dns_management_port = free_tcp_port()
        self.namespace = namespace
        self.dns_server = dns_server
        self.cert_validity = cert_validity
        self.processes: list[ManagedProcess] = []
        ca = make_test_ca(os.path.join(directory, "listener"), ips=("127.0.0.1",), dns_names=("localhost",))
        self.ca_pem = ca.ca_pem
        self._listener = ca

    @property
    def directory_url(self) -> str:
        """The ACME directory URL (``acme_url``)."""
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def start(self, timeout: float = 30.0) -> PebbleACME:
        """Start challtestsrv (unless ``dns_server`` is given) and pebble; return once the directory answers."""
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": self._listener.cert_pem,
            "privateKey": self._listener.key_pem,
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        if self.cert_validity is not None:
            config["pebble"]["certificateValidityPeriod"] = self.cert_validity
        config_path = os.path.join(self.directory, "pebble-config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        challtestsrv = [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                        "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                        "-management", f"127.0.0.1:{self.dns_management_port}"]
        dns_server = self.dns_server or f"127.0.0.1:{self.dns_port}"
        pebble = [PEBBLE, "-config", config_path, "-dnsserver", dns_server]
        if self.dns_server is None:
            self._spawn("pebble-challtestsrv", challtestsrv)
        self._spawn("pebble", pebble)
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if not process.running():
                    self.stop()
                    raise RuntimeError(f"pebble exited with {process.returncode}: {self.log_tail()}")
            if self._fetch(self.directory_url) is not None:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pebble did not answer within {timeout} s: {self.log_tail()}")
            time.sleep(0.1)

    def _spawn(self, name: str, argv: list[str]) -> None:
        extra = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        log_path = os.path.join(self.directory, f"{name}.log")
        if self.namespace is not None:
            self.processes.append(self.namespace.spawn(name, argv, env=self.namespace.env(extra),
                                                       log_path=log_path, cwd=self.directory))
            return
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, **extra), cwd=self.directory)
        self.processes.append(ManagedProcess(name, argv, popen, log_path))

    def _fetch(self, url: str) -> bytes | None:
        """The body of ``url`` fetched trusting pebble's listener CA, or ``None`` when that fails."""
        if self.namespace is not None:
            done = self.namespace.run([sys.executable, "-I", "-c", _PROBE, url, self.ca_pem], timeout=20)
            return done.stdout.encode("latin-1") if done.returncode == 0 else None
        context = ssl.create_default_context(cafile=self.ca_pem)
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                return r.read()
        except OSError:
            return None

    def issuer_pem(self) -> bytes:
        """The root certificate pebble's issued certificates chain to."""
        body = self._fetch(f"https://127.0.0.1:{self.management_port}/roots/0")
        if body is None:
            raise RuntimeError(f"pebble's root could not be fetched: {self.log_tail()}")
        return body

    def log_tail(self, lines: int = 20) -> str:
        """The last lines pebble and challtestsrv printed."""
        tails = []
        for name in ("pebble-challtestsrv", "pebble"):
            try:
                with open(os.path.join(self.directory, f"{name}.log"), errors="replace") as f:
                    tails.append("".join(f.readlines()[-lines:]))
            except OSError:
                pass
        return "".join(tails)

    def stop(self) -> None:
        """Stop the processes this object started, by PID."""
        for process in self.processes:
            process.stop()
        self.processes.clear()

    def remove(self) -> None:
        """Stop, then delete the scratch folder."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
