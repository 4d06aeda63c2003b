# -*- test-case-name: tests.control.test_routes_work -*-
"""
Counting the work done on IP prefixes, for tests that prove work is linear.

:class:`ComparisonCounter` patches the comparison and hash methods of the
``ipaddress`` network and address classes for the length of one test, so a
test can run the same operation on N and 10N routes and compare the counts:
linear work grows about ten times, a list scan per route about a hundred.
"""

import ipaddress
import os

__all__ = ["ComparisonCounter", "assert_linear", "routes"]

#: Set ``HEADSCALE_TW_WORK_REPORT=1`` to print the counts (the figures in docs/security.md).
_REPORT = bool(os.environ.get("HEADSCALE_TW_WORK_REPORT"))

_CLASSES = (ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Address, ipaddress.IPv6Address)
_METHODS = ("__eq__", "__lt__", "__hash__")


class ComparisonCounter:
    """Counts ``==``, ``<`` and ``hash()`` of ``ipaddress`` networks and addresses (patched via ``testcase.patch``)."""

    def __init__(self, testcase) -> None:
        from headscale_tw.control.routes import clear_parse_caches

        self.count = 0
        # Parsed prefixes are cached: start each test cold, and leave it cold.
        clear_parse_caches()
        testcase.addCleanup(clear_parse_caches)
        for cls in _CLASSES:
            for name in _METHODS:
                testcase.patch(cls, name, self._counting(getattr(cls, name)))

    def _counting(self, original):
        def counted(this, *args):
            self.count += 1
            return original(this, *args)

        return counted

    def measure(self, operation) -> int:
        """Comparisons and hashes made while ``operation()`` runs."""
        before = self.count
        operation()
        return self.count - before


def assert_linear(testcase, small: int, large: int, what: str, factor: int = 10) -> None:
    """Fail unless ``large`` (work for ``factor``×N) is at most 1.6×``factor`` times ``small`` (work for N).

    A quadratic algorithm gives about ``factor``² times; an N·log N sort stays under 1.6×``factor``.
    """
    if _REPORT:
        print(f"work {what}: N -> {small}, {factor}N -> {large} ({large / max(small, 1):.1f}x)")
    testcase.assertGreater(small, 0, f"{what}: no work counted for N (the counter does not see it)")
    testcase.assertLessEqual(
        large, small * factor * 1.6, f"{what}: {small} operations for N but {large} for {factor}N (not linear)"
    )


def routes(count: int, base: str = "10.33") -> list[str]:
    """``count`` distinct /32 prefixes inside ``<base>.0.0/16`` (at most 65,536)."""
    return [f"{base}.{i // 256}.{i % 256}/32" for i in range(count)]
