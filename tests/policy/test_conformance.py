# -*- test-case-name: tests.policy.test_conformance -*-
"""Run the vendored Tailscale conformance corpus against the policy engine."""

__all__ = ["ConformanceCorpusTests"]

import functools
import os

from twisted.trial import unittest

from headscale_tw.policy.conformance import run, summarise

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "policy-conformance.json.xz")

#: Minimum pass rate (percent) per category; raise these as the engine improves.
#: Known deviations are listed in docs/policy.md.
THRESHOLDS = {
    "acl": 100.0,
    "grant": 99.0,
    "nodeattrs": 100.0,
    "policytest": 95.0,
    "routes": 99.0,
    "ssh": 100.0,
    "sshtest": 100.0,
}


@functools.lru_cache(maxsize=1)
def _results() -> tuple:
    return tuple(run(CORPUS))


class ConformanceCorpusTests(unittest.TestCase):
    """The engine reproduces Tailscale's captured per-node results."""

    def setUp(self) -> None:
        self.results = list(_results())

    def test_corpus_complete(self) -> None:
        """All 637 scenarios of the seven categories are loaded."""
        self.assertEqual(len(self.results), 637)
        self.assertEqual(set(summarise(self.results)), set(THRESHOLDS))

    def test_thresholds(self) -> None:
        """Every category passes at or above its recorded threshold."""
        failing = {}
        for cat, (passed, total) in summarise(self.results).items():
            rate = 100.0 * passed / total
            if rate < THRESHOLDS[cat]:
                failing[cat] = (rate, [r.id for r in self.results if r.category == cat and not r.passed])
        self.assertEqual(failing, {})

    def test_no_crashes(self) -> None:
        """No scenario makes the engine raise an unexpected exception."""
        crashes = [r.id for r in self.results if r.reason.startswith("crash:")]
        self.assertEqual(crashes, [])
