# -*- test-case-name: tests.bench.test_work_per_change -*-
"""
In-process measurements: the control plane over a threadless in-memory SQLite.

:func:`build_plane` registers N nodes through the real :class:`Registrar` (no
sockets); :func:`fullmap_times` times ``Mapper.full_map`` for a node with N
peers, cold (every peer entry serialized) and warm (entries cached).
"""

from __future__ import annotations

import os
import time

from twisted.internet.defer import Deferred

from headscale_tw import secrets as keysecrets
from headscale_tw.config.model import Config, DNSConfig, PolicyConfig
from headscale_tw.control.plane import ControlPlane
from headscale_tw.storage.database import open_database
from headscale_tw.testing.db import NonThreadPool, ThreadlessReactor, resolve, sqlite_config

__all__ = ["build_plane", "fullmap_times"]


def _run(coroutine):
    return resolve(Deferred.fromCoroutine(coroutine))


def build_plane(n: int, policy_text: str | None = None):
    """A started ControlPlane with ``n`` registered nodes; returns (plane, db, node ids)."""
    clock = ThreadlessReactor()
    clock.advance(1_800_000_000)
    db = resolve(open_database(sqlite_config(), clock, threadpool=NonThreadPool()))
    config = Config(server_url="http://127.0.0.1:8080", dns=DNSConfig(base_domain="bench.internal"),
                    policy=PolicyConfig(mode="file", path="policy.json" if policy_text else ""))
    plane = ControlPlane(config, db, clock, read_file=lambda path: policy_text or "")
    _run(plane.start())
    user = _run(db.users.create("bench"))
    plane.state.users[user.id] = user
    text, prefix, secret = keysecrets.generate_key("auth")
    pepper = resolve(keysecrets.get_pepper(db.server_state))
    _run(db.preauthkeys.create(user.id, prefix, keysecrets.hash_secret(secret, pepper), now=plane.now(),
                               reusable=True, ephemeral=False, tags=(), expiration=None))
    for i in range(n):
        body = {
            "Version": 133, "NodeKey": f"nodekey:{os.urandom(32).hex()}", "OldNodeKey": "nodekey:" + "0" * 64,
            "Auth": {"AuthKey": text}, "Expiry": "0001-01-01T00:00:00Z", "Followup": "",
            "Hostinfo": {"Hostname": f"bench-{i}", "OS": "linux", "IPNVersion": "1.96.4"},
        }
        _run(plane.registrar.register(f"mkey:{os.urandom(32).hex()}", body))
    return plane, db, sorted(plane.state.nodes)


def fullmap_times(sizes: list[int], repeat: int = 20) -> list[dict]:
    """Median cold/warm ``full_map`` build time (ms) for a node with N peers, no policy."""
    rows = []
    for n in sizes:
        plane, db, ids = build_plane(n + 1)
        node = ids[0]
        cold, warm = [], []
        size = 0
        for _ in range(max(3, repeat // 4)):
            plane.mapper._cache.clear()  # cold: every peer entry serialized again
            t = time.perf_counter()
            size = len(plane.mapper.full_map(node))
            cold.append(time.perf_counter() - t)
        plane.mapper.full_map(node)
        for _ in range(repeat):
            t = time.perf_counter()
            plane.mapper.full_map(node)
            warm.append(time.perf_counter() - t)
        rows.append({"peers": n, "cold_ms": round(sorted(cold)[len(cold) // 2] * 1000, 2),
                     "warm_ms": round(sorted(warm)[len(warm) // 2] * 1000, 2), "bytes": size})
        plane.stop()
        resolve(db.close())
    return rows
