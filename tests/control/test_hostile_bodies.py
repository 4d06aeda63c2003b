"""Hostile register and map bodies: every one gets a clean answer and breaks nothing."""

import copy
import json
import os
import random

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from headscale_tw.testing.netmap import NetmapApplier
from headscale_tw.web.control_api import MachineResource
from tests.control._harness import Harness, key
from tests.control.test_control_api import DATA, _render, _Request

_SAMPLES = (None, True, 0, -1, 2**70, 1.5, "", "x" * 5000, "nodekey:zz", [], [1, "a"], {}, {"a": {}})


def _mutate(rng: random.Random, body: dict) -> bytes:
    """One random corruption of a real request: wrong types, dropped keys, broken JSON."""
    body = copy.deepcopy(body)
    choice = rng.randrange(6)
    keys = list(body)
    if choice == 0 and keys:
        del body[rng.choice(keys)]
    elif choice == 1 and keys:
        body[rng.choice(keys)] = rng.choice(_SAMPLES)
    elif choice == 2 and isinstance(body.get("Hostinfo"), dict) and body["Hostinfo"]:
        body["Hostinfo"][rng.choice(list(body["Hostinfo"]))] = rng.choice(_SAMPLES)
    elif choice == 3:
        raw = json.dumps(body).encode()
        cut = rng.randrange(len(raw))
        return raw[:cut]
    elif choice == 4:
        raw = bytearray(json.dumps(body).encode())
        for _ in range(rng.randrange(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    else:
        return json.dumps(rng.choice(_SAMPLES)).encode()
    return json.dumps(body).encode()


class HostileBodiesTests(unittest.TestCase):
    """Seeded fuzzing of /machine/register and /machine/map with corrupted real requests."""

    def setUp(self):
        self.h = Harness(self)
        self.root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity)
        with open(os.path.join(DATA, "register-request.json")) as f:
            self.register_body = json.load(f)["body"]
        self.h.make_key("cap")
        self.register_body["Auth"]["AuthKey"] = self.h.keys["cap"]
        self.bodies = {}
        for name in ("map-request-stream.json", "map-request-lite-endpoints.json"):
            with open(os.path.join(DATA, name)) as f:
                self.bodies[name] = json.load(f)["body"]

    def _post(self, path, raw, mkey):
        return _render(self.root, _Request(path, raw, (mkey, 133)))

    def test_corrupted_requests_get_clean_answers(self):
        """600 corrupted bodies each get 200/4xx without an exception, and the good node still streams."""
        good = key("mkey")
        self.assertEqual(self._post(b"/machine/register", json.dumps(self.register_body).encode(), good).responseCode,
                         200)
        rng = random.Random(20261122)
        statuses = set()
        for i in range(600):
            path, body = rng.choice([
                (b"/machine/register", self.register_body),
                (b"/machine/map", self.bodies["map-request-stream.json"]),
                (b"/machine/map", self.bodies["map-request-lite-endpoints.json"]),
            ])
            # Half from the registered machine (its own node under attack), half from strangers.
            mkey = good if i % 2 else key("mkey")
            request = self._post(path, _mutate(rng, body), mkey)
            statuses.add(request.responseCode)
            self.assertIn(request.responseCode, (200, 400, 401, 403, 404), (i, request.body()[:200]))
            if not request.finished:
                request.processingFailed(Failure(ConnectionDone()))  # a stream opened: the client goes away
        self.assertIn(400, statuses)
        self.assertEqual(self.flushLoggedErrors(), [])
        stream = self._post(b"/machine/map", json.dumps(self.bodies["map-request-stream.json"]).encode(), good)
        self.assertEqual(stream.responseCode, 200)
        applier = NetmapApplier()
        applier.feed(stream.body())
        self.assertEqual(applier.node["Name"], "node1.tail.example.")
