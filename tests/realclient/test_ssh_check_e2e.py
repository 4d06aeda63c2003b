"""
Tailscale SSH check mode against official clients (tailscaled 1.96.4).

In a private loopback-only namespace (docs/testing-real-client.md), node ``a``
(user alice) runs ``tailscale ssh root@<b> <command>`` to node ``b`` (tagged
``tag:server``, ``tailscale up --ssh``; userspace networking serves Tailscale
SSH). The policy's ``ssh`` rule is ``"action": "check"``: ``b``'s tailscaled
fetches ``/machine/ssh/action/...`` over its Noise channel and holds the
connection until the check is settled, with ``headscale auth approve|reject``
as the approver. The ``tailscale ssh`` wrapper runs Debian's ``ssh`` client
(``tools/ensure-test-services.d/60-openssh-client.sh`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.scenario import ScenarioMixin
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


class SSHCheckTests(ScenarioMixin, RealClientTestCase):
    """`tailscale ssh` to a node under a check rule waits for the approver, then proceeds or is refused."""

    def setUp(self):
        super().setUp()
        if shutil.which("ssh") is None:
            raise HarnessError("no `ssh` client: run tools/ensure-test-services.sh (60-openssh-client.sh)")

    def start(self):
        """Server with :data:`POLICY`; ``a`` (alice) and ``b`` (tag:server, --ssh) up; return them."""
        server = self.start_tls_server(policy={"mode": "database"})
        server.cli("users", "create", "alice")
        path = os.path.join(self.namespace.runtime_dir, "policy.hujson")
        with open(path, "w") as f:
            f.write(POLICY)
        server.cli("policy", "set", "-f", path)
        keys = {"a": self.auth_key(server, "alice"), "b": self.auth_key(server, "alice", tags=["tag:server"])}
        nodes = [self.start_node(name, ssl_cert_file=self.ca.ca_pem) for name in ("a", "b")]
        extra = {"a": ["--accept-dns=false"], "b": ["--accept-dns=false", "--ssh"]}
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.up(server.url, authkey=keys[n.name], hostname=n.name,
                                         extra_args=extra[n.name]), nodes))
        a, b = nodes
        wait_for(lambda: b.ip() in {ip for p in (a.status_json().get("Peer") or {}).values()
                                    for ip in p.get("TailscaleIPs") or []}, 30, "a to see b")
        return server, a, b

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

    def test_reject_approve_and_check_period(self):
        """Rejected: refused; approved: the command runs; again within checkPeriod: runs with no new check."""
        server, a, b = self.start()
        with ThreadPoolExecutor(1) as pool:
            refused = pool.submit(self.ssh, a, b)
            auth_id = self.next_check(server, 0)
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
