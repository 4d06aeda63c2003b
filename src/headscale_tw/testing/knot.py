# -*- test-case-name: tests.dnsprovider.test_rfc2136 -*-
"""
A real authoritative DNS server for tests: Debian's ``knotd`` (Knot DNS).

:class:`KnotDNS` writes a configuration and a zone file into a scratch folder,
starts ``knotd`` on a loopback port (UDP and TCP) with one zone and one TSIG
key that may send RFC 2136 updates to it, and stops it by PID. The zone has an
SOA, an NS and ``A`` records for the names given (so ``pebble`` may use it as
its only DNS); everything else is whatever the updates put there.

With a real-client harness namespace it runs inside it (everything an official
client and pebble talk to runs in the namespace).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from headscale_tw.testing.realclient._process import ManagedProcess

__all__ = ["KnotDNS", "KnotMissing", "KNOTD"]

KNOTD = "/usr/sbin/knotd"


class KnotMissing(RuntimeError):
    """``knotd`` is not installed (the test bootstrap installs Debian's ``knot``)."""


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 a moment ago."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


class KnotDNS:
    """
    ``knotd`` serving ``zone`` in ``directory``; :meth:`start`, then :meth:`stop` (always).

    :param zone: the zone (no trailing dot), e.g. the tailnet's base domain.
    :param addresses: names inside the zone (relative or absolute, no trailing
        dot) with the IPv4 address their ``A`` record holds.
    :param namespace: a real-client harness namespace to run in, or ``None``
        for this machine's loopback.
    :param port: the port to listen on; default: a free one (a namespace's
        loopback is empty, so any port does there).
    """

    tsig_key_name = "headscale-acme."
    tsig_algorithm = "hmac-sha256"

    def __init__(self, directory: str, zone: str, addresses: Mapping[str, str] | None = None,
                 namespace: Any = None, port: int | None = None) -> None:
        if not os.access(KNOTD, os.X_OK):
            raise KnotMissing(f"{KNOTD} is missing; install Debian's knot package "
                              "(tools/ensure-test-services.sh does)")
        self.directory = directory
        self.zone = zone.strip(".")
        self.addresses = dict(addresses or {})
        self.namespace = namespace
        self.port = port if port is not None else _free_port()
        self.tsig_secret = base64.b64encode(os.urandom(32)).decode("ascii")
        self.secret_path = os.path.join(directory, "tsig.secret")
        self.log_path = os.path.join(directory, "knotd.log")
        self.process: ManagedProcess | None = None
        # knotd's control socket must fit in a sockaddr_un (108 bytes): a short folder of its own.
        self.rundir = tempfile.mkdtemp(prefix="knot-")

    @property
    def server(self) -> str:
        """``host:port`` of the server (``dns.acme_provider.server``; pebble's ``-dnsserver``)."""
        return f"127.0.0.1:{self.port}"

    def _zone_text(self) -> str:
        origin = self.zone + "."
        lines = [f"$ORIGIN {origin}", "$TTL 60",
                 f"@ SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60",
                 f"@ NS ns.{origin}", "ns A 127.0.0.1"]
        for name, address in self.addresses.items():
            absolute = name.strip(".") + "."
            if not absolute.endswith("." + origin) and absolute != origin:
                raise ValueError(f"{name} is not inside {self.zone}")
            lines.append(f"{absolute} A {address}")
        return "\n".join(lines) + "\n"

    def _config_text(self) -> str:
        d = self.directory
        return (
            "server:\n"
            f"    rundir: \"{self.rundir}\"\n"
            f"    listen: 127.0.0.1@{self.port}\n"
            "log:\n"
            "  - target: stdout\n"
            "    any: info\n"
            "database:\n"
            f"    storage: \"{d}/db\"\n"
            "key:\n"
            f"  - id: {self.tsig_key_name}\n"
            f"    algorithm: {self.tsig_algorithm}\n"
            f"    secret: {self.tsig_secret}\n"
            "acl:\n"
            "  - id: acme-update\n"
            f"    key: {self.tsig_key_name}\n"
            "    action: update\n"
            "template:\n"
            "  - id: default\n"
            f"    storage: \"{d}/zones\"\n"
            "    file: \"%s.zone\"\n"
            "    zonefile-sync: -1\n"
            "    journal-content: changes\n"
            "zone:\n"
            f"  - domain: {self.zone}.\n"
            "    acl: acme-update\n"
        )

    def start(self, timeout: float = 20.0) -> KnotDNS:
        """Write the files, start ``knotd`` and return once the zone's SOA is served."""
        for sub in ("db", "zones"):
            os.makedirs(os.path.join(self.directory, sub), exist_ok=True)
        # "%s" in the template's file name is the zone without its final dot.
        with open(os.path.join(self.directory, "zones", f"{self.zone}.zone"), "w") as f:
            f.write(self._zone_text())
        config_path = os.path.join(self.directory, "knot.conf")
        with open(config_path, "w") as f:
            f.write(self._config_text())
        fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.tsig_secret + "\n")
        argv = [KNOTD, "-c", config_path]
        if self.namespace is not None:
            self.process = self.namespace.spawn("knotd", argv, env=self.namespace.env(),
                                                log_path=self.log_path, cwd=self.directory)
        else:
            with open(self.log_path, "ab") as log:
                popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.directory)
            self.process = ManagedProcess("knotd", argv, popen, self.log_path)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if not self.process.running():
                raise RuntimeError(f"knotd exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"knotd did not serve {self.zone} within {timeout} s: {self.log_tail()}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        """Whether the zone's SOA is served over UDP (queried with ``kdig`` where knotd runs)."""
        return bool(self.query(self.zone, "SOA"))

    def query(self, name: str, rtype: str) -> list[str]:
        """The answer section's data for ``name``/``rtype`` as ``kdig +short`` prints it."""
        argv = ["kdig", "+short", "+time=2", "+retry=0", "@127.0.0.1", "-p", str(self.port), name, rtype]
        if self.namespace is not None:
            done = self.namespace.run(argv, timeout=10)
            out = done.stdout if done.returncode == 0 else ""
        else:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out = done.stdout if done.returncode == 0 else ""
        return [line.strip() for line in out.splitlines() if line.strip()]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines ``knotd`` printed."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the ``knotd`` this object started, by PID."""
        process, self.process = self.process, None
        if process is not None:
            process.stop()
        shutil.rmtree(self.rundir, ignore_errors=True)
