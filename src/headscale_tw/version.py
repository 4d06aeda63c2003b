# -*- test-case-name: tests.web.test_public_pages -*-
"""
Which Headscale this server stands in for, and ``GET /version``'s answer.

Tools written for Headscale pick their request shapes from the version the
server reports: Headplane reads ``version`` from ``GET /version`` and switches
to older shapes below 0.28. We report the Headscale release whose API
(``/api/v1``, the CLI, the policy format) this code matches, not our own
package version, which is carried separately (``headscale_tw``).
"""

from __future__ import annotations

import platform
import sys

from headscale_tw import __version__

__all__ = ["HEADSCALE_VERSION", "version_info"]

#: The Headscale release whose API and behaviour this server matches.
HEADSCALE_VERSION = "v0.29.2"


def version_info() -> dict:
    """
    The ``/version`` document in Headscale 0.29's shape.

    ``version`` is :data:`HEADSCALE_VERSION`; ``commit`` and ``buildTime`` are
    ``"unknown"`` as in a Headscale built without VCS stamps; ``go`` describes
    the runtime actually serving (Python here), keeping the keys Headscale's
    readers expect; ``dirty`` is always false.
    """
    return {
        "version": HEADSCALE_VERSION,
        "commit": "unknown",
        "buildTime": "unknown",
        "go": {
            "version": f"{platform.python_implementation().lower()}{platform.python_version()}"
                       f" headscale-tw/{__version__}",
            "os": sys.platform,
            "arch": _arch(),
        },
        "dirty": False,
    }


def _arch() -> str:
    """The machine architecture in Go's spelling (``amd64``, ``arm64``), else as Python names it."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386"}.get(machine, machine)
