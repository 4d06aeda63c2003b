# -*- test-case-name: tests.oidc.test_provider_e2e -*-
"""
A real OpenID Provider for tests: ``tools/oidc-provider/provider.mjs`` (the npm
package ``oidc-provider``) as a child process, serving https with a throwaway CA.

``tools/ensure-test-services.d/30-oidc-provider.sh`` installs Node and the
pinned packages; this module finds them, writes the provider's JSON config
(client registrations and :data:`TEST_ACCOUNTS`), starts ``node provider.mjs``
on a loopback port the kernel picks, waits (bounded) for the ready file and the
discovery document, and stops the process by its PID.

Without a namespace the provider listens on the test process's own 127.0.0.1,
and the test talks to it directly (:meth:`OIDCProvider.https_get`, or treq with
:meth:`OIDCProvider.treq_client`). With a :class:`~headscale_tw.testing.realclient.namespace.Namespace`
it runs inside that private namespace (where the client and the server under
test live) and is reached from there.

When Node or the packages are missing the test FAILS with the reason, never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from headscale_tw.testing.realclient._process import (
    HarnessError,
    ManagedProcess,
    set_parent_death_signal,
    wait_for,
)
from headscale_tw.testing.realclient.fetch import cache_root
from headscale_tw.testing.realclient.namespace import Namespace
from headscale_tw.testing.realclient.tlsca import TestCA, make_test_ca

__all__ = [
    "TEST_ACCOUNTS",
    "ClientRegistration",
    "OIDCProvider",
    "TestAccount",
    "find_launcher",
    "find_node",
]

_SETUP_HINT = "run tools/ensure-test-services.sh (step 30-oidc-provider) to install it"


@dataclass(frozen=True)
class TestAccount:
    """A person the test provider knows; ``login`` is typed into its login form and is the ``sub``."""

    __test__ = False  # not a test class, despite the name

    login: str
    email: str
    email_verified: bool
    name: str
    given_name: str
    family_name: str
    picture: str
    groups: tuple[str, ...] = ()

    def claims(self) -> dict[str, Any]:
        """The claims the provider releases for this account (``sub`` is added by the provider)."""
        out = asdict(self)
        del out["login"]
        out["groups"] = list(self.groups)
        out["preferred_username"] = self.login
        return out


TEST_ACCOUNTS: tuple[TestAccount, ...] = (
    TestAccount("alice", "alice@example.com", True, "Alice Example", "Alice", "Example",
                "https://pictures.example.com/alice.png", ("engineering",)),
    TestAccount("bob", "bob@other.org", True, "Bob Other", "Bob", "Other",
                "https://pictures.example.com/bob.png", ("sales",)),
    TestAccount("carol", "carol@example.com", False, "Carol Unverified", "Carol", "Unverified",
                "https://pictures.example.com/carol.png", ("engineering",)),
)
"""alice (verified, engineering), bob (other domain, sales), carol (unverified email)."""


@dataclass(frozen=True)
class ClientRegistration:
    """One client registered at the provider (a confidential web client using the code flow)."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str = "client_secret_basic"

    def as_provider_config(self) -> dict[str, Any]:
        """The registration as ``oidc-provider`` takes it."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": list(self.redirect_uris),
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
        }


def _top_level() -> str:
    here = os.path.dirname(os.path.abspath(__file__))  # src/headscale_tw/testing
    return os.path.dirname(os.path.dirname(os.path.dirname(here)))


def find_launcher(environ: Mapping[str, str] | None = None) -> str:
    """The folder holding ``provider.mjs`` and its installed ``node_modules``."""
    environ = os.environ if environ is None else environ
    folder = environ.get("HEADSCALE_TW_OIDC_PROVIDER_DIR") or os.path.join(_top_level(), "tools", "oidc-provider")
    if not os.path.isfile(os.path.join(folder, "provider.mjs")):
        raise HarnessError(f"the OIDC provider launcher is missing: no provider.mjs in {folder}")
    if not os.path.isdir(os.path.join(folder, "node_modules", "oidc-provider")):
        raise HarnessError(f"the npm package oidc-provider is not installed in {folder}/node_modules; {_SETUP_HINT}")
    return folder


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run([node, "-e", "process.stdout.write(process.versions.node)"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        return int(out.stdout.split(".")[0])
    except ValueError:
        return None


def find_node(launcher: str, environ: Mapping[str, str] | None = None) -> str:
    """A Node binary recent enough for the pinned ``oidc-provider`` (see ``node-version``)."""
    environ = os.environ if environ is None else environ
    with open(os.path.join(launcher, "node-version")) as f:
        wanted = f.read().strip()
    major = int(wanted.split(".")[0])
    candidates = [environ.get("HEADSCALE_TW_NODE", ""),
                  str(cache_root(environ) / f"node-{wanted}" / "node_modules" / "node" / "bin" / "node"),
                  shutil.which("node") or ""]
    seen = []
    for node in candidates:
        if node and os.path.isfile(node) and os.access(node, os.X_OK):
            found = _node_major(node)
            seen.append(f"{node} (major {found})")
            if found is not None and found >= major:
                return node
    raise HarnessError(f"no Node >= {major} found (tried {seen or 'nothing'}); {_SETUP_HINT}")


class OIDCProvider:
    """``node provider.mjs`` with our clients and accounts; :meth:`start` waits for discovery.

    :param directory: where the CA, the config, the ready file and (without a namespace) the log go.
    :param clients: the client registrations.
    :param accounts: the people it knows.
    :param namespace: run inside this private network namespace instead of the test's own.
    :param id_token_ttl: seconds an ID token it issues stays valid.

    :meth:`restart` brings it back on the same port with the same CA (so the
    same issuer), but with new signing keys: a key rotation, as a real
    provider that lost its keys would do.
    """

    def __init__(self, directory: str, clients: Sequence[ClientRegistration],
                 accounts: Sequence[TestAccount] = TEST_ACCOUNTS, namespace: Namespace | None = None,
                 host: str = "127.0.0.1", id_token_ttl: int = 600) -> None:
        self.port = 0
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.clients = tuple(clients)
        self.accounts = tuple(accounts)
        self.namespace = namespace
        self.host = host
        self.id_token_ttl = id_token_ttl
        self.ca: TestCA | None = None
        self.issuer: str | None = None
        self.process: ManagedProcess | None = None
        self._ready_file = os.path.join(self.directory, "ready.json")
        self.log_path = os.path.join(self.directory, "oidc-provider.log")

    @property
    def ca_pem(self) -> str:
        """The throwaway CA that signed the provider's certificate (trust it, nothing else)."""
        if self.ca is None:
            raise HarnessError("the OIDC provider has not been started")
        return self.ca.ca_pem

    def _write_config(self) -> str:
        assert self.ca is not None
        config = {
            "host": self.host,
            "port": self.port,
            "tls": {"cert": self.ca.cert_pem, "key": self.ca.key_pem},
            "ready_file": self._ready_file,
            "clients": [c.as_provider_config() for c in self.clients],
            "accounts": {a.login: a.claims() for a in self.accounts},
            "id_token_ttl": self.id_token_ttl,
        }
        path = os.path.join(self.directory, "provider-config.json")
        with open(path + ".new", "w") as f:
            json.dump(config, f, indent=1)
        os.replace(path + ".new", path)  # the running provider re-reads the accounts at each sign-in
        return path

    def set_groups(self, login: str, groups: Sequence[str]) -> None:
        """From the next sign-in on, the account ``login`` is in ``groups`` (the provider keeps running)."""
        if login not in {a.login for a in self.accounts}:
            raise HarnessError(f"the test provider has no account {login!r}")
        self.accounts = tuple(replace(a, groups=tuple(groups)) if a.login == login else a for a in self.accounts)
        self._write_config()

    def start(self, timeout: float = 30.0) -> OIDCProvider:
        """Start the provider and wait until its discovery document answers (at most ``timeout`` s)."""
        if self.process is not None:
            raise HarnessError("the OIDC provider is already started")
        launcher = find_launcher()
        node = find_node(launcher)
        if self.ca is None:
            self.ca = make_test_ca(os.path.join(self.directory, "ca"))
        config_path = self._write_config()
        if os.path.exists(self._ready_file):
            os.unlink(self._ready_file)
        argv = [node, os.path.join(launcher, "provider.mjs"), config_path]
        if self.namespace is not None:
            self.process = self.namespace.spawn("oidc-provider", argv, log_path=self.log_path, cwd=launcher)
        else:
            with open(self.log_path, "ab") as log:
                popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=launcher, preexec_fn=set_parent_death_signal, close_fds=True)
            self.process = ManagedProcess("oidc-provider", argv, popen, self.log_path)
        process = self.process

        def ready() -> dict[str, Any] | None:
            process.check_running()
            try:
                with open(self._ready_file) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None

        try:
            info: dict[str, Any] = wait_for(ready, timeout, "the OIDC provider to listen", details=self.describe)
            self.issuer = str(info["issuer"])
            self.port = int(info["port"])
            wait_for(self._discovery_answers, timeout, f"{self.issuer}/.well-known/openid-configuration",
                     interval=0.1, details=self.describe)
        except BaseException:
            self.stop()
            raise
        return self

    def _discovery_answers(self) -> bool:
        assert self.process is not None
        self.process.check_running()
        url = f"{self.issuer}/.well-known/openid-configuration"
        if self.namespace is not None:
            return self.namespace.http_get(url, timeout=2.0).status == 200
        try:
            status, _ = self.https_get(url, timeout=2.0)
        except OSError:
            return False
        return status == 200

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only the provider's throwaway CA."""
        return ssl.create_default_context(cafile=self.ca_pem)

    def https_get(self, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``url`` from the test process, trusting only the throwaway CA; ``(status, body)``."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=self.ssl_context()))
        try:
            with opener.open(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def treq_client(self, reactor: Any, pool: Any = None, cookiejar: Any = None) -> Any:
        """A ``treq.client.HTTPClient`` for ``reactor`` that trusts only the throwaway CA.

        Pass a persistent ``HTTPConnectionPool`` and close it in the test's cleanup
        (``pool.closeCachedConnections()``) so no connection outlives the test.
        """
        from treq.client import HTTPClient
        from twisted.internet.ssl import Certificate
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        with open(self.ca_pem, "rb") as f:
            ca = Certificate.loadPEM(f.read())
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=ca), pool=pool)
        return HTTPClient(agent, cookiejar=cookiejar) if cookiejar is not None else HTTPClient(agent)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the provider by its PID (SIGTERM, SIGKILL after ``timeout``); return its exit status."""
        return self.process.stop(timeout) if self.process is not None else None

    def restart(self, timeout: float = 30.0) -> OIDCProvider:
        """Stop it and start it again on the same port with the same CA (new signing keys)."""
        self.stop()
        self.process = None
        return self.start(timeout)

    def describe(self, lines: int = 40) -> str:
        """State and log tail, for assertion messages."""
        return self.process.describe(lines) if self.process else "--- oidc-provider: not started"

