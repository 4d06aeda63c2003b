"""
Tailscale SSH check mode against official clients (tailscaled 1.96.4).

In a private loopback-only namespace (docs/testing-real-client.md), node ``a``
(user alice) runs ``tailscale ssh root@<b> <command>`` to node ``b`` (tagged
``tag:server``, ``tailscale up --ssh``; userspace networking serves Tailscale
SSH). The policy's ``ssh`` rule is ``"action": "check"``: ``b``'s tailscaled
fetches ``/machine/ssh/action/...`` over its Noise channel and holds the
connection until the check is settled, with ``headscale auth approve|reject``
as the approver, or, with ``oidc.*`` set, the person signing in again at the
real test provider (``oidc-provider``, in the same namespace). The ``tailscale
ssh`` wrapper runs Debian's ``ssh`` client
(``tools/ensure-test-services.d/60-openssh-client.sh`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.oidc import start_oidc_provider
from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.server import source_pythonpath
from headscale_tw.testing.realclient.testcase import RealClientTestCase

POLICY = """{
  "tagOwners": {"tag:server": ["alice@"]},
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:server:*"]}],
  "ssh": [
    {"action": "check", "src": ["alice@"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "1h"},
  ],
}
"""

COMMAND = "echo ssh-check-passed"
SSH_TIMEOUT = 90.0
"""Seconds one `tailscale ssh` may take, approval included."""

_WAITING = re.compile(r"SSH check (\w+) from node \d+ to node \d+ as '?root'? waits for approval")


class _SSHCheckCase(ScenarioMixin, RealClientTestCase):
    """Helpers: policy, nodes, `tailscale ssh`, and the checks the server logged."""

    def setUp(self):
        super().setUp()
        if shutil.which("ssh") is None:
            raise HarnessError("no `ssh` client: run tools/ensure-test-services.sh (60-openssh-client.sh)")

    def set_policy(self, server) -> None:
        """Apply :data:`POLICY` with `headscale policy set`."""
        path = os.path.join(self.namespace.runtime_dir, "policy.hujson")
        with open(path, "w") as f:
            f.write(POLICY)
        server.cli("policy", "set", "-f", path)

    def up_pair(self, server, keys: dict[str, str], nodes: list | None = None):
        """``tailscale up`` ``a`` and ``b`` (``b`` with --ssh) with ``keys`` (a node already up is kept)."""
        nodes = nodes or [self.start_node(name, ssl_cert_file=self.ca.ca_pem) for name in ("a", "b")]
        extra = {"a": ["--accept-dns=false"], "b": ["--accept-dns=false", "--ssh"]}
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.up(server.url, authkey=keys[n.name], hostname=n.name,
                                         extra_args=extra[n.name]), [n for n in nodes if n.name in keys]))
        a, b = nodes
        wait_for(lambda: b.ip() in {ip for p in (a.status_json().get("Peer") or {}).values()
                                    for ip in p.get("TailscaleIPs") or []}, 30, "a to see b")
        return a, b

    def ssh(self, a, b):
        """Run `tailscale ssh root@<b> COMMAND` on ``a`` (blocking); its CompletedProcess."""
        return a.cli("ssh", f"root@{b.ip()}", COMMAND, timeout=SSH_TIMEOUT, check=False)

    def waiting_checks(self, server) -> list[str]:
        """The auth ids of the checks the server logged as waiting, in order."""
        return _WAITING.findall(server.process.log_tail(2000))

    def next_check(self, server, seen: int) -> str:
        """Wait until the server logged check number ``seen + 1``; its auth id."""
        wait_for(lambda: len(self.waiting_checks(server)) > seen, 45, "the SSH check to be opened",
                 details=lambda: server.process.log_tail(60))
        return self.waiting_checks(server)[seen]


class SSHCheckTests(_SSHCheckCase):
    """`tailscale ssh` to a node under a check rule waits for the admin, then proceeds or is refused."""

    def start(self):
        """Server with :data:`POLICY`; ``a`` (alice) and ``b`` (tag:server, --ssh) up; return them."""
        server = self.start_tls_server(policy={"mode": "database"})
        server.cli("users", "create", "alice")
        self.set_policy(server)
        keys = {"a": self.auth_key(server, "alice"), "b": self.auth_key(server, "alice", tags=["tag:server"])}
        return (server, *self.up_pair(server, keys))

    def test_reject_approve_and_check_period(self):
        """Rejected: refused; approved: the command runs; again within checkPeriod: runs with no new check.

        One scenario in that order: an approval first would make the reject case pass within checkPeriod.
        """
        server, a, b = self.start()
        with ThreadPoolExecutor(1) as pool:
            refused = pool.submit(self.ssh, a, b)
            auth_id = self.next_check(server, 0)
            page = server.http_get(f"/auth/{auth_id}")  # where the banner sends the person
            self.assertEqual(page.status, 200, page)
            self.assertIn(f"headscale auth approve --auth-id {auth_id}".encode(), page.body)
            server.cli("auth", "reject", "--auth-id", auth_id)
            proc = refused.result()
        self.assertNotEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertNotIn("ssh-check-passed", proc.stdout)
        self.assertIn("rejected by an administrator", proc.stderr)

        with ThreadPoolExecutor(1) as pool:
            allowed = pool.submit(self.ssh, a, b)
            auth_id = self.next_check(server, 1)
            server.cli("auth", "approve", "--auth-id", auth_id)
            proc = allowed.result()
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr + b.log_tail(40))
        self.assertEqual(proc.stdout.strip(), "ssh-check-passed")
        # The banner named the approval page (Tailscale shows the action's message).
        self.assertIn(f"{server.url}/auth/{auth_id}", proc.stderr)

        proc = self.ssh(a, b)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual(proc.stdout.strip(), "ssh-check-passed")
        self.assertEqual(len(self.waiting_checks(server)), 2, "a new check was opened within checkPeriod")
        self.assertNotIn("/auth/", proc.stderr)

        # The admin CLI refuses to approve a check twice.
        again = server.cli("auth", "approve", "--auth-id", auth_id, check=False)
        self.assertNotEqual(again.returncode, 0)


SERVER_URL = "https://127.0.0.1:8443"
SECRET = "e2e-client-secret-0123456789"


class SSHCheckOIDCTests(_SSHCheckCase):
    """With OIDC, the person who owns the connecting machine approves by signing in at the provider."""

    timeout = 240

    def browse(self, url: str, login: str) -> dict[str, Any]:
        """Follow ``url`` through the provider as ``login`` with the urllib browser in the namespace."""
        env = self.namespace.env({"PYTHONPATH": os.pathsep.join(source_pythonpath())})
        argv = [sys.executable, "-m", "headscale_tw.testing.oidc_browser", "--login", login, url,
                "--cafile", self.ca.ca_pem, "--cafile", self.provider.ca_pem]
        proc = self.namespace.run(argv, env=env, timeout=60)
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            raise HarnessError(f"the browser failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        if "error" in result:
            raise HarnessError(f"the browser failed: {result['error']}")
        return result

    def start(self):
        """Provider and server; ``a`` registered by alice signing in, ``b`` tagged with --ssh; the three."""
        self.ca = self.make_ca()
        self.provider, bundle = start_oidc_provider(self.namespace, self.log_dir, self.ca, SECRET, SERVER_URL)
        settings = {"issuer": self.provider.issuer, "client_id": "headscale", "client_secret": SECRET,
                    "scope": ["openid", "profile", "email", "groups"], "pkce": {"enabled": True}}
        server = self.start_tls_server(policy={"mode": "database"}, extra={"oidc": settings},
                                       extra_env={"SSL_CERT_FILE": bundle})
        a = self.start_node("a", ssl_cert_file=self.ca.ca_pem)
        up_log = os.path.join(self.log_dir, "up-a.log")
        up = self.namespace.spawn("up-a", [a.binaries.tailscale, f"--socket={a.socket}", "up",
                                           f"--login-server={server.url}", "--hostname=a", "--accept-dns=false",
                                           "--timeout=90s"], env=a.env, log_path=up_log)

        def login_url() -> str | None:
            with open(up_log) as f:
                m = re.search(r"(https://127\.0\.0\.1:8443/register/\S+)", f.read())
            return m.group(1) if m else None

        self.assertEqual(self.browse(wait_for(login_url, 30, "the login URL"), "alice")["status"], 200)
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", details=a.describe)
        self.assertEqual(up.returncode, 0, up.describe())
        self.set_policy(server)
        b = self.start_node("b", ssl_cert_file=self.ca.ca_pem)
        self.up_pair(server, {"b": self.auth_key(server, "alice", tags=["tag:server"])}, nodes=[a, b])
        return server, a, b

    def test_owner_signs_in_to_approve(self):
        """bob's sign-in is refused; alice, who owns ``a``, signs in and the command runs."""
        server, a, b = self.start()
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(self.ssh, a, b)
            auth_id = self.next_check(server, 0)
            page = self.browse(f"{server.url}/auth/{auth_id}", "bob")
            self.assertEqual(page["status"], 403, page)
            self.assertIn("Only the owner of the machine", page["body"])
            page = self.browse(f"{server.url}/auth/{auth_id}", "alice")
            self.assertEqual(page["status"], 200, page)
            self.assertIn("SSH connection approved", page["body"])
            proc = running.result()
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr + b.log_tail(40))
        self.assertEqual(proc.stdout.strip(), "ssh-check-passed")
