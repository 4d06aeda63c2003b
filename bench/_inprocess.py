"""What the in-process benches (``gc_pauses.py``, ``memory_per_stream.py``) share: a control-plane
``Harness`` outside trial, N tagged nodes in groups of ``GROUP``, and opening a node's map stream."""

from __future__ import annotations

import unittest
from collections.abc import Callable

from headscale_tw.control.poll import parse_map_request
from tests.bench.test_work_per_change import GROUP, group_policy
from tests.control._harness import Harness

__all__ = ["GROUP", "group_policy", "harness", "register_grouped", "open_stream"]


class _StandaloneCase(unittest.TestCase):
    """The test case ``Harness`` asks for, outside a trial run: Deferreds here fire synchronously."""

    def runTest(self) -> None:
        pass

    def successResultOf(self, deferred):
        results: list = []
        deferred.addBoth(results.append)
        return results[0]


def harness(policy: str) -> Harness:
    """A ``Harness`` on in-memory SQLite with ``policy``."""
    return Harness(_StandaloneCase(), policy=policy)


def register_grouped(h: Harness, n: int, after_each: Callable[[int], None] = lambda index: None) -> list:
    """Register ``n`` nodes ``n0``… tagged ``tag:g<index // GROUP>``; call ``after_each(index)`` after each."""
    nodes = []
    for index in range(n):
        node, _ = h.register(
            f"n{index}", Hostinfo={"Hostname": f"n{index}", "OS": "linux", "RequestTags": [f"tag:g{index // GROUP}"]}
        )
        nodes.append(node)
        after_each(index)
    return nodes


def open_stream(h: Harness, node, write: Callable[[bytes], None], finish: Callable[[], None] = lambda: None):
    """Apply ``node``'s streaming map request and open its stream, writing frames to ``write``."""
    request = parse_map_request(h.map_request(node, Stream=True))
    authenticated = h.poll.authenticate(node.machine_key, request)
    h.run(h.poll.apply(authenticated, request))
    return h.notifier.open_stream(authenticated.id, write, finish, encoding=request.compress)
