# -*- test-case-name: tests.control.test_preauth_throttle -*-
"""The registrar throttles wrong pre-auth keys per source address."""

from __future__ import annotations

__all__ = ["PreauthThrottleTests"]

from datetime import timedelta

from twisted.trial import unittest

from headscale_tw.throttle import PREAUTH_KEYS
from tests.control._harness import Harness, key

ATTACKER = "198.51.100.66"


class PreauthThrottleTests(unittest.TestCase):
    """Only wrong keys count; a throttled source gets a RegisterResponse Error, others register."""

    def setUp(self):
        self.h = Harness(self)
        self.throttle = self.h.registrar.preauth_throttle

    def register(self, auth, source, machine_key=None):
        body = {
            "Version": 133,
            "NodeKey": key("nodekey"),
            "Auth": {"AuthKey": self.h.keys.get(auth, auth)},
            "Hostinfo": {"Hostname": "n", "OS": "linux"},
        }
        return self.h.run(self.h.registrar.register(machine_key or key("mkey"), body, source=source))

    def test_throttled_source_gets_error(self):
        """After the burst, the source's next request, even with a valid key, gets the throttle Error."""
        self.h.make_key("good", reusable=True)
        for _ in range(PREAUTH_KEYS.burst):
            self.assertEqual(self.register("hskey-auth-nope-" + "A" * 40, ATTACKER), {"Error": "invalid auth key"})
        response = self.register("good", ATTACKER)
        self.assertEqual(response, {"Error": f"too many failed pre-auth keys from {ATTACKER}; try again in 6 s"})
        self.assertTrue(self.register("good", "192.0.2.7")["MachineAuthorized"])

    def test_expired_and_used_keys_not_counted(self):
        """Expired and used keys are real keys, not guesses: they do not count."""
        self.h.make_key("old", expiration=self.h.now() - timedelta(seconds=1))
        self.h.make_key("once")
        self.assertTrue(self.register("once", ATTACKER)["MachineAuthorized"])
        for _ in range(3 * PREAUTH_KEYS.burst):
            self.assertEqual(self.register("old", ATTACKER), {"Error": "authkey expired"})
            self.assertEqual(self.register("once", ATTACKER), {"Error": "authkey already used"})
        self.assertEqual(self.throttle.failures, 0)

    def test_known_node_not_affected(self):
        """A registered node asking again is answered from its node, even from a throttled source."""
        self.h.make_key("good", reusable=True)
        machine = key("mkey")
        node_key = key("nodekey")
        body = {"Version": 133, "NodeKey": node_key, "Auth": {"AuthKey": self.h.keys["good"]}}
        self.assertTrue(self.h.run(self.h.registrar.register(machine, body, source=ATTACKER))["MachineAuthorized"])
        for _ in range(PREAUTH_KEYS.burst):
            self.register("wrong-key", ATTACKER)
        again = self.h.run(self.h.registrar.register(machine, body, source=ATTACKER))
        self.assertTrue(again["MachineAuthorized"])
